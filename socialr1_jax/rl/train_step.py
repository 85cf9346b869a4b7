"""The GRPO update: one jitted, sharded, donated step over a `TrainState`.

API
---
TrainState (a pytree): params (nnx.State in the model's param_dtype: what sampling and the
    forward use), master (fp32 nnx.State copy when param_dtype is lower precision, else None),
    opt_state (optax AdamW state over the master/fp32 weights, sharded like the parameters),
    step (updates applied), skipped (updates skipped for NaN/Inf), consecutive_skips.
TrainBatch (a pytree of [B, ...] arrays): prompt_ids/prompt_mask [B, P] (left-padded),
    completion_ids/completion_mask [B, C], old_logp/ref_logp [B, C] fp32, advantages [B] fp32.

init_train_state(params, optim_cfg, mesh, total_updates) -> TrainState (created in its shardings)
abstract_train_state(model_cfg, optim_cfg, mesh, total_updates) -> TrainState of
    ShapeDtypeStruct carrying shardings (nothing allocated); abstract_state_of(params, ...) the
    same around any module's parameters (the reward model's)
abstract_batch(batch, prompt_len, completion_len, mesh) -> TrainBatch of ShapeDtypeStruct
make_train_step(model_cfg, optim_cfg, grpo_cfg, mesh, ...) -> step (jitted `grpo_update`);
    `step(state, batch) -> (state, metrics)` applies ONE optimizer update over the batch
    (micro-batches accumulated inside), state donated; `step.lower(...)` compiles abstractly.
apply_update(state, batch, loss_fn, optimizer, schedule, ...) -> (state, metrics): the update
    itself (accumulation, clipping + AdamW, NaN skipping) for any loss; jit_step(step, mesh, ...)
    jits such a step with its shardings (the reward-model trainer builds its step from both).
make_logprob_fn(model_cfg, mesh, *, temperature, chunk, micro_batch_size) -> fn;
    `fn(params, prompt_ids, prompt_mask, completion_ids, completion_mask) -> logp [B, C]`: the
    reference model's forward (or the old policy's when recomputed), `.lower(...)` too.
put_batch(batch, mesh) -> TrainBatch placed in its shardings. Several updates per rollout
    (mini-batches x epochs): rollout_updates.rollout_updates.

Inside one update, the loss of micro-batch k is normalised by the counts of the whole batch
(grpo.batch_normalisers), so the summed gradients equal the gradient of the one-batch loss.
A non-finite loss or gradient norm leaves params, master and optimizer state unchanged (a
`lax.cond` inside the program skips the optimizer) and counts the skip; the trainer stops after N
consecutive skips. policy_loss(...) is the differentiated function (tests check its gradient);
head_remat(...) decides whether the LM head's logits are recomputed in the backward pass
(GRPOConfig.head_remat; 'auto' keeps them when a micro-batch's fit in 1 GiB per device).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from socialr1_jax.rl import grpo
from socialr1_jax.model.config import ModelConfig, parse_dtype
from socialr1_jax.model import build
from socialr1_jax.model.logprobs import completion_logprobs
from socialr1_jax.parallel.sharding import (BATCH, batch_sharding, batch_shards, constrain,
                                            param_shardings)
from socialr1_jax.rl.optimizer import make_optimizer
from socialr1_jax.rl.config import GRPOConfig, OptimConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything one update reads and replaces (donated as a whole)."""

    params: Any
    master: Optional[Any]
    opt_state: Any
    step: jax.Array
    skipped: jax.Array
    consecutive_skips: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainBatch:
    """One mini-batch of rollout sequences, already scored."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    completion_ids: jax.Array
    completion_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    advantages: jax.Array

    @property
    def size(self) -> int:
        return self.completion_ids.shape[0]

    def take(self, idx) -> "TrainBatch":
        """The rows `idx` (host indices) of every field."""
        return jax.tree.map(lambda x: x[idx], self)


# -- optimizer ---------------------------------------------------------------------------------

def _needs_master(param_dtype, optim_cfg: OptimConfig) -> bool:
    return jnp.dtype(param_dtype) != jnp.dtype(parse_dtype(optim_cfg.master_dtype))


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


# -- state -------------------------------------------------------------------------------------

def _replicated(mesh):
    return NamedSharding(mesh, P())


def state_shardings(abstract_state: TrainState, optimizer, mesh: Optional[Mesh]):
    """Shardings of a TrainState: params, master and optimizer moments by PARAM_RULES, scalars
    replicated. None without a mesh."""
    if mesh is None:
        return None
    pshard = param_shardings(abstract_state.params, mesh)
    rep = _replicated(mesh)
    oshard = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state.opt_state, pshard,
                                   transform_non_params=lambda _: rep)
    return TrainState(params=pshard, master=None if abstract_state.master is None else pshard,
                      opt_state=oshard, step=rep, skipped=rep, consecutive_skips=rep)


def _new_state(params, optim_cfg: OptimConfig, optimizer) -> TrainState:
    pdt = jax.tree.leaves(params)[0].dtype
    master = _cast(params, parse_dtype(optim_cfg.master_dtype)) if _needs_master(pdt, optim_cfg) else None
    trainable = master if master is not None else params
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params=params, master=master, opt_state=optimizer.init(trainable),
                      step=zero, skipped=zero, consecutive_skips=zero)


def init_train_state(params, optim_cfg: OptimConfig, mesh: Optional[Mesh] = None, *,
                     total_updates: int = 1) -> TrainState:
    """A fresh TrainState around `params` (an nnx.State), every part created in its sharding.

    `params` is copied, never aliased: the returned state can be donated while the caller keeps
    using `params` (e.g. as the frozen reference).
    """
    optimizer, _ = make_optimizer(optim_cfg, total_updates)
    shardings = train_state_shardings(params, optim_cfg, mesh, total_updates=total_updates)

    def fresh(p):
        return _new_state(jax.tree.map(jnp.copy, p), optim_cfg, optimizer)

    return jax.jit(fresh, out_shardings=shardings)(params)


def abstract_train_state(model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Optional[Mesh],
                         *, total_updates: int = 1) -> TrainState:
    """The TrainState of `model_cfg` as ShapeDtypeStruct leaves with their shardings."""
    _, abstract_params = build.abstract_state(model_cfg, mesh)
    return abstract_state_of(abstract_params, optim_cfg, mesh, total_updates=total_updates)


def abstract_state_of(params, optim_cfg: OptimConfig, mesh: Optional[Mesh], *,
                      total_updates: int = 1) -> TrainState:
    """The TrainState around `params` (an nnx.State of arrays or ShapeDtypeStructs, of any
    module) as ShapeDtypeStruct leaves with their shardings on `mesh` (nothing allocated)."""
    optimizer, _ = make_optimizer(optim_cfg, total_updates)
    abstract = jax.eval_shape(lambda p: _new_state(p, optim_cfg, optimizer), params)
    shardings = state_shardings(abstract, optimizer, mesh)
    if shardings is None:
        return abstract
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def train_state_shardings(params, optim_cfg: OptimConfig, mesh: Optional[Mesh], *,
                          total_updates: int = 1):
    """The shardings of the TrainState around `params` on `mesh` (None without a mesh)."""
    if mesh is None:
        return None
    return build.shardings_of(abstract_state_of(params, optim_cfg, mesh,
                                                total_updates=total_updates))


def batch_shardings(mesh: Optional[Mesh]):
    """TrainBatch of shardings: every field split over the batch axis."""
    if mesh is None:
        return None
    two, one = batch_sharding(mesh, 2), batch_sharding(mesh, 1)
    return TrainBatch(two, two, two, two, two, two, one)


def abstract_batch(batch: int, prompt_len: int, completion_len: int,
                   mesh: Optional[Mesh] = None) -> TrainBatch:
    """A TrainBatch of ShapeDtypeStruct (for `.lower`)."""
    sh = batch_shardings(mesh) or TrainBatch(*([None] * 7))

    def sds(shape, dtype, s):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    bp, bc = (batch, prompt_len), (batch, completion_len)
    return TrainBatch(sds(bp, jnp.int32, sh.prompt_ids), sds(bp, jnp.int32, sh.prompt_mask),
                      sds(bc, jnp.int32, sh.completion_ids), sds(bc, jnp.int32, sh.completion_mask),
                      sds(bc, jnp.float32, sh.old_logp), sds(bc, jnp.float32, sh.ref_logp),
                      sds((batch,), jnp.float32, sh.advantages))


# -- the step ----------------------------------------------------------------------------------

class MeshFunction:
    """A jitted function that is traced, lowered and run inside `jax.set_mesh(mesh)`, so the
    model's sharding constraints see the mesh."""

    def __init__(self, jitted, mesh: Optional[Mesh]):
        self.jitted, self.mesh = jitted, mesh

    def _ctx(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def __call__(self, *args):
        with self._ctx():
            return self.jitted(*args)

    def lower(self, *args):
        with self._ctx():
            return self.jitted.lower(*args)


def _split_micro(tree, n: int):
    """[B, ...] -> [n, B/n, ...]; micro-batch k takes rows k, k+n, k+2n, ... so each device's
    contiguous block of the batch feeds every micro-batch (no resharding)."""
    def one(x):
        b = x.shape[0]
        y = x.reshape(b // n, n, *x.shape[1:]).swapaxes(0, 1)
        return constrain(y, P(None, BATCH, *([None] * (x.ndim - 1))))
    return jax.tree.map(one, tree)


HEAD_REMAT_BYTES = 1 << 30  # grpo.head_remat='auto': keep a micro-batch's logits up to this


def head_remat(grpo_cfg: GRPOConfig, rows: int, completion_len: int, vocab: int,
               shards: int = 1) -> bool:
    """Whether the update recomputes the LM head's logits in its backward pass (see
    GRPOConfig.head_remat); `rows` sequences of a micro-batch split over `shards` devices."""
    if grpo_cfg.head_remat != "auto":
        return grpo_cfg.head_remat == "always"
    per_device = -(-rows // shards) * completion_len * vocab * 4
    return per_device > HEAD_REMAT_BYTES


def policy_loss(graphdef, params, batch: TrainBatch, grpo_cfg: GRPOConfig, *,
                temperature: float, normalisers=None, remat_head=True):
    """GRPO loss (and metrics) of `batch` under the policy with `params` (in the model's dtype:
    `apply_update` casts a master copy before calling it).

    normalisers: (num_tokens, num_seqs, scale) of the whole batch when `batch` is a micro-batch.
    remat_head: recompute the head's logits in the backward pass (less memory, one more matmul).
    """
    model = nnx.merge(graphdef, params)
    out = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                              batch.completion_mask, temperature=temperature,
                              chunk=grpo_cfg.logprob_chunk, with_entropy=grpo_cfg.compute_entropy,
                              remat=remat_head)
    logp, entropy = out if grpo_cfg.compute_entropy else (out, None)
    if normalisers is None:
        normalisers = grpo.batch_normalisers(batch.completion_mask, grpo_cfg.agg,
                                             grpo_cfg.loss_scale_factor or None)
    num_tokens, num_seqs, scale = normalisers
    return grpo.loss(logp, batch.old_logp, batch.ref_logp, batch.advantages,
                     batch.completion_mask, beta=grpo_cfg.beta, kl=grpo_cfg.kl,
                     eps_low=grpo_cfg.eps_low, eps_high=grpo_cfg.eps_high,
                     dual_clip=grpo_cfg.dual_clip or None, agg=grpo_cfg.agg, entropy=entropy,
                     num_tokens=num_tokens, num_seqs=num_seqs, loss_scale_factor=scale)


def apply_update(state: TrainState, batch, loss_fn, optimizer, schedule, *,
                 micro_batch_size: int = 0, compute_dtype=None):
    """ONE optimizer update of `state` from `batch` (traced inside a jitted step): gradients
    of `loss_fn` summed over micro-batches, AdamW with clipping (`optimizer`), the update
    skipped when the loss or the gradient norm is not finite. Returns (new state, metrics).

    loss_fn(params, micro_batch) -> (loss, metrics): params in the model's dtype; each
    micro-batch's loss and metrics normalised by the WHOLE batch's counts, so their sums are the
    batch's. With a master copy the gradients are taken in its dtype through a cast to
    `compute_dtype` (the params' dtype). micro_batch_size: rows per forward/backward (0 = all).
    """
    b = jax.tree.leaves(batch)[0].shape[0]
    mbs = micro_batch_size or b
    if b % mbs:
        raise ValueError(f"micro_batch_size={mbs} does not divide the batch of {b}")
    n_micro = b // mbs
    master = state.master is not None
    trainable = state.master if master else state.params

    def train_loss(p, mb):
        return loss_fn(_cast(p, compute_dtype) if master else p, mb)

    grad_fn = jax.value_and_grad(train_loss, has_aux=True)
    if n_micro == 1:
        (_, metrics), grads = grad_fn(trainable, batch)
    else:
        def body(acc, mb):
            # Without the barrier XLA hoists every layer's FSDP all-gather out of the loop
            # and keeps a whole gathered copy of the model alive (measured: 44 -> 29 GB per
            # device in the 4B memory plan).
            tp, mb = jax.lax.optimization_barrier((trainable, mb))
            (_, m), g = grad_fn(tp, mb)
            return jax.tree.map(jnp.add, acc, (g, m)), None

        zero_g = jax.tree.map(jnp.zeros_like, trainable)
        _, m_shape = jax.eval_shape(train_loss, trainable, jax.tree.map(lambda x: x[:mbs], batch))
        zero_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
        (grads, metrics), _ = jax.lax.scan(body, (zero_g, zero_m), _split_micro(batch, n_micro))

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

    def apply(operands):
        trainable, opt_state, grads = operands
        updates, new_opt = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), new_opt

    def skip_update(operands):
        trainable, opt_state, _ = operands
        return trainable, opt_state

    # A branch, not a select: a skipped update costs nothing and the kept buffers alias the
    # donated ones (a per-leaf jnp.where would read and write every array twice more).
    new_trainable, new_opt = jax.lax.cond(ok, apply, skip_update,
                                          (trainable, state.opt_state, grads))
    if master:
        new_state = dataclasses.replace(state, master=new_trainable,
                                        params=_cast(new_trainable, compute_dtype))
    else:
        new_state = dataclasses.replace(state, params=new_trainable)
    skip = (~ok).astype(jnp.int32)
    new_state = dataclasses.replace(
        new_state, opt_state=new_opt, step=state.step + (1 - skip),
        skipped=state.skipped + skip, consecutive_skips=(state.consecutive_skips + 1) * skip)
    metrics = dict(metrics)
    metrics.update(grad_norm=grad_norm, lr=jnp.asarray(schedule(state.step), jnp.float32),
                   skipped=skip)
    return new_state, metrics


def jit_step(step, mesh: Optional[Mesh], state_sh=None, batch_sh=None) -> MeshFunction:
    """`step(state, batch) -> (state, metrics)` jitted with the state donated; on a mesh with the
    state's and the batch's shardings in, the state's and replicated metrics out."""
    if mesh is None:
        return MeshFunction(jax.jit(step, donate_argnums=0), None)
    return MeshFunction(jax.jit(step, donate_argnums=0, in_shardings=(state_sh, batch_sh),
                                out_shardings=(state_sh, _replicated(mesh))), mesh)


def jit_update(step, mesh: Optional[Mesh], params, optim_cfg: OptimConfig, batch_type, *,
               total_updates: int = 1) -> MeshFunction:
    """`jit_step` for an update over a TrainState around `params` whose batch (a dataclass of
    `batch_type`) holds only [rows, T] arrays, each split by rows over the mesh's batch axes."""
    if mesh is None:
        return jit_step(step, None)
    state_sh = train_state_shardings(params, optim_cfg, mesh, total_updates=total_updates)
    rows = batch_sharding(mesh, 2)
    return jit_step(step, mesh, state_sh,
                    batch_type(*([rows] * len(dataclasses.fields(batch_type)))))


def check_micro_batch(micro_batch_size: int, mesh: Optional[Mesh], key: str) -> None:
    """ValueError naming `key` unless the micro-batch splits evenly over the mesh's batch shards."""
    shards = batch_shards(mesh) if mesh is not None else 1
    if micro_batch_size and micro_batch_size % shards:
        raise ValueError(f"{key}={micro_batch_size} is not a multiple of the "
                         f"{shards} batch shards of the mesh")


def grpo_update(graphdef, model_cfg: ModelConfig, optim_cfg: OptimConfig, grpo_cfg: GRPOConfig,
                mesh: Optional[Mesh] = None, *, temperature: float = 1.0,
                micro_batch_size: int = 0, total_updates: int = 1,
                params_of: Callable = lambda p: p, dropout=None):
    """The un-jitted `step(state, batch, *extra)`: `policy_loss` under the model params
    `params_of(trained, *extra)` (LoRA: base + adapters) through `apply_update`. micro_batch_size:
    sequences per forward/backward (0 = the batch; a multiple of the mesh's batch shards).
    dropout: a LoRA run's `lora.Dropout` (model.lora.dropout > 0), else None."""
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)
    master = _needs_master(model_cfg.jnp_param_dtype, optim_cfg)
    compute_dtype = model_cfg.jnp_param_dtype if master else None
    shards = batch_shards(mesh) if mesh is not None else 1
    check_micro_batch(micro_batch_size, mesh, "grpo.micro_batch_size")

    def step(state: TrainState, batch: TrainBatch, *extra):
        mbs = micro_batch_size or batch.size
        norms = grpo.batch_normalisers(batch.completion_mask, grpo_cfg.agg,
                                       grpo_cfg.loss_scale_factor or None)
        remat_head = head_remat(grpo_cfg, mbs, batch.completion_ids.shape[1],
                                model_cfg.vocab_size, shards)

        def loss_fn(p, mb):
            return policy_loss(graphdef, params_of(p, *extra), mb, grpo_cfg,
                               temperature=temperature, normalisers=norms, remat_head=remat_head)

        rows, loss = (batch, loss_fn) if dropout is None else dropout.wrap(state.step, batch,
                                                                           loss_fn)
        new_state, metrics = apply_update(state, rows, loss, optimizer, schedule,
                                          micro_batch_size=micro_batch_size,
                                          compute_dtype=compute_dtype)
        adv = batch.advantages.astype(jnp.float32)
        metrics.update(adv_mean=adv.mean(), adv_std=adv.std(), adv_min=adv.min(),
                       adv_max=adv.max())
        return new_state, metrics

    return step


