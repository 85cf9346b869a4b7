"""Several GRPO updates per rollout: the rollout's sequences in mini-batches, over epochs.

API
---
rollout_updates(step, state, batch, *, mini_batch_size, epochs, shuffle, seed, mesh)
    -> (state, [metrics per update]): one `step` (train_step.make_train_step's, or any with its
    call) per mini-batch, all with the rollout's old log-probs.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh

from socialr1_jax.rl.train_step import (MeshFunction, TrainBatch, TrainState, batch_shardings,
                                        put_batch)


@functools.lru_cache(maxsize=None)
def _take_program(mesh: Optional[Mesh]):
    """Jitted `take(batch, rows) -> batch[rows]`, the result laid out for the train step: a
    mini-batch is gathered on the devices, never through the host."""
    def take(batch, idx):
        return jax.tree.map(lambda x: x[idx], batch)

    if mesh is None:
        return jax.jit(take)
    return jax.jit(take, out_shardings=batch_shardings(mesh))


def rollout_updates(step: MeshFunction, state: TrainState, batch: TrainBatch, *,
                    mini_batch_size: int = 0, epochs: int = 1, shuffle: bool = True,
                    seed: int = 0, mesh: Optional[Mesh] = None):
    """`epochs` passes over the rollout in mini-batches of `mini_batch_size` sequences, one
    update each, all with the rollout's old log-probs. Returns (state, [metrics per update]).

    The batch may be host or device arrays; mini-batches are gathered on the devices (the row
    order is the only host value: the same on every process, from `seed`).
    """
    n = batch.size
    mbs = mini_batch_size or n
    if n % mbs:
        raise ValueError(f"mini_batch_size={mbs} does not divide the rollout of {n} sequences")
    rng = np.random.default_rng(seed)
    history = []
    batch = put_batch(batch, mesh)
    take = _take_program(mesh)
    for _ in range(epochs):
        if mbs == n:
            parts = [batch]  # one update: the order of rows does not change the loss
        else:
            order = rng.permutation(n) if shuffle else np.arange(n)
            parts = [take(batch, np.asarray(order[k:k + mbs], np.int32))
                     for k in range(0, n, mbs)]
        for part in parts:
            state, metrics = step(state, part)
            history.append(metrics)
    return state, history
