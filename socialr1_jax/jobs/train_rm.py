"""Pairwise (Bradley-Terry) reward-model training:
`python -m socialr1_jax.train_rm [--config FILE.yaml] [key=value ...]`.

The way the Social-R1 content reward model was trained on SocialPairs-20K: for each pair of
reasonings about one story and question, the model's scores r_c (chosen) and r_r (rejected)
should order them, with the Bradley-Terry loss

    loss = mean over pairs of -log sigmoid(r_c - r_r)  ( = softplus(r_r - r_c) )

The model is `model/reward_model.py`'s Qwen3 backbone + scalar head, started from a reward model
(`model.path` of a Qwen3ForSequenceClassification or our checkpoint) or from a causal LM (its
backbone, and a new head drawn as transformers draws it). Texts follow `data.prompt_template`
(`social/rm_prompt.py`, the same layout the `model` judge scores).

One update: the chosen and the rejected rows of `run.batch_size` pairs, gradients through the
whole model, and the GRPO job's update (`rl/train_step.py`: `apply_update`'s micro-batch
accumulation inside the program, AdamW with clipping, a non-finite loss or gradient skipping the
update; the TrainState from `init_train_state`, parameters, master copy and moments split by
the policy's rules). Held-out pairs are scored at the start, every `run.eval_every` updates and
at the end: loss and pair accuracy (the share with r_c > r_r).

`run.out_dir` is laid out as the GRPO job's run directory (`jobs/run_dir.py`): config.yaml,
metrics.jsonl (one row per step), eval.jsonl, tensorboard/, and checkpoints/<step>, the whole
TrainState through `checkpoint/train_checkpoint.py` (asynchronous, the last `run.keep` kept;
the root also loads as a reward model). `run.resume=true` continues from the latest step
exactly (the data order is a function of the step); SIGTERM (a pod's preemption) or Ctrl-C
finishes the update in hand, evaluates, saves it and exits with 143 / 130. With
`run.export_hf`, an HF Qwen3ForSequenceClassification directory that transformers loads with
the same scores. See `jobs/rm_data.py` for the config keys and the data format.

With `model.lora.rank > 0` (docs/lora.md) the backbone gains LoRA adapters and only they and the
whole score head are trained (PEFT's `modules_to_save=["score"]`): the TrainState holds those
and their optimizer; the rest of the backbone is frozen, bound to the step and never donated.
RUN/checkpoints/lora.json records model.path and its hash (a resume over another base is one
`error:` line); the root loads as a reward model (its base + the step's adapters and head), so
the `model` judge reads it as it reads a full run, and `run.export_hf` writes it merged.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
import yaml
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax import cli
from socialr1_jax.model.reward_model import RewardModel, make_score_fn
from socialr1_jax.parallel.sharding import batch_sharding, batch_shards, make_mesh
from socialr1_jax.jobs import run_dir
from socialr1_jax.rl import train_step as ts
from socialr1_jax.jobs.harness import Job, Run
from socialr1_jax.jobs.preemption import StopSignals
from socialr1_jax.rl.rm_step import PairBatch, make_rm_step
from socialr1_jax.jobs.rm_data import (PairDataError, RMTrainConfig, Tokenized, pair_batch_order,
                                     load_data, load_rm_config, pair_arrays, tokenize_pairs)
from socialr1_jax.social import rm_prompt


# ----------------------------------------------------------------------------- evaluation
def evaluate(score: Callable, data: Tokenized, *, pad_id: int, batch_size: int,
             max_length: int) -> dict:
    """Held-out loss and pair accuracy (ties count as wrong) of `score(ids, mask)`."""
    rows = data.chosen + data.rejected
    scores = rm_prompt.score_rows(score, rows, pad_id=pad_id, batch_size=batch_size,
                                  max_length=max_length)
    margin = scores[:len(data)] - scores[len(data):]
    return {"eval_loss": float(np.mean(np.logaddexp(0.0, -margin))),
            "eval_accuracy": float(np.mean(margin > 0)), "eval_margin": float(np.mean(margin))}


# ----------------------------------------------------------------------------- checkpoints
# Everything but these may change when a run resumes (see run_dir.config_changes).
RESUME_FREE = ("run.steps", "run.save_every", "run.keep", "run.async_save", "run.log_every",
               "run.progress", "run.resume", "run.allow_config_change", "run.out_dir",
               "run.eval_every", "run.export_hf", "run.micro_batch_size", "mesh.", "model.remat",
               "run.max_consecutive_skips")


def _meta(cfg: RMTrainConfig, done: int, state: ts.TrainState, train_pairs: int) -> dict:
    """A checkpoint's meta: steps done, where the data continues (batch k's pairs are
    `pair_batch_order(train_pairs, batch_size, k, seed)`, so the next step is the whole position),
    and the counters. Nothing else is random during training."""
    return {"steps_done": done, "updates": int(state.step), "skipped": int(state.skipped),
            "seed": cfg.run.seed, "data": {"next_step": done, "batch_size": cfg.run.batch_size,
                                           "train_pairs": train_pairs}}


# ----------------------------------------------------------------------------- the job
@dataclasses.dataclass
class RMTrainResult:
    """What a run leaves: per-update metrics, held-out evaluations, the final state and model."""

    history: list[dict]
    evals: list[dict]
    state: ts.TrainState
    model: RewardModel
    status: str
    exit_code: int = 0  # 143 / 130 when SIGTERM / Ctrl-C stopped the run (after saving)


@dataclasses.dataclass
class Prepared:
    """Everything checked and read before a model loads."""

    train: Tokenized
    eval: Tokenized
    tokenizer: object
    tokenizer_dir: str
    mesh: Mesh
    checkpoint_root: str
    pad_id: int
    resume: Optional[dict] = None  # run_dir.check_run_dir's: the stored config, the changes


def _checkpoint_root(path: str) -> str:
    from socialr1_jax.checkpoint import orbax_io
    return orbax_io.resolve(path)[0] if orbax_io.is_orbax_checkpoint(path) else path


def check_export_hf(out: str) -> None:
    """run.export_hf by the one output rule (cli.py), before training: a new folder whose parent
    exists and is writable, outside every model or checkpoint folder (model.path included)."""
    parent = cli.parent_folder("run.export_hf", out)
    if os.path.lexists(out):
        raise cli.UsageError(f"run.export_hf: {out} already exists")
    home = cli.model_folder(parent)
    if home is not None:
        raise cli.UsageError(f"run.export_hf: {out} is inside the model/checkpoint folder "
                             f"{home}; export elsewhere")


def prepare(cfg: RMTrainConfig) -> Prepared:
    """Check the config against the files and read the data (no model is loaded): raises
    cli.UsageError naming the key, file or value."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.checkpoint.errors import CheckpointError
    from socialr1_jax.checkpoint.rm_io import resolve_pad_id
    from socialr1_jax.jobs.setup import check_mesh_fits_model
    from socialr1_jax.rollout.tokenizer import encode, load_tokenizer

    path = cfg.model.path
    if not path:
        raise cli.UsageError("model.path is empty; give a reward model or a causal LM (an HF "
                             "directory or our Orbax checkpoint) to start from")
    if not os.path.isdir(path) or not (os.path.isfile(os.path.join(path, "config.json"))
                                       or orbax_io.is_orbax_checkpoint(path)):
        raise cli.UsageError(f"model.path: {path} is not a checkpoint directory (no config.json "
                             "or finalized Orbax step)")
    try:
        m = cfg.mesh
        mesh = make_mesh(m.data, m.fsdp or None, m.tensor)
    except ValueError as e:
        raise cli.UsageError(f"mesh: {e}") from None
    check_mesh_fits_model(cfg)  # before run.out_dir is made
    shards = batch_shards(mesh)
    for key in ("batch_size", "micro_batch_size"):
        if getattr(cfg.run, key) % shards:
            raise cli.UsageError(f"run.{key}={getattr(cfg.run, key)} is not a multiple of the "
                                 f"mesh's {shards} batch shards (data x fsdp)")
    root = _checkpoint_root(path)
    tok_dir = cfg.model.tokenizer or root
    try:
        tokenizer = load_tokenizer(tok_dir)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise cli.UsageError(f"{'model.tokenizer' if cfg.model.tokenizer else 'model.path'}: "
                             f"{e}") from None
    if cfg.run.resume and not cfg.run.out_dir:
        raise cli.UsageError("run.resume=true needs run.out_dir, the run to continue")
    run_dir.check_outside_inputs(cfg.run.out_dir, {"model.path": path,
                                                   "model.tokenizer": cfg.model.tokenizer})
    resume = run_dir.check_run_dir(cfg, cfg.run.out_dir, free=RESUME_FREE)
    if cfg.run.export_hf:
        check_export_hf(cfg.run.export_hf)
    try:
        train_pairs, eval_pairs = load_data(cfg.data, cfg.run.seed)
    except PairDataError as e:
        raise cli.UsageError(str(e)) from None
    if len(train_pairs) < cfg.run.batch_size:
        raise cli.UsageError(f"run.batch_size={cfg.run.batch_size} is larger than the "
                             f"{len(train_pairs)} training pairs")
    try:
        pad = resolve_pad_id(root, cfg.model.pad_token_id, tokenizer)
    except CheckpointError as e:
        raise cli.UsageError(str(e)) from None
    enc = lambda text: encode(tokenizer, text)  # noqa: E731
    return Prepared(tokenize_pairs(enc, train_pairs, cfg.data.max_length),
                    tokenize_pairs(enc, eval_pairs, cfg.data.max_length), tokenizer, tok_dir,
                    mesh, root, pad, resume)


