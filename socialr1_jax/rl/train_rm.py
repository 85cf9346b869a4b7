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

One update: the chosen and the rejected rows of `run.batch_size` pairs (micro-batched inside the
program when asked), gradients through the whole model, AdamW with clipping from
`rl/train_step.py` (`make_optimizer`; the TrainState and its shardings from `init_train_state` /
`state_shardings`: parameters, master copy and moments split by the policy's rules), a
non-finite loss or gradient skips the update. Held-out pairs are scored at the start, every
`run.eval_every` updates and at the end: loss and pair accuracy (the share with r_c > r_r).

Outputs in `run.out_dir`: metrics.jsonl, checkpoints/<step> (Orbax: the model and the
optimizer state; `run.resume` continues from the latest), and with `run.export_hf` an HF
Qwen3ForSequenceClassification directory that transformers loads with the same scores. See
`rl/rm_data.py` for the config keys and the data format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from socialr1_jax import cli
from socialr1_jax.model.reward_model import RewardModel, make_score_fn
from socialr1_jax.parallel.sharding import BATCH, batch_sharding, batch_shards, constrain, make_mesh
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.rm_data import (PairDataError, RMTrainConfig, Tokenized, batch_order,
                                     load_data, load_rm_config, pair_arrays, tokenize_pairs)
from socialr1_jax.social import rm_prompt
from socialr1_jax.yaml_config import to_dict


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
    whose params are `model`'s (see the module docstring)."""
    graphdef = nnx.graphdef(model)
    optimizer, schedule = ts.make_optimizer(optim_cfg, total_updates)
    shards = batch_shards(mesh) if mesh is not None else 1
    if micro_batch_size and micro_batch_size % shards:
        raise ValueError(f"run.micro_batch_size={micro_batch_size} is not a multiple of the "
                         f"{shards} batch shards of the mesh")

    def step(state: ts.TrainState, batch: PairBatch):
        b = batch.chosen_ids.shape[0]
        mbs = micro_batch_size or b
        n_micro = b // mbs
        trainable = state.params if state.master is None else state.master

        def loss_fn(tp, mb):
            params = tp if state.master is None else jax.tree.map(
                lambda m, p: m.astype(p.dtype), tp, state.params)
            return pair_loss(nnx.merge(graphdef, params), mb, b)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if n_micro == 1:
            (_, metrics), grads = grad_fn(trainable, batch)
        else:
            def split(x):  # micro-batch k: rows k, k + n, ... (each device's block feeds all)
                y = x.reshape(b // n_micro, n_micro, *x.shape[1:]).swapaxes(0, 1)
                return constrain(y, P(None, BATCH, None))

            def body(acc, mb):
                # As in the GRPO step: keeps each layer's FSDP gather inside the loop.
                tp, mb = jax.lax.optimization_barrier((trainable, mb))
                (_, m), g = grad_fn(tp, mb)
                return jax.tree.map(jnp.add, acc, (g, m)), None

            zeros = jax.tree.map(jnp.zeros_like, trainable)
            _, m_shape = jax.eval_shape(loss_fn, trainable, jax.tree.map(lambda x: x[:mbs], batch))
            m0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), m_shape)
            (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), jax.tree.map(split, batch))

        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def apply(operands):
            tp, opt_state, g = operands
            updates, new_opt = optimizer.update(g, opt_state, tp)
            return optax.apply_updates(tp, updates), new_opt

        new_tp, new_opt = jax.lax.cond(ok, apply, lambda o: o[:2],
                                       (trainable, state.opt_state, grads))
        skip = (~ok).astype(jnp.int32)
        if state.master is None:
            new_state = dataclasses.replace(state, params=new_tp)
        else:
            new_state = dataclasses.replace(state, master=new_tp, params=jax.tree.map(
                lambda m, p: m.astype(p.dtype), new_tp, state.params))
        new_state = dataclasses.replace(
            new_state, opt_state=new_opt, step=state.step + (1 - skip),
            skipped=state.skipped + skip, consecutive_skips=(state.consecutive_skips + 1) * skip)
        return new_state, dict(metrics, grad_norm=grad_norm, skipped=skip,
                               lr=jnp.asarray(schedule(state.step), jnp.float32))

    if mesh is None:
        jitted = jax.jit(step, donate_argnums=0)
    else:
        st_sh = state_shardings(model, optim_cfg, mesh, total_updates)
        two = batch_sharding(mesh, 2)
        jitted = jax.jit(step, donate_argnums=0, in_shardings=(st_sh, PairBatch(two, two, two, two)),
                         out_shardings=(st_sh, NamedSharding(mesh, P())))
    return ts.MeshFunction(jitted, mesh)


