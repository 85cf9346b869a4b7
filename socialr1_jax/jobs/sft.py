"""Supervised fine-tuning on (prompt, response) pairs: a format warm start before GRPO.

    python -m socialr1_jax.sft --config sft.yaml [key=value ...]
    python -m socialr1_jax.sft model.path=/ckpt/Qwen3-4B sft.data.path=pairs.jsonl \\
        sft.steps=200 sft.optim.lr=1e-5 run.out_dir=out

R1-style recipes start RL from a model that already writes the reasoning format (a "cold
start"); this is that step. The loss is the mean negative log-likelihood of the response tokens
and of the EOS that closes them; prompt tokens are context only. Each JSONL line holds a prompt
and a response (keys `sft.data.prompt_key` / `sft.data.response_key`); with `sft.data.chat=true`
(the default) the prompt becomes the user turn of the tokenizer's chat template, so the
response follows `<|im_start|>assistant\\n` exactly as a sampled completion would.

The update is the trainer's (`train_step.apply_update`: jitted, sharded over the mesh's batch
axes, state donated, micro-batches accumulated, AdamW, NaN/Inf skipping) with this loss; the
log-probs are `model/logprobs.py`'s chunked ones. The job runs on the run harness
(`jobs/harness.py`), as `train` and `train_rm` do: `run.out_dir` is a run directory
(config.yaml, metrics.jsonl, checkpoints/<step> with the whole TrainState, config.json and the
tokenizer files beside the steps) that `load_model`, `generate`, `evaluate`, `serve` and
`conversion.orbax_to_hf` read as a checkpoint (the folder itself or its checkpoints/), and that
`run.resume=true` continues exactly after SIGTERM / Ctrl-C (saved, with a resume command
printed) or a crash after a `run.save_every` checkpoint.

With `model.lora.rank > 0` the job trains LoRA adapters over the frozen model, as the GRPO job
does (docs/lora.md): the TrainState holds the adapters and their optimizer only,
RUN/checkpoints/lora.json records the base (model.path, or the preset and seed) and a resume
over another base is refused; `load_model(RUN)` runs the adapted model and
`conversion.orbax_to_hf --merge-lora / --adapter-only` export it.

Library: `encode_pairs(...)` -> examples, `train_sft(model, examples, cfg, optim, ...)` ->
SFTResult; `jobs/warm_start.py` runs it in-process before a GRPO job's first step
(`sft.data.path=tomi` generates ToMi traces).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.checkpoint import lora_io
from socialr1_jax.jobs import lora_setup, run_dir
from socialr1_jax.jobs.harness import Job, Run
from socialr1_jax.jobs.preemption import StopSignals
from socialr1_jax.jobs.sft_data import (Example, encode_pairs, make_batch, sft_batch_order,
                                        warm_start_pairs)
from socialr1_jax.jobs.train_config import MeshConfig, ModelSection, OptimConfig, SFTSection
from socialr1_jax.model import build
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.sft_step import make_sft_step
from socialr1_jax.yaml_config import ConfigError, load_yaml


@dataclasses.dataclass(frozen=True)
class SFTRunSection:
    """out_dir: the run directory (required): config.yaml, metrics.jsonl and checkpoints/, whose
    root loads as a model. resume: continue the run in out_dir from its newest good step
    (allow_config_change: even with another config). save_every: a checkpoint every N updates
    (0: at the end and on a stop signal only); keep: the newest K kept; max_consecutive_skips:
    stop after that many NaN/Inf updates in a row; progress: a tqdm bar on a TTY."""

    out_dir: str = ""
    resume: bool = False
    allow_config_change: bool = False
    save_every: int = 0
    keep: int = 2
    max_consecutive_skips: int = 3
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`python -m socialr1_jax.sft`'s config (YAML + key=value overrides): the same `sft`
    section as the GRPO job's warm start (steps, batch, lengths, `sft.optim`, `sft.data`)."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: SFTRunSection = dataclasses.field(default_factory=SFTRunSection)

    def __post_init__(self):
        if self.sft.lora:
            raise ConfigError("sft.lora=true is the GRPO job's warm-start switch; this job "
                              "trains LoRA adapters with model.lora.rank > 0 alone")


@dataclasses.dataclass
class SFTResult:
    """The warm-started model and the metrics of each update."""

    model: object
    history: list[dict]

    @property
    def first_loss(self) -> float:
        return self.history[0]["loss"] if self.history else math.nan

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def sft_job(step_fn, examples: Sequence[Example], section: SFTSection, *, pad_id: int,
            mesh=None, meta=None, on_step=None) -> Job:
    """The harness Job of `section.steps` SFT updates over shuffled batches of `examples`
    (batch k is `sft_batch_order(...)[k]`, so a resumed run continues the same order).
    on_step(steps_done, params): after each update (snapshots, hooks)."""
    from socialr1_jax.parallel.sharding import batch_sharding

    order = sft_batch_order(len(examples), section.steps, section.batch_size, section.seed)
    t0 = time.perf_counter()

    def step(k: int, state: ts.TrainState):
        batch = make_batch([examples[i] for i in order[k]], pad_id)
        if mesh is not None:
            batch = jax.device_put(batch, batch_sharding(mesh, 2))
        state, m = step_fn(state, batch)
        m = {name: float(v) for name, v in jax.device_get(m).items()}
        return state, dict(m, elapsed_s=time.perf_counter() - t0)

    after = (lambda k, state, m: on_step(k + 1, state.params)) if on_step else None
    return Job(section.steps, step, meta or (lambda done, state: {"steps_done": done}),
               eval_at_start=False, eval_at_end=False, after_step=after)


def _console(section: SFTSection, progress: bool) -> dict:
    return {"log_every": section.log_every, "progress": progress, "desc": "SFT",
            "line": sft_line, "postfix": lambda m: {"loss": f"{m['loss']:.3f}"}}


def _step_fn(mcfg, optim: OptimConfig, section: SFTSection, mesh, base=None):
    """The SFT update `step(state, batch)`; with adapters, over the frozen `base` (bound)."""
    fn = make_sft_step(mcfg, optim, mesh, micro_batch_size=section.micro_batch_size,
                       total_updates=section.steps, chunk=section.logprob_chunk,
                       dropout_seed=section.seed)
    return fn if base is None else lora_train.LoraStep(fn, base)


def train_sft(model, examples: Sequence[Example], section: SFTSection, optim: OptimConfig, *,
              pad_id: int, mesh=None, log: Callable[[str], None] = print,
              progress: bool = False, on_step: Optional[Callable[[int, object], None]] = None,
              stop=None, lora=None, seed: int = 0) -> SFTResult:
    """`section.steps` updates of `sft_loss` over shuffled batches of `examples`, starting from
    `model` (left unchanged), through the run harness without a run directory. Returns the new
    model (same graph, new params) and the metrics. stop: a StopSignals polled after each
    update; when it fired, the updates done so far are returned. lora: a LoraSpec: train fresh
    adapters (drawn from `seed`) over the frozen `model` instead, and return `model` with them
    merged in (W + s B A; `lora_io.merged_model`)."""
    if not examples:
        raise ValueError("no examples to train on")
    base = None
    if lora is not None:
        graphdef, base, params = build.split_lora(build.with_lora(model, lora, mesh=mesh,
                                                                  seed=seed))
        mcfg = model.cfg.replace(lora=lora)
    else:
        (graphdef, params), mcfg = nnx.split(model), model.cfg
    state = ts.init_train_state(params, optim, mesh, total_updates=section.steps)
    run = Run(None, "", None, command="sft", stop=stop or StopSignals(),
              log=None if log is print else log, console=_console(section, progress))
    try:
        run.open(section.steps)
        out = run.loop(sft_job(_step_fn(mcfg, optim, section, mesh, base), examples, section,
                               pad_id=pad_id, mesh=mesh, on_step=on_step), state)
    finally:
        run.close()
    if base is None:
        return SFTResult(model=nnx.merge(graphdef, out.state.params), history=out.history)
    adapted = build.merge_lora(graphdef, base, out.state.params)
    return SFTResult(model=lora_io.merged_model(adapted), history=out.history)


def sft_line(step: int, steps: int, m: dict) -> str:
    """One console line of an SFT step."""
    return (f"sft step {step:4d} loss {m['loss']:.4f} |g| {m['grad_norm']:.3f} "
            f"lr {m['lr']:.2e} tokens {int(m['tokens'])} t {m['elapsed_s']:.1f}s")


def check_batch_fits_mesh(cfg: SFTSection, mesh) -> None:
    """Refuse a batch (or micro-batch) that does not split over the mesh's batch shards."""
    from socialr1_jax.parallel.sharding import batch_shards

    shards = batch_shards(mesh)
    if cfg.batch_size % shards or (cfg.micro_batch_size or cfg.batch_size) % shards:
        raise cli.UsageError(f"sft.batch_size={cfg.batch_size} (micro_batch_size="
                             f"{cfg.micro_batch_size}) must be a multiple of the mesh's {shards} "
                             "batch shards (data x fsdp)")


