"""The SFT update: the mean negative log-likelihood of response tokens, through the GRPO step's
`apply_update` (micro-batch accumulation, clipping + AdamW, NaN/Inf skipping).

The loss of an R1-style cold start (a model taught the reasoning format before RL): prompt
tokens are context only; each response token, and the EOS that closes it, is predicted.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from socialr1_jax.model.logprobs import completion_logprobs
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import OptimConfig
from socialr1_jax.parallel.sharding import batch_sharding
from socialr1_jax.rl.optimizer import make_optimizer


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SFTBatch:
    """Left-padded prompts [B, P] and right-padded responses [B, R] (mask 1 on real tokens)."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    response_ids: jax.Array
    response_mask: jax.Array


# -- the update --------------------------------------------------------------------------------

def sft_loss(model, batch: SFTBatch, num_tokens, *, chunk: int = 256):
    """Sum of -log p(response token) over the batch's real response tokens / `num_tokens`
    (the token count of the whole batch, so micro-batch losses add up to the batch mean)."""
    logp = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                               batch.response_mask, chunk=chunk)
    mask = batch.response_mask.astype(jnp.float32)
    nll = -(logp * mask).sum() / num_tokens
    return nll, {"loss": nll, "tokens": mask.sum()}


def make_sft_step(model_cfg, optim_cfg: OptimConfig, mesh=None, *, micro_batch_size: int = 0,
                  total_updates: int = 1, chunk: int = 256,
                  dropout_seed: int = 0) -> ts.MeshFunction:
    """The jitted, donated update `step(state, batch) -> (state, metrics)` of `sft_loss`, through
    the GRPO step's `apply_update` (micro-batch accumulation, clipping + AdamW, NaN skipping).

    With adapters (`model_cfg.lora`) the state holds them only and the update is
    `step(state, batch, base)` over the frozen base (`lora_train.jit_update`; bind the base
    with `lora_train.LoraStep`); model.lora.dropout > 0 drops their input (`lora.Dropout`,
    keys from `dropout_seed` and the update counter)."""
    from socialr1_jax.model import build, lora as lora_mod
    from socialr1_jax.rl import lora_train

    lora = model_cfg.lora is not None
    if lora:
        graphdef = build.abstract_lora_parts(model_cfg, mesh)[0]
    else:
        graphdef, abstract_params = build.abstract_state(model_cfg, mesh)
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)
    ts.check_micro_batch(micro_batch_size, mesh, "sft.micro_batch_size")
    drop = lora_mod.dropout_of(model_cfg, dropout_seed)

    def step(state: ts.TrainState, batch: SFTBatch, *base):
        # the token count of the whole batch, so the micro-batch losses add up to its mean
        tokens = jnp.maximum(batch.response_mask.sum(), 1).astype(jnp.float32)

        def loss_fn(p, mb):
            params = lora_train.full_params(base[0], p) if lora else p
            return sft_loss(nnx.merge(graphdef, params), mb, tokens, chunk=chunk)

        if drop is not None:  # the adapters' input dropped (model.lora.dropout)
            batch, loss_fn = drop.wrap(state.step, batch, loss_fn)
        return ts.apply_update(state, batch, loss_fn, optimizer, schedule,
                               micro_batch_size=micro_batch_size,
                               compute_dtype=model_cfg.jnp_param_dtype)

    if lora:
        rows = None if mesh is None else SFTBatch(*[batch_sharding(mesh, 2)] * 4)
        return lora_train.jit_update(step, model_cfg, optim_cfg, mesh, rows,
                                     total_updates=total_updates)
    return ts.jit_update(step, mesh, abstract_params, optim_cfg, SFTBatch,
                         total_updates=total_updates)
