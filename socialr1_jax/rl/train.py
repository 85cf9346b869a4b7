"""The GRPO training job: `python -m socialr1_jax.train [--config FILE.yaml] [key=value ...]`.

Without arguments it runs the tiny CPU demo (the embedded `DEMO` config, the same as
configs/tiny_cpu.yaml): a tiny random Qwen3 learns the toy task (reward 1 when the completion
starts with token 7) in a few tens of GRPO steps, offline, in about a minute.

The paper's recipe: `--config configs/socialr1_qwen3_4b.yaml model.path=/path/to/Qwen3-4B`.
Its task (ToMBench-Hard prompts, Social-R1 rewards) is not implemented yet and the job says so.

One step: prompts from the task -> `sampler.sample` (group_size completions each) -> rewards
from the task -> group advantages -> reference log-probs (a frozen copy of the initial weights,
its own jitted forward) -> mini-batches x epochs of the jitted, donated train step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx

from socialr1_jax.rl import grpo
from socialr1_jax.rl import train_step as ts
from socialr1_jax.yaml_config import to_dict
from socialr1_jax.model.build import abstract_model, create_model
from socialr1_jax.checkpoint.loading import load_model
from socialr1_jax.parallel.sharding import batch_sharding, make_mesh
from socialr1_jax.rl.task import Task
from socialr1_jax.rl.toy_task import ToyTask
from socialr1_jax.rl.train_config import TrainConfig, load_train_config

# The tiny CPU demo (== configs/tiny_cpu.yaml; a test checks they agree).
DEMO = {
    "model": {"preset": "tiny", "vocab_size": 32, "seed": 0},
    "optim": {"lr": 1e-2, "weight_decay": 0.0, "max_grad_norm": 1.0},
    "grpo": {"group_size": 8, "beta": 0.04, "kl": "k3", "agg": "token-mean"},
    "rollout": {"prompts_per_step": 8, "max_prompt_len": 16, "max_new_tokens": 4,
                "temperature": 1.0},
    "run": {"task": "toy", "steps": 30, "seed": 0},
    "toy": {"target_token": 7, "prompt_len": 6, "eos_id": 1},
}


@dataclasses.dataclass
class TrainResult:
    """What a run leaves: per-step metrics, the final state and why it ended."""

    history: list[dict]
    state: ts.TrainState
    status: str
    model_cfg: object

    @property
    def start_reward(self) -> float:
        return self.history[0]["reward_mean"] if self.history else math.nan

    @property
    def end_reward(self) -> float:
        return self.history[-1]["reward_mean"] if self.history else math.nan


def build_mesh(cfg: TrainConfig):
    """The run's (data, fsdp, tensor) mesh over every visible device."""
    m = cfg.mesh
    return make_mesh(m.data, m.fsdp or None, m.tensor)


def load_policy(cfg: TrainConfig, mesh):
    """The initial policy: a checkpoint (model.path) or a random preset, sharded on `mesh`."""
    sec = cfg.model
    if sec.path:
        model = load_model(sec.path, dtype=sec.param_dtype or None, mesh=mesh)
        mcfg = model.cfg.replace(remat=sec.remat, matmul_precision=sec.matmul_precision,
                                 **({"dtype": sec.dtype} if sec.dtype else {}))
        if mcfg != model.cfg:  # same parameters, different static settings
            model = nnx.merge(nnx.graphdef(abstract_model(mcfg)), nnx.state(model))
        return model
    return create_model(sec.preset_config(), mesh=mesh, seed=sec.seed)


def make_task(cfg: TrainConfig, vocab_size: int) -> Task:
    """The task named by run.task."""
    if cfg.run.task == "toy":
        t = cfg.toy
        return ToyTask(vocab_size, target_token=t.target_token, prompt_len=t.prompt_len,
                       eos_id=t.eos_id, num_prompts=t.num_prompts, seed=cfg.run.seed)
    raise NotImplementedError(
        f"run.task={cfg.run.task!r}: the Social-R1 task (ToMBench-Hard prompts and the "
        "format/answer/structure/content/length rewards of SPEC.md) is not implemented yet; only "
        "run.task=toy can train now. Pass a Task object to socialr1_jax.train.train() to train "
        "on your own prompts and rewards.")


def _save(cfg: TrainConfig, step: int, state: ts.TrainState, model_cfg) -> str:
    """A training checkpoint: params, and the optimizer state, master weights and counters as
    one flat, numbered item (restored with the abstract TrainState's tree structure)."""
    from socialr1_jax.checkpoint.orbax_io import save_checkpoint

    rest = (state.master, state.opt_state, state.step, state.skipped, state.consecutive_skips)
    leaves = jax.tree.leaves(rest)
    flat = {f"{i:05d}": x for i, x in enumerate(leaves)}
    meta = {"config": to_dict(cfg), "train_state_leaves": len(leaves)}
    return save_checkpoint(os.path.join(cfg.run.out_dir, "checkpoints"), step, state.params,
                           flat, meta, cfg=model_cfg)


