"""The GRPO update and the log-prob forward on packed rows (`rl/packing.py`, grpo.packed).

The same update as `train_step.grpo_update` (`apply_update`: micro-batches, clipping, AdamW,
NaN skipping) with the policy's log-probs taken on a `PackedBatch`: one forward over R rows of
T tokens with segment ids instead of B rows of P + C. Micro-batches are groups of packed rows;
the normalisers are the whole batch's, counted per (row, segment), so their sum is the
padded batch's loss for every aggregation mode.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from socialr1_jax.model import build
from socialr1_jax.model.config import ModelConfig
from socialr1_jax.model.logprobs import head_logprobs
from socialr1_jax.parallel import distributed
from socialr1_jax.parallel.sharding import batch_sharding, batch_shards
from socialr1_jax.rl import grpo
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import GRPOConfig, OptimConfig
from socialr1_jax.rl.optimizer import make_optimizer
from socialr1_jax.rl.packing import (PackedBatch, PackPlan, first_fit_decreasing, pack,
                                     pack_inputs, pack_plan, shift_plan, unpack)


def packed_logprobs(model, ids, segment_ids, positions, targets, *, temperature: float = 1.0,
                    chunk: int = 256, with_entropy: bool = False, remat: bool = True):
    """Log-prob [R, T] of `targets` (the token each packed position predicts) under `model`,
    each sequence attending only to itself; meaningless where nothing is predicted."""
    hidden, _ = model.hidden_states(ids, positions=positions, segment_ids=segment_ids)
    return head_logprobs(hidden, model.lm_head_weight(), targets, temperature=temperature,
                         chunk=chunk, with_entropy=with_entropy, remat=remat,
                         precision=model.cfg.precision)


def packed_normalisers(batch: PackedBatch, grpo_cfg: GRPOConfig):
    """(num_tokens, num_seqs, scale) of the whole packed batch, as the padded one's."""
    return grpo.batch_normalisers(batch.loss_mask, grpo_cfg.agg, grpo_cfg.loss_scale_factor or None,
                                  segment_ids=batch.segment_ids,
                                  completion_len=batch.completion_len)


def packed_policy_loss(graphdef, params, batch: PackedBatch, grpo_cfg: GRPOConfig, *,
                       temperature: float, normalisers=None, remat_head=True):
    """`train_step.policy_loss` on packed rows: the GRPO loss and metrics of `batch`."""
    model = nnx.merge(graphdef, params)
    out = packed_logprobs(model, batch.ids, batch.segment_ids, batch.positions, batch.targets,
                          temperature=temperature, chunk=grpo_cfg.logprob_chunk,
                          with_entropy=grpo_cfg.compute_entropy, remat=remat_head)
    logp, entropy = out if grpo_cfg.compute_entropy else (out, None)
    num_tokens, num_seqs, scale = normalisers or packed_normalisers(batch, grpo_cfg)
    return grpo.loss(logp, batch.old_logp, batch.ref_logp, batch.advantages, batch.loss_mask,
                     beta=grpo_cfg.beta, kl=grpo_cfg.kl, eps_low=grpo_cfg.eps_low,
                     eps_high=grpo_cfg.eps_high, dual_clip=grpo_cfg.dual_clip or None,
                     agg=grpo_cfg.agg, entropy=entropy, num_tokens=num_tokens,
                     num_seqs=num_seqs, loss_scale_factor=scale, segment_ids=batch.segment_ids)


def _advantage_metrics(batch: PackedBatch) -> dict:
    """Mean, std, min and max of the per-sequence advantages (read at each segment's first
    position), as the padded step reports them."""
    first = (batch.positions == 0) & (batch.segment_ids > 0)
    n = jnp.maximum(jnp.sum(first), 1)
    adv = jnp.where(first, batch.advantages, 0.0)
    mean = jnp.sum(adv) / n
    var = jnp.sum(jnp.where(first, (adv - mean) ** 2, 0.0)) / n
    return dict(adv_mean=mean, adv_std=jnp.sqrt(var),
                adv_min=jnp.min(jnp.where(first, adv, jnp.inf)),
                adv_max=jnp.max(jnp.where(first, adv, -jnp.inf)))