# -- the command -------------------------------------------------------------------------------

def load_sft_config(path: Optional[str], overrides: Sequence[str]) -> SFTConfig:
    """SFTConfig from YAML + overrides; a bad key or value is a UsageError naming it."""
    try:
        cfg = load_yaml(SFTConfig, path, list(overrides))
    except (ValueError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None
    if cfg.sft.steps < 1:
        raise cli.UsageError(f"sft.steps={cfg.sft.steps}: nothing to train")
    if not cfg.sft.data.path:
        raise cli.UsageError("sft.data.path is required: a JSONL file of (prompt, response) "
                             "pairs, or 'tomi'")
    if not cfg.run.out_dir:
        raise cli.UsageError("run.out_dir is required: where the warm-started checkpoint goes")
    return cfg


# Everything but these may change when a run resumes (see run_dir.config_changes).
RESUME_FREE = ("run.", "mesh.", "sft.log_every", "sft.micro_batch_size", "model.remat")


def check_out_dir(cfg: SFTConfig) -> Optional[dict]:
    """Refuse a run.out_dir that is, holds or lies in an input folder, or that holds anything
    without run.resume=true (a rerun would put its steps beside the old ones, and loaders pick
    the newest); with it, the stored config of the run to continue (`run_dir.check_run_dir`)."""
    out = cfg.run.out_dir
    run_dir.check_outside_inputs(out, {
        "model.path": cfg.model.path,
        "model.tokenizer": "" if cfg.model.tokenizer == "demo" else cfg.model.tokenizer})
    if os.path.isdir(out) and os.listdir(out) and not cfg.run.resume:
        raise cli.UsageError(f"run.out_dir={out} is not empty; continue the run there with "
                             "run.resume=true, or choose a new folder")
    return run_dir.check_run_dir(cfg, out, free=RESUME_FREE)


def _examples(cfg: SFTConfig, tokenizer) -> tuple[list[Example], int]:
    """The encoded pairs of cfg.sft.data and the pad id (UsageErrors name the key)."""
    from socialr1_jax.rollout import tokenizer as tk

    pairs, what = warm_start_pairs(cfg.sft.data)
    examples, dropped = encode_pairs(tokenizer, pairs, chat=cfg.sft.data.chat,
                                     max_prompt_len=cfg.sft.max_prompt_len,
                                     max_response_len=cfg.sft.max_response_len,
                                     on_too_long=cfg.sft.on_too_long)
    print(f"{len(examples)} pairs from {what}" + (f" ({dropped} too long, dropped)"
                                                  if dropped else ""))
    if not examples:
        raise cli.UsageError(f"sft.data.path={cfg.sft.data.path}: every pair is longer than "
                             "sft.max_prompt_len / sft.max_response_len")
    return examples, tk.pad_id(tokenizer, tk.stop_tokens(tokenizer))


def _sft_run(cfg: SFTConfig, run: Run, model, tokenizer, examples, pad: int, mesh):
    """The command's job on the harness: start or resume, side files, the loop."""
    from socialr1_jax.rollout import tokenizer as tk

    sec, optim = cfg.sft, cfg.sft.optim
    mcfg, base = model.cfg, None
    if cfg.model.lora.rank:  # the state holds the adapters; the base stays frozen
        _, base, adapters, parts = lora_setup.adapt(cfg, model, mesh, cfg.run.out_dir,
                                                     run.resume is not None,
                                                     base_dir=cfg.model.path)
        mcfg = parts.policy_cfg
        start = lora_setup.start_fns(optim, mcfg, mesh, adapters, sec.steps)
    else:
        params = nnx.state(model)
        start = (lambda: ts.abstract_state_of(params, optim, mesh, total_updates=sec.steps),
                 lambda: ts.init_train_state(params, optim, mesh, total_updates=sec.steps))
    step_fn = _step_fn(mcfg, optim, sec, mesh, base)
    state, _ = run.start(*start)
    root = run.ckpt.root
    if jax.process_index() == 0 and not os.path.exists(os.path.join(root, "tokenizer.json")):
        tk.save_tokenizer_files(root, tokenizer)
    run.ckpt.write_side_files(mcfg, source=cfg.model.path or None)
    run.open(sec.steps)
    meta = lambda done, st: {"steps_done": done, "updates": int(st.step)}  # noqa: E731
    return run.loop(sft_job(step_fn, examples, sec, pad_id=pad, mesh=mesh, meta=meta), state)


def main(argv=None) -> int:
    """Read the config and the pairs, train, write the run; see the module docstring.
    SIGTERM / Ctrl-C save the updates done so far, print the resume command and exit with
    143 / 130."""
    import argparse

    from socialr1_jax.jobs.setup import (build_mesh, check_mesh_fits_model, load_policy,
                                         run_tokenizer)
    from socialr1_jax.rollout import tokenizer as tk

    p = cli.ArgumentParser(prog="python -m socialr1_jax.sft", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections model, sft, mesh, run)")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. sft.steps=200 sft.optim.lr=1e-5 sft.data.path=x.jsonl")
    a = p.parse_args(argv)
    cfg = load_sft_config(a.config, a.overrides)
    with StopSignals(notify=print) as stop:
        resume = check_out_dir(cfg)
        tokenizer = run_tokenizer(cfg.model)
        examples, pad = _examples(cfg, tokenizer)  # bad data fails before any model is built
        mesh = build_mesh(cfg)
        check_mesh_fits_model(cfg)
        check_batch_fits_mesh(cfg.sft, mesh)
        model = load_policy(cfg, mesh)
        tk.check_vocab(tokenizer, model.cfg.vocab_size)
        r = cfg.run
        run = Run(cfg, r.out_dir, resume, command="sft", stop=stop, samples=False, keep=r.keep,
                  max_skips=r.max_consecutive_skips, skips_key="run.max_consecutive_skips",
                  save_every=r.save_every, console=_console(cfg.sft, r.progress))
        try:
            out = _sft_run(cfg, run, model, tokenizer, examples, pad, mesh)
        finally:
            run.close()
    if out.history:
        print(f"loss {out.history[0]['loss']:.4f} -> {out.history[-1]['loss']:.4f} over steps "
              f"{run.first}..{out.done}; {out.status}")
    return out.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