def restore_train_state(root: str, template: ts.TrainState, model_cfg, mesh,
                        step: Optional[int] = None) -> tuple[ts.TrainState, int]:
    """(TrainState, step) from a checkpoint written by a run (`OUT/checkpoints`, latest step by
    default), every array restored straight into the sharding of `template`'s matching leaf."""
    from socialr1_jax.checkpoint.errors import CheckpointError
    from socialr1_jax.checkpoint.orbax_io import restore_checkpoint

    rest = (template.master, template.opt_state, template.step, template.skipped,
            template.consecutive_skips)
    leaves, treedef = jax.tree.flatten(rest)
    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                for i, x in enumerate(leaves)}
    r = restore_checkpoint(root, step, cfg=model_cfg, mesh=mesh, abstract_opt_state=abstract)
    if (r.meta or {}).get("train_state_leaves") != len(leaves):
        raise CheckpointError(f"{root} step {r.step}: its optimizer state has "
                              f"{(r.meta or {}).get('train_state_leaves')} arrays, this run's "
                              f"has {len(leaves)} (another optimizer or dtype setup?)")
    rest = jax.tree.unflatten(treedef, [r.opt_state[k] for k in sorted(r.opt_state)])
    return ts.TrainState(nnx.state(r.model), *rest), r.step


def _resume_root(cfg: TrainConfig) -> str:
    """out_dir/checkpoints when run.resume is set and it holds a finished step, else ''."""
    root = os.path.join(cfg.run.out_dir, "checkpoints") if cfg.run.out_dir else ""
    if not (cfg.run.resume and root and os.path.isdir(root)):
        return ""
    from socialr1_jax.checkpoint.orbax_io import list_steps
    return root if list_steps(root) else ""


def _mean_metrics(history: list[dict]) -> dict:
    keys = history[0].keys()
    host = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in host])) for k in keys}


