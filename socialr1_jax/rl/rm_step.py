"""The reward model's update: the Bradley-Terry pairwise loss (as in Ouyang et al. 2022,
InstructGPT), through the GRPO step's `apply_update` (micro-batch accumulation, clipping +
AdamW, NaN/Inf skipping).

    loss = mean over pairs of -log sigmoid(r_c - r_r)  ( = softplus(r_r - r_c) )
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model.reward_model import RewardModel
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