def make_train_step(model_cfg: ModelConfig, optim_cfg: OptimConfig, grpo_cfg: GRPOConfig,
                    mesh: Optional[Mesh] = None, *, temperature: float = 1.0,
                    micro_batch_size: int = 0, total_updates: int = 1) -> MeshFunction:
    """The jitted update `step(state, batch) -> (state, metrics)`; see the module docstring."""
    graphdef, abstract_params = build.abstract_state(model_cfg, mesh)
    step = grpo_update(graphdef, model_cfg, optim_cfg, grpo_cfg, mesh, temperature=temperature,
                       micro_batch_size=micro_batch_size, total_updates=total_updates)
    st_sh = train_state_shardings(abstract_params, optim_cfg, mesh, total_updates=total_updates)
    return jit_step(step, mesh, st_sh, batch_shardings(mesh))


def make_logprob_fn(model_cfg: ModelConfig, mesh: Optional[Mesh] = None, *,
                    temperature: float = 1.0, chunk: int = 256,
                    micro_batch_size: int = 0) -> MeshFunction:
    """Jitted `fn(params, prompt_ids, prompt_mask, completion_ids, completion_mask) -> [B, C]`
    log-probs at `temperature` (forward only, micro-batched with lax.map when asked).
    Rematerialisation is switched off: without a backward pass it saves nothing."""
    graphdef, abstract = build.abstract_state(model_cfg.replace(remat="none"), mesh)

    def fn(params, prompt_ids, prompt_mask, completion_ids, completion_mask):
        inputs = (prompt_ids, prompt_mask, completion_ids, completion_mask)

        def one(args):
            # Merged inside the mapped function: nnx modules must not cross trace levels. The
            # barrier keeps the weight gathers inside the loop (see make_train_step).
            p, args = jax.lax.optimization_barrier((params, args))
            model = nnx.merge(graphdef, p)
            return completion_logprobs(model, *args, temperature=temperature, chunk=chunk)

        b = completion_ids.shape[0]
        if not micro_batch_size or micro_batch_size >= b:
            return one(inputs)
        if b % micro_batch_size:
            raise ValueError(f"micro_batch_size={micro_batch_size} does not divide {b}")
        n = b // micro_batch_size
        out = jax.lax.map(one, _split_micro(inputs, n))  # [n, B/n, C]
        return out.swapaxes(0, 1).reshape(b, -1)

    if mesh is None:
        return MeshFunction(jax.jit(fn), None)
    two = batch_sharding(mesh, 2)
    in_shardings = (build.shardings_of(abstract), two, two, two, two)
    return MeshFunction(jax.jit(fn, in_shardings=in_shardings, out_shardings=two), mesh)


# -- batches ------------------------------------------------------------------------------------

def put_batch(batch: TrainBatch, mesh: Optional[Mesh]) -> TrainBatch:
    """Place a batch (host or device arrays) in its shardings."""
    sh = batch_shardings(mesh)
    if sh is None:
        return jax.tree.map(jnp.asarray, batch)
    return jax.tree.map(jax.device_put, batch, sh)
