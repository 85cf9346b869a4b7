"""A run's directory: its name, the checks before a run starts, and the logs process 0 writes.

    RUN/config.yaml          the resolved config (judges keep only the NAME of a key's variable)
    RUN/metrics.jsonl        one JSON object per step ("step" first), every metric
    RUN/samples.jsonl        a few rollouts per step: prompt, completion, reward and every term
    RUN/eval.jsonl           held-out evaluations ("step" = steps done when evaluated)
    RUN/tensorboard/         TensorBoard event files (tensorboardX)
    RUN/checkpoints/         see checkpoint/train_checkpoint.py

A directory that already holds a run is refused unless run.resume=true; resuming from the
checkpoint of step S cuts metrics.jsonl and samples.jsonl back to the steps before S (steps a
killed run logged after its last checkpoint are run again, not logged twice) and tells
TensorBoard to drop its events from step S on (`purge_step`). Every check runs before a model
is built; on a pod every process runs them, and only process 0 creates or writes files.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import yaml

from socialr1_jax.jobs.train_config import TrainConfig
from socialr1_jax.yaml_config import ConfigError, to_dict

WARM_START_DIR = "warm_start"  # RUN/warm_start: the warm-started checkpoint of a GRPO run

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
EVAL = "eval.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
RUN_MARKERS = (CONFIG, METRICS, CHECKPOINTS)

# Keys that may change between a run and its resumption without changing what is trained:
# bookkeeping, evaluation, and layout / memory knobs (the math is the same on any mesh).
RESUME_FREE = ("run.steps", "run.save_every", "run.keep", "run.async_save", "run.log_every",
               "run.progress", "run.resume", "run.allow_config_change", "run.samples_per_step",
               "run.out_dir", "mesh.", "eval.", "grpo.micro_batch_size", "grpo.head_remat",
               "grpo.logprob_chunk", "grpo.packed", "grpo.packed_row_len", "model.remat")


def expand_out_dir(pattern: str, now: Optional[float] = None) -> str:
    """`pattern` with '{time}' replaced by the start time (YYYYmmdd-HHMMSS); when that
    directory exists already (two runs in one second), '-2', '-3', ... is appended."""
    if "{time}" not in pattern:
        return pattern
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = pattern.replace("{time}", stamp)
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def holds_run(path: str) -> bool:
    """Whether `path` has any of a run's files (config.yaml, metrics.jsonl, a checkpoints/ with
    anything in it: a run that failed as it started leaves an empty one, and is no run)."""
    ckpts = os.path.join(path, CHECKPOINTS)
    return (any(os.path.exists(os.path.join(path, m)) for m in (CONFIG, METRICS))
            or (os.path.isdir(ckpts) and bool(os.listdir(ckpts))) or os.path.isfile(ckpts))


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, free=RESUME_FREE) -> list[str]:
    """'key: old -> new' for every key that differs and matters to what is trained (`free`:
    the keys, or 'section.' prefixes, that may change; the GRPO job's by default).

    run.steps matters only when it sets the length of a cosine schedule (optim.decay_steps=0).
    """
    a, b = flatten(old), flatten(new)
    free = list(free)
    cosine_by_length = (b.get("optim.schedule") == "cosine" and not b.get("optim.decay_steps"))
    if cosine_by_length and "run.steps" in free:
        free.remove("run.steps")
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in free):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def training_kind_change(old: dict, new: dict, out_dir: str) -> Optional[str]:
    """The error of a resume whose config (`new`, vs the stored `old`) switches between full
    fine-tuning and LoRA (model.lora.rank 0 vs > 0), else None. run.allow_config_change cannot
    cover it: the checkpoint holds the other kind's train state (whole weights and their
    moments, or adapters over a base), which the restore would fail to read."""
    rank = [flatten(d).get("model.lora.rank", 0) or 0 for d in (old, new)]
    if (rank[0] > 0) == (rank[1] > 0):
        return None
    ckpt = os.path.join(out_dir, CHECKPOINTS)
    merge = "" if rank[1] > 0 else " --merge-lora"  # a full run reads the adapters merged
    hint = (f"to continue from this one, export it (python -m conversion.orbax_to_hf --ckpt "
            f"{ckpt}{merge} --out DIR; a reward model's: its run.export_hf) and give that model "
            "as model.path")
    return (f"run.resume=true with model.lora.rank={rank[1]} but the run in {out_dir} was "
            f"trained with model.lora.rank={rank[0]}: a run cannot switch between full and LoRA "
            f"training, even with run.allow_config_change=true; start a new run ({hint})")


def check_run_dir(cfg: TrainConfig, out_dir: str, *, free=RESUME_FREE) -> Optional[dict]:
    """Refuse a run directory the config may not use; returns the stored config of a run to
    resume (None for a fresh run). Raises ConfigError, before anything is built. `cfg`: any
    config with run.resume / run.allow_config_change (the GRPO job's, the reward model's);
    `free`: the keys that may change on resume (see `config_changes`)."""
    if not out_dir:
        return None
    exists = os.path.exists(out_dir)
    if exists and not os.path.isdir(out_dir):
        raise ConfigError(f"run.out_dir={out_dir} is a file, not a directory")
    if not cfg.run.resume:
        if exists and holds_run(out_dir):
            raise ConfigError(f"run.out_dir={out_dir} already holds a run; continue it with "
                              "run.resume=true, or choose another run.out_dir")
        clash = [n for n in (SAMPLES, EVAL, TENSORBOARD)
                 if os.path.lexists(os.path.join(out_dir, n))]
        if exists and clash:
            raise ConfigError(f"run.out_dir={out_dir} is not a run directory but holds "
                              f"{', '.join(clash)}, which a run would replace; choose another "
                              "run.out_dir")
        check_writable(out_dir)
        return None
    if not exists:
        raise ConfigError(f"run.resume=true but run.out_dir={out_dir} does not exist")
    stored = os.path.join(out_dir, CONFIG)
    if not os.path.isfile(stored):
        raise ConfigError(f"run.resume=true but {out_dir} holds no run ({CONFIG} is missing)")
    try:
        with open(stored) as f:
            old = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{stored}: cannot be read ({e})") from None
    new = to_dict(cfg)
    switch = training_kind_change(old, new, out_dir)
    if switch:
        raise ConfigError(switch)
    changes = config_changes(old, new, free)
    if changes and not cfg.run.allow_config_change:
        raise ConfigError(f"run.resume=true with a config that differs from {stored} in "
                          f"{'; '.join(changes)}; resume with the same values, or set "
                          "run.allow_config_change=true to continue anyway")
    check_writable(out_dir)
    return {"config": old, "changes": changes}


def check_outside_inputs(out_dir: str, inputs: dict) -> None:
    """Refuse a run.out_dir that is, holds or lies in an input folder ({key: path}): writing
    the run there would rewrite the input's files (its tokenizer_config.json, config.json)."""
    if not out_dir:
        return
    out = os.path.realpath(out_dir)
    for key, inp in inputs.items():
        if not inp:
            continue
        real = os.path.realpath(inp)
        if out == real or out.startswith(real + os.sep) or real.startswith(out + os.sep):
            raise ConfigError(f"run.out_dir={out_dir} is, holds or lies in the input {key}={inp}; "
                              "choose a folder outside it")


