"""The KV cache of the Qwen3 forward (`model/qwen3.py`): every layer's keys and values, which
slots hold real tokens, and the attention mask a cached chunk sees."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from socialr1_jax.model.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer for `S` slots, and which slots hold real tokens.

    k_lbksh, v_lbksh: [L, B, K, S, H], heads before slots so a decode step's attention reads each
    head's keys contiguously; or, in the sampler's decode loop (`unstacked()`), a tuple of L
    arrays [B, K, S, H], one per layer. `valid_bs` marks slots written with a non-pad token;
    `index` is the next slot to write (all rows advance together), or [B] int32, one per row
    (the refill sampler, whose rows hold sequences at different steps; one token per row per
    call); `next_pos_b` is each row's next RoPE position (its count of real tokens so far).
    """

    k_lbksh: jax.Array
    v_lbksh: jax.Array
    valid_bs: jax.Array
    index: jax.Array
    next_pos_b: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype=None) -> "KVCache":
        """An empty cache; under jit with out_shardings it is created already sharded."""
        dtype = dtype or cfg.jnp_dtype
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, slots, cfg.head_dim)
        return cls(k_lbksh=jnp.zeros(shape, dtype), v_lbksh=jnp.zeros(shape, dtype),
                   valid_bs=jnp.zeros((batch, slots), jnp.bool_),
                   index=jnp.zeros((), jnp.int32), next_pos_b=jnp.zeros((batch,), jnp.int32))

    @property
    def slots(self) -> int:
        return self.valid_bs.shape[1]

    @property
    def per_layer(self) -> bool:
        """Whether keys and values are one array per layer (`unstacked()`) rather than stacked."""
        return isinstance(self.k_lbksh, tuple)

    def unstacked(self) -> "KVCache":
        """The same cache with one [B, K, S, H] array per layer (a copy of the keys and values).

        A loop that carries the stacked cache and writes one layer's slot after another was
        compiled by XLA:CPU with a copy of the whole cache after every layer's write (the next
        layer's read of its slice was fused with a duplicate of the write): 2L copies of the
        cache per decode step, which took the bench model's B=8 step from 40.8 to 53.9 ms
        (benchmarks/results/sampler_b8_per_layer_cache.md, decode_copies.md). Each layer's own
        buffer is updated in place.
        """
        if self.per_layer:
            return self
        n_l = self.k_lbksh.shape[0]
        return dataclasses.replace(self, k_lbksh=tuple(self.k_lbksh[i] for i in range(n_l)),
                                   v_lbksh=tuple(self.v_lbksh[i] for i in range(n_l)))

    @classmethod
    def from_prompt(cls, k_lbkth, v_lbkth, mask_bt, slots: int) -> "KVCache":
        """A per-layer cache of `slots` slots whose first T hold a prompt's keys and values.

        k_lbkth, v_lbkth: [L, B, K, T, H], every layer's keys and values of the prompt as a
        scanned forward returns them (`Qwen3.hidden_states(..., prompt_cache_slots=)`);
        mask_bt: the prompt's attention mask. Each layer's array is padded to `slots` on its own.
        """
        t = mask_bt.shape[1]
        pad = ((0, 0), (0, 0), (0, slots - t), (0, 0))
        n_l = k_lbkth.shape[0]
        mask_bt = mask_bt.astype(jnp.bool_)
        return cls(k_lbksh=tuple(jnp.pad(k_lbkth[i], pad) for i in range(n_l)),
                   v_lbksh=tuple(jnp.pad(v_lbkth[i], pad) for i in range(n_l)),
                   valid_bs=jnp.pad(mask_bt, ((0, 0), (0, slots - t))),
                   index=jnp.asarray(t, jnp.int32),
                   next_pos_b=mask_bt.sum(axis=1).astype(jnp.int32))

    def repeat_rows(self, n: int) -> "KVCache":
        """Every row n times (rows i*n .. i*n+n-1 copy row i); the shared index is kept."""
        rep = partial(jnp.repeat, repeats=n)
        if self.per_layer:
            k, v = (tuple(rep(a, axis=0) for a in x) for x in (self.k_lbksh, self.v_lbksh))
        else:
            k, v = rep(self.k_lbksh, axis=1), rep(self.v_lbksh, axis=1)
        return KVCache(k_lbksh=k, v_lbksh=v, valid_bs=rep(self.valid_bs, axis=0),
                       index=self.index, next_pos_b=rep(self.next_pos_b, axis=0))



def cache_masks(cache: KVCache, mask_bt):
    """(valid_bs after writing the chunk at cache.index, mask_bts: query t may attend slot s).

    A per-row index [B] (the refill sampler) writes one token per row, row b at slot index[b].
    """
    index, slot_s = cache.index, jnp.arange(cache.slots)
    if index.ndim == 1:
        if mask_bt.shape[1] != 1:
            raise ValueError("a per-row cache index takes one token per row")
        valid_bs = cache.valid_bs.at[jnp.arange(mask_bt.shape[0]), index].set(mask_bt[:, 0])
        return valid_bs, (slot_s[None, :] <= index[:, None])[:, None, :] & valid_bs[:, None, :]
    valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt, (0, index))
    query_slot_t = index + jnp.arange(mask_bt.shape[1])
    return valid_bs, (slot_s[None, :] <= query_slot_t[:, None])[None] & valid_bs[:, None, :]
