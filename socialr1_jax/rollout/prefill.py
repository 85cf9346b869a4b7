"""Writing prompts into a KV cache, shared by the static and the refill sampler.

`pin_cache` lays the cache out over the mesh (rows over the batch shards, KV heads over
'tensor'); `prefill` runs a prompt through the model `chunk` tokens per forward pass.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from socialr1_jax.model.qwen3 import KVCache
from socialr1_jax.parallel.sharding import CACHE_BKSH, CACHE_LBKSH, constrain, TOKENS_BT


def pin_cache(cache: KVCache) -> KVCache:
    """The cache with its rows over the batch shards and KV heads over 'tensor'."""
    if cache.per_layer:
        pin = lambda kv: tuple(constrain(a, CACHE_BKSH) for a in kv)  # noqa: E731
    else:
        pin = partial(constrain, spec=CACHE_LBKSH)
    return dataclasses.replace(cache, k_lbksh=pin(cache.k_lbksh), v_lbksh=pin(cache.v_lbksh),
                               valid_bs=constrain(cache.valid_bs, TOKENS_BT))


def prefill(model, prompt_ids, prompt_mask, cache, chunk: int, layers=None):
    """Write the prompts into the cache `chunk` tokens per forward pass; last hidden [B, D].

    Chunking bounds the attention scores to [B, heads, chunk, S] however long the prompt.
    layers: per-layer weights (with a per-layer cache), as in the decode loop.
    """
    b, p = prompt_ids.shape
    forward = partial(model.hidden_states, layer_weights=layers)
    if chunk >= p:
        hidden, cache = forward(prompt_ids, prompt_mask, cache=cache)
        return hidden[:, -1], cache
    ids_cbt = prompt_ids.reshape(b, p // chunk, chunk).swapaxes(0, 1)
    mask_cbt = prompt_mask.reshape(b, p // chunk, chunk).swapaxes(0, 1)

    def one(carry, xs):
        cache, _ = carry
        hidden, cache = forward(xs[0], xs[1], cache=cache)
        return (cache, hidden[:, -1]), None

    h0 = jnp.zeros((b, model.cfg.hidden_size), model.cfg.jnp_dtype)
    (cache, last), _ = jax.lax.scan(one, (cache, h0), (ids_cbt, mask_cbt))
    return last, cache


def prefill_prompts(model, ids, mask, *, slots: int, chunk: int, layers=None, group: int = 1):
    """(last hidden [rows, D], a cache of `slots` slots holding the prompts) for left-padded rows.

    layers: the per-layer weights of the decode loop (`Qwen3.unstacked_layers`), which then gets
    a per-layer cache. A prompt within one chunk is one scan over the stacked layers (one layer
    in the program) whose keys and values become the per-layer cache; a longer one is prefilled
    chunk by chunk over `layers`. group > 1: rows i*g .. i*g+g-1 share a prompt, which is run
    once and its cache copied g times.
    """
    if group > 1:
        last_bd, small = prefill_prompts(model, ids[::group], mask[::group], slots=slots,
                                         chunk=chunk, layers=layers)
        return jnp.repeat(last_bd, group, axis=0), pin_cache(small.repeat_rows(group))
    p = ids.shape[1]
    if layers is not None and chunk >= p:
        hidden, cache = model.hidden_states(ids, mask, prompt_cache_slots=slots)
        return hidden[:, -1], pin_cache(cache)
    cache = KVCache.zeros(model.cfg, ids.shape[0], slots)
    cache = pin_cache(cache.unstacked() if layers is not None else cache)
    return prefill(model, ids, mask, cache, chunk, layers)