def abstract_state(model: RewardModel, optim_cfg, total_updates: int) -> ts.TrainState:
    """The TrainState of `model` as ShapeDtypeStructs (nothing allocated)."""
    return jax.eval_shape(
        lambda p: ts.init_train_state(p, optim_cfg, None, total_updates=total_updates),
        nnx.state(model))


def state_shardings(model: RewardModel, optim_cfg, mesh: Mesh, total_updates: int):
    """The TrainState's shardings: params, master and moments by the partition rules."""
    optimizer, _ = ts.make_optimizer(optim_cfg, total_updates)
    return ts.state_shardings(abstract_state(model, optim_cfg, total_updates), optimizer, mesh)


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
def _state_rest(state: ts.TrainState) -> dict:
    """Everything but the params, as one flat numbered item (saved beside the model)."""
    rest = (state.master, state.opt_state, state.step, state.skipped, state.consecutive_skips)
    return {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(rest))}


def save(cfg: RMTrainConfig, step: int, state: ts.TrainState, graphdef, tokenizer_dir: str,
         history: Optional[dict] = None) -> str:
    """A checkpoint of the model and the optimizer state at `step` under run.out_dir."""
    from socialr1_jax.checkpoint.rm_io import save_reward_model

    meta = {"config": to_dict(cfg), "data_step": step, "train_state_leaves":
            len(_state_rest(state)), **({"last": history} if history else {})}
    return save_reward_model(os.path.join(cfg.run.out_dir, "checkpoints"), step,
                             nnx.merge(graphdef, state.params), _state_rest(state), meta,
                             side_files_from=tokenizer_dir)


def resume(cfg: RMTrainConfig, model: RewardModel, mesh, total_updates: int):
    """(TrainState, step) from the latest checkpoint under run.out_dir, restored in place."""
    from socialr1_jax.checkpoint.errors import CheckpointError
    from socialr1_jax.checkpoint.rm_io import restore_reward_model

    abstract = abstract_state(model, cfg.optim, total_updates)
    if mesh is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, state_shardings(model, cfg.optim, mesh, total_updates))
    flat = _state_rest(abstract)
    root = os.path.join(cfg.run.out_dir, "checkpoints")
    r = restore_reward_model(root, mesh=mesh, pad_token_id=model.pad_token_id,
                             dtype=model.cfg.param_dtype, abstract_opt_state=flat)
    if (r.meta or {}).get("train_state_leaves") != len(flat):
        raise CheckpointError(f"{root} step {r.step}: its optimizer state has "
                              f"{(r.meta or {}).get('train_state_leaves')} arrays, this run's has "
                              f"{len(flat)} (another optimizer or dtype setup?)")
    rest = (abstract.master, abstract.opt_state, abstract.step, abstract.skipped,
            abstract.consecutive_skips)
    treedef = jax.tree.structure(rest)
    rest = jax.tree.unflatten(treedef, [r.opt_state[k] for k in sorted(r.opt_state)])
    return ts.TrainState(nnx.state(r.model), *rest), r.step


# ----------------------------------------------------------------------------- the job
@dataclasses.dataclass
class RMTrainResult:
    """What a run leaves: per-update metrics, held-out evaluations, the final state and model."""

    history: list[dict]
    evals: list[dict]
    state: ts.TrainState
    model: RewardModel
    status: str


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
    ckpts = os.path.join(cfg.run.out_dir, "checkpoints") if cfg.run.out_dir else ""
    if ckpts and orbax_io.list_steps(ckpts) and not cfg.run.resume:
        raise cli.UsageError(f"run.out_dir: {ckpts} already holds checkpoints; set "
                             "run.resume=true to continue, or choose another run.out_dir")
    if cfg.run.resume and not (ckpts and orbax_io.list_steps(ckpts)):
        raise cli.UsageError(f"run.resume=true but {ckpts or 'run.out_dir (empty)'} holds no "
                             "checkpoint")
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
                    mesh, root, pad)


