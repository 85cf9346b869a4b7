"""One GRPO step's data path: sample -> score on the host -> advantages -> a TrainBatch.

The programs of a run are built once (`Programs`): the sampler (one compiled program per
bucketed shape, `rollout.sampler`), the reference / old-policy log-prob forward and the train
step. A rollout stays a set of global arrays laid out over the mesh's batch axes from sampling to
the update; the only thing that goes to the host is what the rewards need: each process copies
the completion tokens and masks of the rows its own devices hold (`distributed.local_rows`),
scores those (whole prompt groups), and puts its scores back as its part of one global reward
array. Advantages are computed on the devices from that array.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from socialr1_jax.parallel import distributed
from socialr1_jax.parallel.sharding import batch_sharding
from socialr1_jax.rl import grpo
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import packed_step
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.lora_train import LoraParts
from socialr1_jax.rl.task import PromptBatch, Scores, as_scores
from socialr1_jax.rollout.sampler import sample


@dataclasses.dataclass
class Rollout:
    """One step's scored rollout: global arrays [R, ...] (R = prompts x group) laid out with
    `batch_sharding`, plus this process's scores and host copies of its own rows."""

    batch: ts.TrainBatch        # what the update takes: sequences, old / ref log-probs, advantages
    rewards: jax.Array          # [R] global
    local: slice                # rows this process scored
    scores: Scores              # of the local rows
    local_tokens: np.ndarray
    local_mask: np.ndarray
    score_s: float = 0.0        # host seconds in the task's rewards (judges included)


@dataclasses.dataclass
class PendingRollout:
    """A rollout dispatched to the devices and not yet scored (`Programs.start_rollout`): its
    prompts, the sampled (prompt_ids, prompt_mask, tokens, mask), old and reference log-probs,
    all global device arrays that may still be computing. ref=None: the reference forward is
    left to `finish_rollout`, on `ref_params` (never donated: the frozen reference)."""

    prompts: PromptBatch
    seqs: tuple
    old: jax.Array
    ref: Optional[jax.Array]
    ref_params: object = None