def train_rm(cfg: RMTrainConfig, *, prepared: Optional[Prepared] = None,
             log: Callable[[str], None] = print) -> RMTrainResult:
    """Run the pairwise training the config describes (see the module docstring). SIGTERM /
    Ctrl-C are caught from the start: the steps done are evaluated and saved."""
    primary = jax.process_index() == 0
    with StopSignals(notify=log if primary else None) as stop:
        prep = prepared or prepare(cfg)
        run = cfg.run
        harness = Run(cfg, run.out_dir, prep.resume, command="train_rm", stop=stop,
                      primary=primary, log=log, samples=False, keep=run.keep,
                      async_save=run.async_save, max_skips=run.max_consecutive_skips,
                      skips_key="run.max_consecutive_skips", save_every=run.save_every,
                      console={"log_every": run.log_every, "progress": run.progress,
                               "desc": "train_rm", "line": _rm_line, "postfix": _rm_postfix})
        try:
            return _train_rm(cfg, prep, harness, log)
        finally:
            harness.close()


def _initial_model(cfg: RMTrainConfig, prep: Prepared, resuming: bool, log):
    """The reward model to start from: shapes from the run's own config.json when resuming
    (the restore replaces every weight), else the starting checkpoint's (its head or a new
    one)."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.checkpoint.rm_io import init_reward_model
    from socialr1_jax.model.reward_model import abstract_reward_model, with_settings

    if resuming:
        root = os.path.join(cfg.run.out_dir, run_dir.CHECKPOINTS)
        model = abstract_reward_model(
            orbax_io.read_config(root, dtype=cfg.model.param_dtype or None), prep.pad_id)
        source = f"the checkpoints of {cfg.run.out_dir}"
    else:
        model, had_head = init_reward_model(cfg.model.path, pad_token_id=prep.pad_id,
                                            mesh=prep.mesh, dtype=cfg.model.param_dtype or None,
                                            seed=cfg.model.seed)
        source = f"{cfg.model.path} ({'its head' if had_head else 'a new head'})"
    log(f"reward model from {source}, pad id {prep.pad_id}; {len(prep.train)} training pairs, "
        f"{len(prep.eval)} held out, {prep.train.truncated + prep.eval.truncated} texts cut to "
        "data.max_length")
    return with_settings(model, remat=cfg.model.remat,
                         **({"dtype": cfg.model.dtype} if cfg.model.dtype else {}))


def _adapted(cfg: RMTrainConfig, model: RewardModel, mesh, resuming: bool) -> RewardModel:
    """`model` with fresh adapters (seed model.seed) on its backbone. model.path, the base, is
    recorded in RUN/checkpoints/lora.json with the head saved whole, and checked on a resumed
    run (ConfigError, one `error:` line, for another base)."""
    from socialr1_jax.jobs import lora_setup
    from socialr1_jax.model.reward_model import with_lora

    adapted = with_lora(model, cfg.model.lora.spec(), mesh=mesh, seed=cfg.model.seed)
    if cfg.run.out_dir:
        lora_setup.record_base(cfg, None, model.cfg, cfg.run.out_dir, resuming, cfg.model.path,
                               modules_to_save=("score",))
    return adapted


def _trained_part(model: RewardModel):
    """(graphdef, the trained state, whole(trained) -> the model's parameter state): every
    parameter of a full reward model, or a LoRA one's adapters + head over its frozen base."""
    from socialr1_jax.model.reward_model import split_lora

    if model.cfg.lora is None:
        graphdef, params = nnx.split(model)
        return graphdef, params, lambda p: p
    graphdef, base, trained = split_lora(model)
    return graphdef, trained, lambda p: nnx.merge_state(base, p)


def _train_rm(cfg: RMTrainConfig, prep: Prepared, harness: Run, log) -> RMTrainResult:
    from socialr1_jax.checkpoint.rm_io import hf_config, save_hf
    from socialr1_jax.model.reward_model import with_settings

    run, mesh, pad = cfg.run, prep.mesh, prep.pad_id
    resuming = harness.ckpt is not None and run.resume and harness.ckpt.latest() is not None
    lora_on = bool(cfg.model.lora.rank)
    # A LoRA run restores its adapters and head only: the frozen base is model.path's weights.
    model = _initial_model(cfg, prep, resuming and not lora_on, log)
    if lora_on:
        model = _adapted(cfg, model, mesh, prep.resume is not None)
    total = run.steps or run.epochs * (len(prep.train) // run.batch_size)
    step_fn = make_rm_step(model, cfg.optim, mesh, micro_batch_size=run.micro_batch_size,
                           total_updates=total, dropout_seed=run.seed)
    scorer = make_score_fn(with_settings(model, remat="none"), mesh)
    graphdef, params, whole = _trained_part(model)
    del model
    state, _ = harness.start(
        lambda: ts.abstract_state_of(params, cfg.optim, mesh, total_updates=total),
        lambda: ts.init_train_state(params, cfg.optim, mesh, total_updates=total))
    if harness.ckpt is not None:
        # The root loads as a reward model (judge `checkpoint`, rm_io.load_reward_model): the
        # sequence-classification config.json, then the tokenizer files.
        current = nnx.merge(graphdef, whole(state.params))
        harness.ckpt.write_side_files(current.cfg, source=prep.tokenizer_dir,
                                      hf_config=hf_config(current))
    harness.open(total)
    two = batch_sharding(mesh, 2)

    def step(k: int, state):
        t0 = time.perf_counter()
        arrays = pair_arrays(prep.train, pair_batch_order(len(prep.train), run.batch_size, k,
                                                          run.seed), pad, cfg.data.max_length)
        state, m = step_fn(state, PairBatch(*[jax.device_put(a, two) for a in arrays]))
        m = {key: float(v) for key, v in jax.device_get(m).items()}
        m.update(tokens=int(arrays[0].shape[1]), step_s=time.perf_counter() - t0)
        return state, m

    def held_out(done: int, state) -> Optional[dict]:
        if not len(prep.eval):
            return None
        # Rows per call: one training forward's (micro-batch), so evaluation fits where
        # training does.
        e = evaluate(lambda ids, mask: scorer(whole(state.params), ids, mask), prep.eval,
                     pad_id=pad, batch_size=run.micro_batch_size or run.batch_size,
                     max_length=cfg.data.max_length)
        harness.say(f"eval @ {done}: loss {e['eval_loss']:.4f} accuracy "
                    f"{e['eval_accuracy']:.3f} margin {e['eval_margin']:+.3f}")
        return e

    job = Job(total, step, lambda done, st: _meta(cfg, done, st, len(prep.train)),
              evaluate=held_out, due=lambda done: bool(run.eval_every)
              and done % run.eval_every == 0)
    out = harness.loop(job, state)
    final = nnx.merge(graphdef, whole(out.state.params))
    if run.export_hf:
        log(f"HF export: {save_hf(final, run.export_hf, side_files_from=prep.tokenizer_dir)}")
    evals = [dict(e, step=done) for done, e in out.evaluations]
    return RMTrainResult(out.history, evals, out.state, final, out.status, out.exit_code)


def _rm_line(k: int, steps: int, m: dict) -> str:
    return (f"step {k + 1:5d} loss {m['loss']:.4f} accuracy {m['accuracy']:.3f} "
            f"margin {m['margin']:+.3f} |g| {m['grad_norm']:.3f} lr {m['lr']:.2e} "
            f"t {m['step_s']:.2f}s")


def _rm_postfix(m: dict) -> dict:
    return {"loss": f"{m['loss']:.4f}", "acc": f"{m['accuracy']:.2f}"}


def parse_args(argv=None) -> RMTrainConfig:
    """--config FILE.yaml plus key=value overrides."""
    p = cli.ArgumentParser(prog="python -m socialr1_jax.train_rm", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see jobs/rm_data.py for the keys)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. data.train=pairs.jsonl")
    a = p.parse_args(argv)
    try:
        return load_rm_config(a.config, a.overrides)
    except (ValueError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None
    except yaml.YAMLError as e:  # an override or file that is not YAML (e.g. a bare {...})
        where = a.config
        for item in a.overrides:
            try:
                yaml.safe_load(item.partition("=")[2])
            except yaml.YAMLError:
                where = f"override {item!r}"
                break
        raise cli.UsageError(f"{where}: not valid YAML ({' '.join(str(e).split())}); quote "
                             "values with braces, or put them in the --config file") from None


def main(argv=None) -> int:
    """The command line: one `error:` line (exit 2) for a bad flag, key, value or file."""
    cfg = parse_args(argv)
    prep = prepare(cfg)
    result = train_rm(cfg, prepared=prep)
    first, last = (result.evals[0], result.evals[-1]) if result.evals else ({}, {})
    if first:
        print(f"held-out accuracy {first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f}, "
              f"loss {first['eval_loss']:.4f} -> {last['eval_loss']:.4f}; {result.status}")
    return result.exit_code or (0 if result.status == "done" else 1)


if __name__ == "__main__":
    sys.exit(cli.run(main))