def packed_update(graphdef, model_cfg: ModelConfig, optim_cfg: OptimConfig,
                  grpo_cfg: GRPOConfig, mesh: Optional[Mesh] = None, *,
                  temperature: float = 1.0, micro_batches: int = 1, total_updates: int = 1,
                  params_of: Callable = lambda p: p, dropout=None):
    """The un-jitted `step(state, packed, *extra)`: `train_step.grpo_update` on a PackedBatch.
    micro_batches: forward/backward passes per update (the packed rows split evenly).
    params_of / dropout: as `train_step.grpo_update` takes them (a LoRA run: base + adapters,
    `lora.Dropout`); dropout keys are then drawn per packed row, not per sequence."""
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)
    master = ts._needs_master(model_cfg.jnp_param_dtype, optim_cfg)
    compute_dtype = model_cfg.jnp_param_dtype if master else None
    shards = batch_shards(mesh) if mesh is not None else 1

    def step(state, batch: PackedBatch, *extra):
        if batch.size % (micro_batches * shards):
            raise ValueError(f"{batch.size} packed rows do not split into {micro_batches} "
                             f"micro-batches x {shards} batch shards (pack_plan rows_multiple)")
        rows = batch.size // micro_batches
        norms = packed_normalisers(batch, grpo_cfg)
        remat_head = ts.head_remat(grpo_cfg, rows, batch.ids.shape[1], model_cfg.vocab_size,
                                   shards)

        def loss_fn(p, mb):
            return packed_policy_loss(graphdef, params_of(p, *extra), mb, grpo_cfg,
                                      temperature=temperature, normalisers=norms,
                                      remat_head=remat_head)

        rows_in, loss = (batch, loss_fn) if dropout is None else dropout.wrap(state.step, batch,
                                                                              loss_fn)
        new_state, metrics = ts.apply_update(state, rows_in, loss, optimizer, schedule,
                                             micro_batch_size=rows, compute_dtype=compute_dtype)
        metrics.update(_advantage_metrics(batch))
        return new_state, metrics

    return step


def make_packed_train_step(model_cfg: ModelConfig, optim_cfg: OptimConfig, grpo_cfg: GRPOConfig,
                           mesh: Optional[Mesh] = None, *, temperature: float = 1.0,
                           micro_batches: int = 1, total_updates: int = 1) -> ts.MeshFunction:
    """The jitted `step(state, packed) -> (state, metrics)` (state donated)."""
    graphdef, abstract_params = build.abstract_state(model_cfg, mesh)
    step = packed_update(graphdef, model_cfg, optim_cfg, grpo_cfg, mesh, temperature=temperature,
                         micro_batches=micro_batches, total_updates=total_updates)
    if mesh is None:
        return ts.jit_step(step, None)
    st_sh = ts.train_state_shardings(abstract_params, optim_cfg, mesh,
                                     total_updates=total_updates)
    # One sharding for the whole batch (a tree prefix): every field is [R, T], split by rows,
    # and the batch's static completion_len stays out of the shardings' tree.
    return ts.jit_step(step, mesh, st_sh, batch_sharding(mesh, 2))


def make_packed_logprob_fn(model_cfg: ModelConfig, mesh: Optional[Mesh] = None, *,
                           temperature: float = 1.0, chunk: int = 256,
                           micro_batches: int = 1) -> ts.MeshFunction:
    """Jitted `fn(params, ids, segment_ids, positions, targets) -> [R, T]` log-probs on packed
    rows (forward only, in `micro_batches` passes of R / micro_batches rows under lax.map):
    the reference's, or the old policy's when recomputed."""
    graphdef, abstract = build.abstract_state(model_cfg.replace(remat="none"), mesh)

    def fn(params, *inputs):
        def one(args):
            # The barrier keeps the weight gathers inside the loop (train_step.make_logprob_fn).
            p, args = jax.lax.optimization_barrier((params, args))
            return packed_logprobs(nnx.merge(graphdef, p), *args, temperature=temperature,
                                   chunk=chunk)

        if micro_batches == 1:
            return one(inputs)
        r = inputs[0].shape[0]
        out = jax.lax.map(one, ts._split_micro(inputs, micro_batches))
        return out.swapaxes(0, 1).reshape(r, -1)

    if mesh is None:
        return ts.MeshFunction(jax.jit(fn), None)
    two = batch_sharding(mesh, 2)
    return ts.MeshFunction(jax.jit(fn, in_shardings=(build.shardings_of(abstract),) + (two,) * 4,
                                   out_shardings=two), mesh)