class Programs:
    """The long-lived programs of one run, built once: sampler, log-prob forward, train step.
    `cfg`: the GRPO job's config (its optim, grpo and rollout sections and batch sizes).
    `lora`: a LoRA run's `lora_train.LoraParts` (the state then holds the adapters only; the
    reference forward runs the base without them), None for full fine-tuning."""

    def __init__(self, cfg, model_cfg, graphdef, mesh, lora: Optional[LoraParts] = None):
        g, r = cfg.grpo, cfg.rollout
        self.cfg, self.mesh, self.graphdef, self.lora = cfg, mesh, graphdef, lora
        kw = dict(temperature=r.temperature, micro_batch_size=cfg.micro_batch)
        if g.packed:
            self._packed_programs(cfg, model_cfg, mesh, lora)
        elif lora is None:
            self.train_step = ts.make_train_step(model_cfg, cfg.optim, g, mesh,
                                                 total_updates=cfg.total_updates, **kw)
        else:
            self.train_step = lora_train.LoraStep(lora_train.make_train_step(
                model_cfg, cfg.optim, g, mesh, total_updates=cfg.total_updates,
                dropout_seed=cfg.run.seed, **kw), lora.base)
        if not g.packed:
            ref_cfg = model_cfg if lora is None else lora.reference_cfg
            self.logprobs = ts.make_logprob_fn(ref_cfg, mesh, chunk=g.logprob_chunk, **kw)
            self.old_logprobs = self.logprobs if lora is None else ts.make_logprob_fn(
                model_cfg, mesh, chunk=g.logprob_chunk, **kw)
        two, one = batch_sharding(mesh, 2), batch_sharding(mesh, 1)
        # The sampler's outputs, re-laid out on the devices (no host round trip).
        self._layout = jax.jit(lambda *xs: xs, out_shardings=(two,) * 5)
        self._advantages = jax.jit(partial(grpo.advantages, group_size=g.group_size,
                                           normalize=g.normalize_adv), out_shardings=one)
        self._tokens = jax.jit(lambda m: jnp.sum(m, dtype=jnp.int32))

    def _packed_programs(self, cfg, model_cfg, mesh, lora):
        """grpo.packed: the update and the log-prob forwards on packed rows (rl/packing.py);
        with `lora`, the update trains the adapters over the frozen base and the reference
        forward runs the base alone, as the padded LoRA programs do."""
        g, r = cfg.grpo, cfg.rollout
        micro = cfg.mini_batch // cfg.micro_batch
        kw = dict(temperature=r.temperature, micro_batches=micro, total_updates=cfg.total_updates)
        if lora is None:
            step = packed_step.make_packed_train_step(model_cfg, cfg.optim, g, mesh, **kw)
        else:
            step = lora_train.LoraStep(lora_train.make_packed_train_step(
                model_cfg, cfg.optim, g, mesh, dropout_seed=cfg.run.seed, **kw), lora.base)
        self.train_step = packed_step.PackedStep(step, mesh, micro_batches=micro,
                                                 row_len=g.packed_row_len)
        # The rollout's forwards take as many passes as the update does per mini-batch.
        fw = dict(temperature=r.temperature, chunk=g.logprob_chunk, row_len=g.packed_row_len,
                  micro_batches=cfg.rollout_size // cfg.micro_batch)
        ref_cfg = model_cfg if lora is None else lora.reference_cfg
        self.logprobs = packed_step.PackedLogprobs(ref_cfg, mesh, **fw)
        self.old_logprobs = self.logprobs if lora is None else packed_step.PackedLogprobs(
            model_cfg, mesh, **fw)

    def sample(self, params, prompts: PromptBatch, *, seed: int, eos_ids, pad_id: int):
        """The group_size completions of every prompt under the policy `params`."""
        r, g = self.cfg.rollout, self.cfg.grpo
        model = nnx.merge(self.graphdef, params)
        out = sample(model, prompts.ids, max_new_tokens=r.max_new_tokens,
                     temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                     num_samples=g.group_size, eos_ids=eos_ids, seed=seed, mesh=self.mesh,
                     pad_id=pad_id, slots=r.slots)
        return self._layout(out.prompt_ids, out.prompt_mask, out.tokens, out.mask, out.logprobs)

    def rollout(self, task, state, ref_params, prompts: PromptBatch, *, seed: int) -> Rollout:
        """Sample; start the reference (and, if asked, old-policy) log-prob forward; score this
        process's rows on the host while the devices run it; advantages on the devices."""
        return self.finish_rollout(task, self.start_rollout(task, state, ref_params, prompts,
                                                            seed=seed))

    def start_rollout(self, task, state, ref_params, prompts: PromptBatch, *, seed: int,
                      defer_reference: bool = False) -> PendingRollout:
        """The device half of `rollout`, dispatched and not awaited: the group_size completions
        of every prompt under the policy of `state`, the reference log-probs and (with
        grpo.recompute_old_logp) the old policy's, from the same weights as the sampling.

        Nothing here waits for the devices, so the host can score another rollout meanwhile
        (grpo.async_rollout); `state` may be donated to an update as soon as this returns (the
        runtime orders the update after the programs that read it). Except with grpo.packed:
        its forwards plan the packing from the masks on the host, so they wait for the sampler;
        `defer_reference=True` then leaves the reference forward to `finish_rollout` (which
        dispatches it before scoring), so only a recomputed old-policy forward waits here (it
        must read the sampling weights before an update donates them)."""
        policy = self.policy_params(state)
        pid, pm, tokens, mask, logps = self.sample(policy, prompts, seed=seed,
                                                   eos_ids=task.eos_ids, pad_id=task.pad_id)
        seqs = (pid, pm, tokens, mask)
        ref = None
        if not (defer_reference and self.cfg.grpo.packed):
            ref = self.logprobs(ref_params, *seqs)  # dispatched, not awaited: overlaps the rewards
        old = self.old_logprobs(policy, *seqs) if self.cfg.grpo.recompute_old_logp else logps
        return PendingRollout(prompts, seqs, old, ref, ref_params if ref is None else None)

    def finish_rollout(self, task, pending: PendingRollout) -> Rollout:
        """The host half of `rollout`: this process's rows copied to the host (waiting for the
        sampler), scored by `task`, the scores made one global array, advantages on the
        devices."""
        g = self.cfg.grpo.group_size
        if pending.ref is None:  # deferred by start_rollout: dispatched before the scoring
            pending = dataclasses.replace(
                pending, ref=self.logprobs(pending.ref_params, *pending.seqs), ref_params=None)
        tokens, mask = pending.seqs[2], pending.seqs[3]
        rows = tokens.shape[0]
        local = distributed.process_rows(self.mesh, rows)
        if local.start % g or local.stop % g:
            raise ValueError(f"process {jax.process_index()} holds rollout rows {local.start}:"
                             f"{local.stop}, which split a group of {g}; make "
                             "rollout.prompts_per_step a multiple of the processes")
        tok_h = distributed.local_rows(tokens, self.mesh)
        mask_h = distributed.local_rows(mask, self.mesh)
        mine = pending.prompts.select(local.start // g, local.stop // g)
        t0 = time.perf_counter()
        scores = as_scores(task.rewards(mine, tok_h, mask_h, g), tok_h.shape[0])
        score_s = time.perf_counter() - t0
        rewards = distributed.global_batch(scores.rewards, self.mesh, global_size=rows)
        adv = self._advantages(rewards)
        return Rollout(ts.TrainBatch(*pending.seqs, pending.old, pending.ref, adv), rewards,
                       local, scores, tok_h, mask_h, score_s)

    def policy_params(self, state):
        """The policy's whole parameter state (a LoRA run's: base + the state's adapters)."""
        return state.params if self.lora is None else self.lora.policy(state.params)

    def generated_tokens(self, ro: Rollout) -> int:
        """Tokens generated in the whole rollout (every process)."""
        return int(self._tokens(ro.batch.completion_mask))


def gather_rows(local: np.ndarray, mesh, rows: int) -> np.ndarray:
    """Every process's rows of a per-row host array, on every host (small arrays: metrics)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return distributed.gather(distributed.global_batch(np.asarray(local), mesh, global_size=rows))


def score_metrics(ro: Rollout, mesh, group_size: int) -> dict:
    """Reward statistics over the whole rollout, the mean of every reward term, accuracy."""
    rows = ro.rewards.shape[0]
    rewards = distributed.gather(ro.rewards)
    m = grpo.reward_stats(rewards, group_size)
    for k, v in sorted(ro.scores.terms.items()):
        # A term a completion does not have (a judge's score of an unformatted one) is NaN:
        # the mean is over the completions that have it, and absent when none has.
        v = gather_rows(v, mesh, rows)
        if np.isfinite(v).any():
            m[f"reward/{k}"] = float(np.mean(v[np.isfinite(v)]))
    if ro.scores.accuracy is not None:
        m["accuracy"] = float(np.mean(gather_rows(ro.scores.accuracy, mesh, rows)))
    for k, v in ro.scores.metrics.items():
        m[f"task/{k}"] = float(v)
    return m


def sample_rows(ro: Rollout, prompts: PromptBatch, step: int, n: int, group_size: int,
                mesh) -> list:
    """Up to `n` of this process's rollouts as JSON rows for samples.jsonl: prompt, completion,
    reward, advantage and every reward term."""
    if n <= 0:
        return []
    k = min(n, ro.local_tokens.shape[0])
    adv = distributed.local_rows(ro.batch.advantages, mesh)[:k]
    out = []
    for i in range(k):
        p = ro.local.start // group_size + i // group_size
        length = int(ro.local_mask[i].sum())
        row = {"step": step, "prompt_index": p, "sample_index": i % group_size}
        row["prompt"] = (prompts.texts[p] if prompts.texts is not None else prompts.ids[p])
        row["completion"] = (ro.scores.completions[i] if ro.scores.completions is not None
                             else ro.local_tokens[i, :length].tolist())
        row["completion_tokens"] = length
        row["reward"] = float(ro.scores.rewards[i])
        row["advantage"] = float(adv[i])
        for t, v in ro.scores.terms.items():
            row[t] = float(v[i])
        if ro.scores.accuracy is not None:
            row["accuracy"] = float(ro.scores.accuracy[i])
        out.append(row)
    return out

