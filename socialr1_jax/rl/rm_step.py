"""The reward model's update: the Bradley-Terry pairwise loss (as in Ouyang et al. 2022,
InstructGPT), through the GRPO step's `apply_update` (micro-batch accumulation, clipping +
AdamW, NaN/Inf skipping).

    loss = mean over pairs of -log sigmoid(r_c - r_r)  ( = softplus(r_r - r_c) )

A reward model with LoRA adapters (`reward_model.with_lora`) trains its adapters and its whole
head only (PEFT's `modules_to_save=["score"]`): the TrainState holds that part, and the frozen
rest of the backbone is bound to the step (`lora_train.LoraStep`), never donated.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model import lora
from socialr1_jax.model.reward_model import RewardModel, split_lora
from socialr1_jax.parallel.sharding import batch_sharding
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.optimizer import make_optimizer


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


def _update(graphdef, optim_cfg, *, compute_dtype, micro_batch_size: int, total_updates: int,
            params_of=lambda p: p, dropout=None):
    """The un-jitted `step(state, batch, *extra)`: `pair_loss` under the model parameters
    `params_of(trained, *extra)` through `apply_update`. dropout: a LoRA model's
    `lora.Dropout` (each pair's chosen and rejected rows share their row's keys)."""
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)

    def step(state: ts.TrainState, batch: PairBatch, *extra):
        num_pairs = batch.chosen_ids.shape[0]

        def loss_fn(p, mb):
            return pair_loss(nnx.merge(graphdef, params_of(p, *extra)), mb, num_pairs)

        rows, loss = (batch, loss_fn) if dropout is None else dropout.wrap(state.step, batch,
                                                                           loss_fn)
        return ts.apply_update(state, rows, loss, optimizer, schedule,
                               micro_batch_size=micro_batch_size, compute_dtype=compute_dtype)

    return step


def make_rm_step(model: RewardModel, optim_cfg, mesh: Optional[Mesh], *,
                 micro_batch_size: int = 0, total_updates: int = 1, dropout_seed: int = 0):
    """The jitted, donated update `step(state, batch) -> (state, metrics)`: `pair_loss` through
    the GRPO step's `apply_update` (micro-batch accumulation, clipping + AdamW, NaN skipping).

    The TrainState's params are `model`'s whole state, or, for a model with adapters
    (model.cfg.lora), its trainable part (`split_lora`: adapters + head), the rest bound to the
    step as the frozen base. model.lora.dropout > 0 drops the adapters' input in this step
    only (keys from `dropout_seed` and the update count)."""
    ts.check_micro_batch(micro_batch_size, mesh, "run.micro_batch_size")
    kw = {"micro_batch_size": micro_batch_size, "total_updates": total_updates}
    if model.cfg.lora is None:
        graphdef, params = nnx.split(model)
        # The master copy's cast, if one is kept: the params' own dtype.
        step = _update(graphdef, optim_cfg, compute_dtype=jax.tree.leaves(params)[0].dtype, **kw)
        return ts.jit_update(step, mesh, params, optim_cfg, PairBatch,
                             total_updates=total_updates)
    graphdef, base, trainable = split_lora(model)
    step = _update(graphdef, optim_cfg, compute_dtype=jax.tree.leaves(trainable)[0].dtype,
                   params_of=lambda p, b: nnx.merge_state(b, p),
                   dropout=lora.dropout_of(model.cfg, dropout_seed), **kw)
    rows = None if mesh is None else batch_sharding(mesh, 2)
    batch_sh = None if mesh is None else PairBatch(*[rows] * 4)
    fn = lora_train.jit_frozen(step, trainable, base, optim_cfg, mesh, batch_sh,
                               total_updates=total_updates)
    return lora_train.LoraStep(fn, base)