def train_rm(cfg: RMTrainConfig, *, prepared: Optional[Prepared] = None,
             log: Callable[[str], None] = print) -> RMTrainResult:
    """Run the pairwise training the config describes (see the module docstring)."""
    from socialr1_jax.checkpoint.rm_io import init_reward_model, save_hf
    from socialr1_jax.model.reward_model import with_settings

    prep = prepared or prepare(cfg)
    mesh, run, pad = prep.mesh, cfg.run, prep.pad_id
    model, had_head = init_reward_model(cfg.model.path, pad_token_id=pad, mesh=mesh,
                                        dtype=cfg.model.param_dtype or None, seed=cfg.model.seed)
    model = with_settings(model, remat=cfg.model.remat,
                          **({"dtype": cfg.model.dtype} if cfg.model.dtype else {}))
    log(f"reward model from {cfg.model.path} ({'its head' if had_head else 'a new head'}), "
        f"pad id {pad}; {len(prep.train)} training pairs, {len(prep.eval)} held out, "
        f"{prep.train.truncated + prep.eval.truncated} texts cut to data.max_length")
    per_epoch = len(prep.train) // run.batch_size
    total = run.steps or run.epochs * per_epoch
    step_fn = make_rm_step(model, cfg.optim, mesh, micro_batch_size=run.micro_batch_size,
                           total_updates=total)
    scorer = make_score_fn(with_settings(model, remat="none"), mesh)
    graphdef = nnx.graphdef(model)

    first = 0
    if run.resume:
        state, first = resume(cfg, model, mesh, total)
        log(f"resumed from {run.out_dir}/checkpoints step {first}")
    else:
        state = ts.init_train_state(nnx.state(model), cfg.optim, mesh, total_updates=total)
    del model

    def held_out(step: int) -> Optional[dict]:
        if not len(prep.eval):
            return None
        # Rows per call: one training forward's (micro-batch), so evaluation fits where
        # training does.
        e = evaluate(lambda ids, mask: scorer(state.params, ids, mask), prep.eval, pad_id=pad,
                     batch_size=run.micro_batch_size or run.batch_size,
                     max_length=cfg.data.max_length)
        e["step"] = step
        log(f"eval @ {step}: loss {e['eval_loss']:.4f} accuracy {e['eval_accuracy']:.3f} "
            f"margin {e['eval_margin']:+.3f}")
        return e

    metrics_file = None
    if run.out_dir:
        os.makedirs(run.out_dir, exist_ok=True)
        metrics_file = open(os.path.join(run.out_dir, "metrics.jsonl"), "a")
    bar = None
    if run.progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, initial=first, desc="train_rm", unit="step", file=sys.stderr)
        log = bar.write
    two = batch_sharding(mesh, 2)
    history, evals, status = [], [], "done"
    try:
        e = held_out(first)
        evals += [e] if e else []
        for k in range(first, total):
            t0 = time.perf_counter()
            arrays = pair_arrays(prep.train, batch_order(len(prep.train), run.batch_size, k,
                                                         run.seed), pad, cfg.data.max_length)
            batch = PairBatch(*[jax.device_put(a, two) for a in arrays])
            state, m = step_fn(state, batch)
            m = {key: float(v) for key, v in jax.device_get(m).items()}
            m.update(step=k + 1, tokens=int(arrays[0].shape[1]), step_s=time.perf_counter() - t0)
            history.append(m)
            if metrics_file:
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.2f}")
            if (k + 1) % run.log_every == 0 or k + 1 == total:
                log(f"step {k + 1:5d} loss {m['loss']:.4f} accuracy {m['accuracy']:.3f} margin "
                    f"{m['margin']:+.3f} |g| {m['grad_norm']:.3f} lr {m['lr']:.2e} "
                    f"t {m['step_s']:.2f}s")
            if int(state.consecutive_skips) >= 3:
                status = (f"stopped at step {k + 1}: 3 consecutive updates with NaN/Inf loss or "
                          "gradients; the state is the last good one")
                log(status)
                break
            if run.eval_every and (k + 1) % run.eval_every == 0 and k + 1 < total:
                e = held_out(k + 1)
                evals += [e] if e else []
                if metrics_file and e:
                    metrics_file.write(json.dumps(e) + "\n")
            if run.out_dir and run.save_every and (k + 1) % run.save_every == 0:
                save(cfg, k + 1, state, graphdef, prep.tokenizer_dir)
        done = first + len(history)
        e = held_out(done) if history else None
        evals += [e] if e else []
        if metrics_file and e:
            metrics_file.write(json.dumps(e) + "\n")
        if run.out_dir and history:
            log(f"checkpoint: {save(cfg, done, state, graphdef, prep.tokenizer_dir)}")
        final = nnx.merge(graphdef, state.params)
        if run.export_hf:
            log(f"HF export: {save_hf(final, run.export_hf, side_files_from=prep.tokenizer_dir)}")
    finally:
        if bar is not None:
            bar.close()
        if metrics_file:
            metrics_file.close()
    return RMTrainResult(history, evals, state, final, status)


def parse_args(argv=None) -> RMTrainConfig:
    """--config FILE.yaml plus key=value overrides."""
    p = cli.ArgumentParser(prog="python -m socialr1_jax.train_rm", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see rl/rm_data.py for the keys)")
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
    return 0 if result.status == "done" else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
