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
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax import cli
from socialr1_jax.model.reward_model import RewardModel, make_score_fn
from socialr1_jax.parallel.sharding import batch_sharding, batch_shards, make_mesh
from socialr1_jax.jobs import run_dir
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.optimizer import make_optimizer
from socialr1_jax.jobs.preemption import StopSignals
from socialr1_jax.jobs.rm_data import (PairDataError, RMTrainConfig, Tokenized, batch_order,
                                     load_data, load_rm_config, pair_arrays, tokenize_pairs)
from socialr1_jax.social import rm_prompt


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PairBatch:
    """One update's pairs: chosen and rejected rows [B, T] (row i of each is one pair)."""

    chosen_ids: jax.Array
    chosen_mask: jax.Array
    rejected_ids: jax.Array
    rejected_mask: jax.Array


def pair_loss(model: RewardModel, batch: PairBatch, num_pairs: int):
    """(sum over the batch's pairs of -log sigmoid(r_c - r_r) / num_pairs, metrics summed the
    same way): with num_pairs = the whole batch, micro-batch losses add up to the batch mean."""
    r_c = model(batch.chosen_ids, batch.chosen_mask)
    r_r = model(batch.rejected_ids, batch.rejected_mask)
    margin = r_c - r_r
    loss = jnp.sum(jax.nn.softplus(-margin)) / num_pairs
    metrics = {"loss": loss, "accuracy": jnp.sum(margin > 0) / num_pairs,
               "margin": jnp.sum(margin) / num_pairs, "reward_chosen": jnp.sum(r_c) / num_pairs,
               "reward_rejected": jnp.sum(r_r) / num_pairs}
    return loss, metrics


def make_rm_step(model: RewardModel, optim_cfg, mesh: Optional[Mesh], *,
                 micro_batch_size: int = 0, total_updates: int = 1):
    """The jitted, donated update `step(state, batch) -> (state, metrics)` over a TrainState
    whose params are `model`'s: `pair_loss` through the GRPO step's `apply_update`
    (micro-batch accumulation, clipping + AdamW, NaN skipping)."""
    graphdef = nnx.graphdef(model)
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)
    ts.check_micro_batch(micro_batch_size, mesh, "run.micro_batch_size")
    params = nnx.state(model)
    compute_dtype = jax.tree.leaves(params)[0].dtype  # the master copy's cast, if one is kept

    def step(state: ts.TrainState, batch: PairBatch):
        num_pairs = batch.chosen_ids.shape[0]

        def loss_fn(p, mb):
            return pair_loss(nnx.merge(graphdef, p), mb, num_pairs)

        return ts.apply_update(state, batch, loss_fn, optimizer, schedule,
                               micro_batch_size=micro_batch_size, compute_dtype=compute_dtype)

    return ts.jit_update(step, mesh, params, optim_cfg, PairBatch, total_updates=total_updates)


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
               "run.eval_every", "run.export_hf", "run.micro_batch_size", "mesh.", "model.remat")