def bucket_rows(needed: int, batch: int, multiple: int) -> int:
    """The packed row count for `needed` rows: a multiple of `multiple` and of about batch / 8,
    so a run's rollouts compile at most ~8 distinct shapes of the packed programs."""
    step = multiple * max(1, -(-batch // (8 * multiple)))
    return -(-needed // step) * step


def plan_batch(prompt_mask, completion_mask, *, row_len: int = 0, multiple: int = 1,
               mesh: Optional[Mesh] = None) -> PackPlan:
    """`pack_plan` of a batch whose masks may be device arrays, rows bucketed (`bucket_rows`).

    One process: the masks ([B, P + C] int32, small beside the forward) come to the host and
    one plan covers every row. Several: each process plans the rows it holds
    (`process_plan`)."""
    if jax.process_count() > 1:
        if mesh is None:
            raise ValueError("grpo.packed on several processes needs the run's mesh")
        return process_plan(prompt_mask, completion_mask, mesh, row_len=row_len,
                            multiple=multiple)
    pm = np.asarray(prompt_mask)
    return pack_plan(pm, np.asarray(completion_mask), row_len=row_len, rows_multiple=multiple,
                     rows=lambda needed: bucket_rows(needed, pm.shape[0], multiple))


def agreed_rows(prompt_mask, completion_mask, row_len: int) -> int:
    """The most packed rows of `row_len` that any process's sequences (its host masks) need,
    a collective every process calls; when one process's sequences do not fit, every process
    raises the ValueError (none is left waiting for the others)."""
    lengths = np.asarray(prompt_mask).sum(1) + np.asarray(completion_mask).sum(1)
    try:
        needed, why = len(first_fit_decreasing(lengths, row_len)), ""
    except ValueError as e:
        needed, why = -1, str(e)
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([needed], np.int32)))
    counts = counts.reshape(-1)
    if (counts < 0).any():
        bad = [int(i) for i in np.nonzero(counts < 0)[0]]
        raise ValueError(f"grpo.packed_row_len={row_len}: {why or 'a sequence does not fit'} "
                         f"(on process(es) {bad})")
    return int(counts.max())


def process_plan(prompt_mask, completion_mask, mesh: Mesh, *, row_len: int = 0,
                 multiple: int = 1) -> PackPlan:
    """The plan of a global batch on several processes: each process packs the rows its
    devices hold (only those masks reach its host) into as many packed rows as every other
    process (the most any needs, bucketed; the rest are empty rows, which carry no loss
    weight), re-indexed into the global batch (`shift_plan`) and put back as its block of
    one global plan. The loss normalisers are computed on the global packed batch inside the
    update, so they count every process's tokens and sequences, as the padded update's do."""
    b, c = prompt_mask.shape[0], completion_mask.shape[1]
    mine = distributed.process_rows(mesh, b)
    blocks = b // (mine.stop - mine.start)  # distinct row blocks (processes holding other rows)
    if multiple % blocks:
        raise ValueError(f"{multiple} packed rows per step (micro-batches x batch shards) do "
                         f"not split over the {blocks} processes' row blocks")
    per = multiple // blocks
    pm = distributed.local_rows(prompt_mask, mesh)
    cm = distributed.local_rows(completion_mask, mesh)
    seq_len = prompt_mask.shape[1] + c
    most = agreed_rows(pm, cm, row_len or seq_len)
    local = pack_plan(pm, cm, row_len=row_len, rows_multiple=per,
                      rows=bucket_rows(most, pm.shape[0], per))
    local = shift_plan(local, mine.start, b, seq_len)
    fields = ("tok_src", "segment_ids", "positions", "loss_src", "seq_of")
    arrays = distributed.global_batch({k: getattr(local, k) for k in fields}, mesh,
                                      global_size=blocks * local.rows)
    return PackPlan(**arrays, batch=b, completion_len=c)


class PackedStep:
    """`step(state, batch) -> (state, metrics)` on a padded TrainBatch, run packed: plan on the
    host, gather on the devices, then `step(state, packed)`, a packed update
    (`make_packed_train_step`, or a LoRA one bound to its base: `lora_train`). Drop-in for the
    padded step in `rollout_updates.rollout_updates`."""

    def __init__(self, step, mesh: Optional[Mesh] = None, *, micro_batches: int = 1,
                 row_len: int = 0):
        self.step, self.mesh, self.row_len = step, mesh, row_len
        self.multiple = micro_batches * (batch_shards(mesh) if mesh is not None else 1)
        self._pack = _pack_program(mesh)

    def __call__(self, state, batch):
        plan = plan_batch(batch.prompt_mask, batch.completion_mask, row_len=self.row_len,
                          multiple=self.multiple, mesh=self.mesh)
        return self.step(state, self._pack(batch, plan))


class PackedLogprobs:
    """`fn(params, prompt_ids, prompt_mask, completion_ids, completion_mask) -> [B, C]` as
    `train_step.make_logprob_fn` gives it, computed on packed rows and unpacked."""

    def __init__(self, model_cfg: ModelConfig, mesh: Optional[Mesh] = None, *,
                 temperature: float = 1.0, chunk: int = 256, row_len: int = 0,
                 micro_batches: int = 1):
        self.fn = make_packed_logprob_fn(model_cfg, mesh, temperature=temperature, chunk=chunk,
                                         micro_batches=micro_batches)
        shards = batch_shards(mesh) if mesh is not None else 1
        self.mesh, self.row_len, self.multiple = mesh, row_len, micro_batches * shards
        rows = batch_sharding(mesh, 2) if mesh is not None else None
        self._inputs = jax.jit(pack_inputs, out_shardings=rows)
        self._unpack = jax.jit(unpack, out_shardings=rows)

    def __call__(self, params, prompt_ids, prompt_mask, completion_ids, completion_mask):
        plan = plan_batch(prompt_mask, completion_mask, row_len=self.row_len,
                          multiple=self.multiple, mesh=self.mesh)
        return self._unpack(self.fn(params, *self._inputs(prompt_ids, completion_ids, plan)),
                            plan)


def _pack_program(mesh: Optional[Mesh]):
    """Jitted `pack(batch, plan)`, its output laid out over the mesh's batch axes."""
    if mesh is None:
        return jax.jit(pack)
    return jax.jit(pack, out_shardings=batch_sharding(mesh, 2))  # a prefix: every field