def check_writable(out_dir: str) -> None:
    """Refuse, as a ConfigError naming run.out_dir, a folder that cannot be created or written:
    its nearest existing ancestor must be a writable directory."""
    parent = out_dir if os.path.isdir(out_dir) else os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"run.out_dir={out_dir}: cannot be created ({parent} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"run.out_dir={out_dir}: {parent} is not writable")
    probe = os.path.join(parent, f".run-probe-{os.getpid()}")
    try:  # what access() cannot tell (/proc, a read-only mount, root): make a folder there
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        raise ConfigError(f"run.out_dir={out_dir}: cannot be created in {parent} "
                          f"({e.strerror or e})") from None


def _cut_jsonl(path: str, first: int) -> int:
    """Keep the lines of a JSONL log whose "step" is < `first` (a torn last line, from a run
    killed mid-write, goes too); atomic. Returns the lines dropped. (Pass first + 1 for
    eval.jsonl, whose steps count steps done: an evaluation at `first` is of the state the
    run resumes from.)"""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                keep = line.endswith("\n") and int(row["step"]) < first
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return dropped


def _public_config(cfg: TrainConfig) -> dict:
    """The config as written to config.yaml. Secrets never are: configs hold only the names of
    the environment variables that carry API keys, and anything named like a key is refused."""
    data = to_dict(cfg)
    for key, value in flatten(data).items():
        leaf = key.rsplit(".", 1)[-1].lower()
        if leaf in ("api_key", "key", "token", "password", "secret") and value:
            raise ConfigError(f"{key}: a secret in the config would be written to {CONFIG}; "
                              "give the name of the environment variable that holds it instead")
    return data


class RunLogs:
    """metrics.jsonl, samples.jsonl, TensorBoard and config.yaml of one run (process 0 only;
    on other processes every method does nothing). samples=False: a run without rollouts (the
    reward model's) gets no samples.jsonl."""

    def __init__(self, cfg: TrainConfig, out_dir: str, first_step: int, *, primary: bool = True,
                 samples: bool = True):
        self.out_dir, self.active = out_dir, bool(out_dir) and primary
        self._metrics = self._samples = self._eval = self._tb = None
        if not self.active:
            return
        os.makedirs(out_dir, exist_ok=True)
        data = _public_config(cfg)
        tmp = os.path.join(out_dir, f"{CONFIG}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(tmp, os.path.join(out_dir, CONFIG))
        for name in (METRICS, SAMPLES):
            _cut_jsonl(os.path.join(out_dir, name), first_step)
        _cut_jsonl(os.path.join(out_dir, EVAL), first_step + 1)
        self._metrics = open(os.path.join(out_dir, METRICS), "a")
        if samples:
            self._samples = open(os.path.join(out_dir, SAMPLES), "a")
        self._eval = open(os.path.join(out_dir, EVAL), "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(out_dir, TENSORBOARD),
                                 purge_step=first_step if first_step else None)

    def _write(self, f, step: int, metrics: dict) -> None:
        f.write(json.dumps({"step": step, **metrics}) + "\n")
        f.flush()
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def step(self, step: int, metrics: dict) -> None:
        """Append one step's metrics (JSON line and TensorBoard scalars)."""
        if self.active:
            self._write(self._metrics, step, metrics)

    def evaluation(self, done: int, metrics: dict) -> None:
        """Append one held-out evaluation after `done` steps (eval.jsonl and TensorBoard)."""
        if self.active:
            self._write(self._eval, done, metrics)

    def samples(self, rows: list[dict]) -> None:
        """Append rollouts (each a dict with at least "step")."""
        if self._samples is None or not rows:
            return
        for r in rows:
            self._samples.write(json.dumps(r) + "\n")
        self._samples.flush()

    def close(self) -> None:
        """Flush and close every file."""
        for f in (self._metrics, self._samples, self._eval):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        self._metrics = self._samples = self._eval = self._tb = None