def _meta(cfg: RMTrainConfig, done: int, state: ts.TrainState, train_pairs: int) -> dict:
    """A checkpoint's meta: steps done, where the data continues (batch k's pairs are
    `batch_order(train_pairs, batch_size, k, seed)`, so the next step is the whole position),
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


def prepare(cfg: RMTrainConfig) -> Prepared:
    """Check the config against the files and read the data (no model is loaded): raises
    cli.UsageError naming the key, file or value."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.checkpoint.errors import CheckpointError
    from socialr1_jax.checkpoint.rm_io import resolve_pad_id
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
    resume = run_dir.check_run_dir(cfg, cfg.run.out_dir, free=RESUME_FREE)
    if cfg.run.export_hf and os.path.lexists(cfg.run.export_hf):
        raise cli.UsageError(f"run.export_hf: {cfg.run.export_hf} already exists")
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
    """Run the pairwise training the config describes (see the module docstring)."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.checkpoint.rm_io import hf_config, init_reward_model, save_hf
    from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
    from socialr1_jax.model.reward_model import abstract_reward_model, with_settings

    prep = prepared or prepare(cfg)
    mesh, run, pad = prep.mesh, cfg.run, prep.pad_id
    ckpt = None
    if run.out_dir:
        ckpt = TrainCheckpointer(os.path.join(run.out_dir, run_dir.CHECKPOINTS), keep=run.keep,
                                 async_save=run.async_save)
    resuming = ckpt is not None and run.resume and ckpt.latest() is not None
    if resuming:
        # The restore replaces every weight, so the starting checkpoint is not read: the shapes
        # and dtypes come from the config.json the run wrote beside its steps.
        model = abstract_reward_model(
            orbax_io.read_config(ckpt.root, dtype=cfg.model.param_dtype or None), pad)
        source = f"the checkpoints of {run.out_dir}"
    else:
        model, had_head = init_reward_model(cfg.model.path, pad_token_id=pad, mesh=mesh,
                                            dtype=cfg.model.param_dtype or None,
                                            seed=cfg.model.seed)
        source = f"{cfg.model.path} ({'its head' if had_head else 'a new head'})"
    model = with_settings(model, remat=cfg.model.remat,
                          **({"dtype": cfg.model.dtype} if cfg.model.dtype else {}))
    log(f"reward model from {source}, pad id {pad}; {len(prep.train)} training pairs, "
        f"{len(prep.eval)} held out, {prep.train.truncated + prep.eval.truncated} texts cut to "
        "data.max_length")
    per_epoch = len(prep.train) // run.batch_size
    total = run.steps or run.epochs * per_epoch
    step_fn = make_rm_step(model, cfg.optim, mesh, micro_batch_size=run.micro_batch_size,
                           total_updates=total)
    scorer = make_score_fn(with_settings(model, remat="none"), mesh)
    graphdef = nnx.graphdef(model)

    first = 0
    if resuming:
        # The whole TrainState, each array read into its sharding on this run's mesh.
        abstract = ts.abstract_state_of(nnx.state(model), cfg.optim, mesh, total_updates=total)
        state, meta = ckpt.restore(abstract)
        first = int(meta["step"])
        log(f"resumed {run.out_dir} at step {first} ({int(state.step)} updates)")
    else:
        state = ts.init_train_state(nnx.state(model), cfg.optim, mesh, total_updates=total)
        if run.resume:
            log(f"resumed {run.out_dir}: no checkpoint yet, starting at step 0")
    if ckpt is not None:
        # The root loads as a reward model (judge `checkpoint`, rm_io.load_reward_model): the
        # sequence-classification config.json, then the tokenizer files.
        current = nnx.merge(graphdef, state.params)
        ckpt.write_side_files(current.cfg, source=prep.tokenizer_dir, hf_config=hf_config(current))
    for change in (prep.resume or {}).get("changes", []):
        log(f"warning: config changed since the run started: {change}")
    model = None

    def held_out(step: int) -> Optional[dict]:
        if not len(prep.eval):
            return None
        # Rows per call: one training forward's (micro-batch), so evaluation fits where
        # training does.
        e = evaluate(lambda ids, mask: scorer(state.params, ids, mask), prep.eval, pad_id=pad,
                     batch_size=run.micro_batch_size or run.batch_size,
                     max_length=cfg.data.max_length)
        logs.evaluation(step, e)
        log(f"eval @ {step}: loss {e['eval_loss']:.4f} accuracy {e['eval_accuracy']:.3f} "
            f"margin {e['eval_margin']:+.3f}")
        return dict(e, step=step)

    logs = run_dir.RunLogs(cfg, run.out_dir, first, primary=jax.process_index() == 0,
                           samples=False)
    bar = None
    if run.progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, initial=first, desc="train_rm", unit="step", file=sys.stderr)
        log = bar.write
    two = batch_sharding(mesh, 2)
    history, evals, status, done, exit_code = [], [], "done", first, 0
    with StopSignals(notify=log if jax.process_index() == 0 else None) as stop:
        try:
            if first == 0:  # a resumed run's evaluation at `first` is in eval.jsonl already
                e = held_out(first)
                evals += [e] if e else []
            for k in range(first, total):
                t0 = time.perf_counter()
                arrays = pair_arrays(prep.train, batch_order(len(prep.train), run.batch_size, k,
                                                             run.seed), pad, cfg.data.max_length)
                batch = PairBatch(*[jax.device_put(a, two) for a in arrays])
                state, m = step_fn(state, batch)
                m = {key: float(v) for key, v in jax.device_get(m).items()}
                m.update(tokens=int(arrays[0].shape[1]), step_s=time.perf_counter() - t0)
                logs.step(k, m)
                done = k + 1
                history.append(dict(m, step=k))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.2f}")
                if done % run.log_every == 0 or done == total:
                    log(f"step {done:5d} loss {m['loss']:.4f} accuracy {m['accuracy']:.3f} "
                        f"margin {m['margin']:+.3f} |g| {m['grad_norm']:.3f} lr {m['lr']:.2e} "
                        f"t {m['step_s']:.2f}s")
                if int(state.consecutive_skips) >= 3:
                    status = (f"stopped at step {done}: 3 consecutive updates with NaN/Inf loss "
                              "or gradients; the state is the last good one")
                    log(status)
                    break
                if run.eval_every and done % run.eval_every == 0 and done < total:
                    e = held_out(done)  # before the save: a resume never skips an evaluation
                    evals += [e] if e else []
                if ckpt is not None and run.save_every and done % run.save_every == 0:
                    ckpt.save(done, state, _meta(cfg, done, state, len(prep.train)))
                if stop.requested():  # the update in hand is done: save it below and exit
                    status = f"stopped by {stop.name} after {done} steps"
                    exit_code = stop.exit_code
                    log(status + (f"; continue with run.out_dir={run.out_dir} run.resume=true"
                                  if run.out_dir else ""))
                    break
            if history:
                e = held_out(done)
                evals += [e] if e else []
            if ckpt is not None and history:
                ckpt.save(done, state, _meta(cfg, done, state, len(prep.train)))
                ckpt.wait()
                log(f"checkpoint: {os.path.join(ckpt.root, str(done))}")
            final = nnx.merge(graphdef, state.params)
            if run.export_hf:
                exported = save_hf(final, run.export_hf, side_files_from=prep.tokenizer_dir)
                log(f"HF export: {exported}")
        finally:
            if bar is not None:
                bar.close()
            logs.close()
            if ckpt is not None:
                ckpt.close()
    return RMTrainResult(history, evals, state, final, status, exit_code)


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