def train(cfg: TrainConfig, *, task: Optional[Task] = None, model=None,
          log: Callable[[str], None] = print,
          on_step: Optional[Callable[[int, ts.TrainState, dict], None]] = None) -> TrainResult:
    """Run GRPO for cfg.run.steps steps (or until too many non-finite updates in a row).

    task: defaults to the one named by cfg.run.task; model: defaults to `load_policy(cfg)`.
    on_step(step, state, metrics): called after each step's updates (evaluation hooks, tests);
    the state is donated to the next step, so copy what you keep.
    """
    if task is None and cfg.run.task != "toy":
        make_task(cfg, 0)  # raises before any model is loaded
    mesh = build_mesh(cfg)
    if model is None:
        model = load_policy(cfg, mesh)
    mcfg = model.cfg
    task = task or make_task(cfg, mcfg.vocab_size)
    g, r = cfg.grpo, cfg.rollout

    _, ref_params = nnx.split(model)  # frozen: the train state holds its own copy
    resume_from = _resume_root(cfg)
    step_fn = ts.make_train_step(mcfg, cfg.optim, g, mesh, temperature=r.temperature,
                                 micro_batch_size=cfg.micro_batch,
                                 total_updates=cfg.total_updates)
    logp_fn = ts.make_logprob_fn(mcfg, mesh, temperature=r.temperature, chunk=g.logprob_chunk,
                                 micro_batch_size=cfg.micro_batch)
    graphdef = nnx.graphdef(model)
    del model

    first = 0
    if resume_from:
        state, first = restore_train_state(resume_from, ts.abstract_train_state(
            mcfg, cfg.optim, mesh, total_updates=cfg.total_updates), mcfg, mesh)
        log(f"resumed from {resume_from} step {first} ({int(state.step)} updates)")
    else:
        state = ts.init_train_state(ref_params, cfg.optim, mesh, total_updates=cfg.total_updates)
    from socialr1_jax.rollout.sampler import sample

    out_dir = cfg.run.out_dir
    metrics_file = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        metrics_file = open(os.path.join(out_dir, "metrics.jsonl"), "a")
    bar = None
    if cfg.run.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.run.steps, initial=first, desc="GRPO", unit="step",
                   file=sys.stderr)
        log = bar.write
    two = batch_sharding(mesh, 2)


    history, status = [], "done"
    try:
        for step in range(first, cfg.run.steps):
            prompts = task.prompts(step, r.prompts_per_step)
            too_long = [i for i, p in enumerate(prompts.ids) if len(p) > r.max_prompt_len]
            if too_long:
                raise ValueError(f"step {step}: prompt(s) {too_long[:5]} are longer than "
                                 f"rollout.max_prompt_len={r.max_prompt_len}")
            t0 = time.perf_counter()
            out = sample(nnx.merge(graphdef, state.params), prompts.ids,
                         max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                         top_k=r.top_k, top_p=r.top_p, num_samples=g.group_size,
                         eos_ids=task.eos_ids, seed=cfg.run.seed * 1_000_003 + step, mesh=mesh,
                         pad_id=task.pad_id)
            tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
            t1 = time.perf_counter()
            rewards = np.asarray(task.rewards(prompts, tokens, mask, g.group_size), np.float32)
            adv = np.asarray(grpo.advantages(rewards, g.group_size, normalize=g.normalize_adv))
            seqs = [jax.device_put(np.asarray(x), two)
                    for x in (out.prompt_ids, out.prompt_mask, tokens, mask)]
            ref_logp = logp_fn(ref_params, *seqs)
            old_logp = (logp_fn(state.params, *seqs) if g.recompute_old_logp
                        else jax.device_put(np.asarray(out.logprobs), two))
            jax.block_until_ready(ref_logp)
            t2 = time.perf_counter()
            batch = ts.TrainBatch(*seqs, old_logp, ref_logp, adv)
            state, updates = ts.rollout_updates(
                step_fn, state, batch, mini_batch_size=cfg.mini_batch, epochs=g.epochs,
                shuffle=g.shuffle, seed=cfg.run.seed * 7919 + step, mesh=mesh)
            m = _mean_metrics(updates)
            t3 = time.perf_counter()
            m.update(grpo.reward_stats(rewards, g.group_size))
            m.update(step=step, response_len=float(mask.sum(1).mean()), rollout_s=t1 - t0,
                     ref_s=t2 - t1, update_s=t3 - t2, updates=int(state.step),
                     skipped_total=int(state.skipped))
            history.append(m)
            if metrics_file:
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", loss=f"{m['loss']:.4f}")
            if step % cfg.run.log_every == 0 or step == cfg.run.steps - 1:
                log(f"step {step:4d} reward {m['reward_mean']:.3f} loss {m['loss']:+.4f} "
                    f"pg {m['pg_loss']:+.4f} kl {m['kl']:.4f} clip(lo/hi) "
                    f"{m['clip_frac_low']:.3f}/{m['clip_frac_high']:.3f} ent {m['entropy']:.3f} "
                    f"|g| {m['grad_norm']:.3f} lr {m['lr']:.2e} len {m['response_len']:.1f} "
                    f"t {m['rollout_s']:.2f}/{m['ref_s']:.2f}/{m['update_s']:.2f}s")
            if on_step is not None:
                on_step(step, state, m)
            if int(state.consecutive_skips) >= g.max_consecutive_skips:
                status = (f"stopped at step {step}: {int(state.consecutive_skips)} consecutive "
                          f"updates with NaN/Inf loss or gradients (grpo.max_consecutive_skips="
                          f"{g.max_consecutive_skips}); the state is the last good one")
                log(status)
                break
            if out_dir and cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
                _save(cfg, step + 1, state, mcfg)
        if out_dir and history:
            path = _save(cfg, first + len(history), state, mcfg)
            log(f"checkpoint: {path}")
    finally:
        if bar is not None:
            bar.close()
        if metrics_file:
            metrics_file.close()
    return TrainResult(history=history, state=state, status=status, model_cfg=mcfg)


def summary(result: TrainResult) -> str:
    """Start vs end mean reward, updates applied and skipped, why the run ended."""
    h = result.history
    if not h:
        return "no step ran"
    tail = h[-min(5, len(h)):]
    return (f"{len(h)} steps, {int(result.state.step)} updates ({int(result.state.skipped)} "
            f"skipped): mean reward {result.start_reward:.3f} at the first step -> "
            f"{result.end_reward:.3f} at the last (last {len(tail)} steps: "
            f"{np.mean([m['reward_mean'] for m in tail]):.3f}); {result.status}")


def parse_args(argv=None) -> TrainConfig:
    """--config FILE.yaml plus key=value overrides; no --config = the embedded tiny demo."""
    p = argparse.ArgumentParser(prog="python -m socialr1_jax.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (configs/*.yaml); default: the tiny CPU demo")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=1e-6 run.steps=10")
    a = p.parse_args(argv)
    return load_train_config(a.config, a.overrides, defaults=None if a.config else DEMO)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    print(f"devices: {jax.devices()}")
    result = train(cfg)
    print(summary(result))
    return 0 if result.status == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
