"""The Qwen3 dense decoder in Flax NNX, its layers stacked and scanned.

Weights keep Hugging Face's [out, in] layout, only reshaped (never transposed) so heads are an
axis, and every layer's copy of a weight is stacked on a leading layer axis: q_proj [N*H, D] of
layer i is `layers.q_lnhd[i]` [N, H, D]. Conversion to and from safetensors is then a rename, a
free reshape and a layer index (`checkpoint/hf_layout.py` is the one table), and XLA contracts
the trailing `d` directly.

The forward pass is one `lax.scan` over the stacked weights (MaxText's `scan_layers`): the
traced and compiled program holds one layer whatever the depth, so model creation and compile
time stay flat in the number of layers. The backward pass rematerialises per layer
(`ModelConfig.remat`), and the KV cache is stacked too ([L, B, K, S, H]) and carried through the
scan, each layer writing its new keys in place. The sampler instead runs the layers straight-line
over per-layer copies of the weights and a per-layer cache (`unstacked_layers`,
`KVCache.unstacked`): a loop that calls the model every step should neither slice the stacked
weights nor carry the stacked cache.

Shape letters: l layer, b batch, t query time, s key slot, d hidden, n query heads, k KV heads,
g query heads per KV head, h head_dim, j heads x head_dim flattened (N*H or K*H), f MLP hidden,
v vocabulary.

Positions are explicit so left-padded batches get the same RoPE phases as unpadded ones, and a
KV cache (`KVCache`) lets the sampler prefill once and decode one token per step.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model import lora
from socialr1_jax.model.config import ModelConfig
from socialr1_jax.model.kv_cache import KVCache, cache_masks
from socialr1_jax.parallel.sharding import (ACT_BTD, ACT_BTF, ACT_BTNH, CACHE_BKSH, CACHE_LBKSH,
                                            LOGITS_BTV, cache_shardings, check_model_fits_mesh,
                                            constrain)

__all__ = ["KVCache", "Qwen3", "create_cache", "decoder_layer", "rms_norm", "rope"]

# Finite stand-in for -inf: a query whose keys are all masked (a left-pad position) gets a
# uniform softmax instead of NaN; its output is never read.
_MASKED = -1e30


def rms_norm(x, scale, eps):
    """x / rms(x) * scale over the last axis, statistics in fp32 (as transformers' Qwen3RMSNorm)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(dtype) * x32.astype(dtype)


def rope(x_btnh, positions_bt, theta: float):
    """Rotary embedding in the rotate-half layout of HF Qwen3 (angles computed in fp32)."""
    h = x_btnh.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x_btnh.dtype), jnp.sin(angles).astype(x_btnh.dtype)
    x1, x2 = jnp.split(x_btnh, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_btnh * cos + rotated * sin


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


# The stacked weights of a layer, in the order a layer uses them.
LAYER_WEIGHTS = ("input_norm_ld", "q_lnhd", "k_lkhd", "v_lkhd", "q_norm_lh", "k_norm_lh",
                 "o_ldnh", "post_norm_ld", "gate_lfd", "up_lfd", "down_ldf")


class Layers(nnx.Module):
    """The weights of every decoder layer, each stacked on a leading layer axis `l`.

    One random draw per stacked weight: model creation costs a handful of ops whatever the depth.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        n_l, d, n, k, h, f = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                              cfg.head_dim, cfg.intermediate_size)
        pd, std = cfg.jnp_param_dtype, cfg.init_std

        def normal(*shape):
            return nnx.Param(_normal(rngs, (n_l, *shape), std, pd))

        def ones(dim):
            return nnx.Param(jnp.ones((n_l, dim), pd))

        self.input_norm_ld = ones(d)
        self.q_lnhd = normal(n, h, d)
        self.k_lkhd = normal(k, h, d)
        self.v_lkhd = normal(k, h, d)
        self.q_norm_lh = ones(h)
        self.k_norm_lh = ones(h)
        self.o_ldnh = normal(d, n, h)
        self.post_norm_ld = ones(d)
        self.gate_lfd = normal(f, d)
        self.up_lfd = normal(f, d)
        self.down_ldf = normal(d, f)

    def stacked(self) -> dict[str, jax.Array]:
        """{name: [L, ...] array} of every layer weight (what the scan slices layer by layer)."""
        return {name: getattr(self, name)[...] for name in LAYER_WEIGHTS}


def _heads_proj(x_btd, w_nhd, precision):
    """x @ w per head: [B, T, D] x [N, H, D] -> [B, T, N, H].

    Written as one 2-D matmul against the free reshape [N*H, D]: with the 3-D weight, XLA's CPU
    backend transposed every projection weight on every call (inside the sampler's decode loop
    too), which cost as much as the matmuls themselves.
    """
    n, h, d = w_nhd.shape
    b, t, _ = x_btd.shape
    out_btj = jnp.einsum("btd,jd->btj", x_btd, w_nhd.reshape(n * h, d), precision=precision)
    return out_btj.reshape(b, t, n, h)


def _decode_attention(q_bkgh, k_bksh, v_bksh, mask_bs, precision, reduce: bool):
    """One query per row against the cache: out [B, K, G, H] in fp32.

    reduce=False (accelerators): two dots that read the cache in its own dtype and accumulate
    in fp32. reduce=True (XLA:CPU): fused fp32 multiply-reduces, since per (row, KV head) the
    products are [G, H] x [H, S], too small for a matmul kernel, and XLA:CPU ran them as batched
    dots at half the speed (0.26 -> 0.13 ms per layer at B=8, S=128). On TPU the reduces cost
    an fp32 copy of every layer's cache per step: the 4B decode step of 40 rows on a v5e 2x4
    (tensor-parallel mesh, XLA's TPU compiler ahead of time) accessed 13.6 GB by reduces and
    5.6 GB by dots (benchmarks/roofline.py).
    """
    f32 = jnp.float32
    h = q_bkgh.shape[-1]
    if reduce:
        scores_bkgs = jnp.sum(q_bkgh.astype(f32)[:, :, :, None, :]
                              * k_bksh.astype(f32)[:, :, None], axis=-1) * (h ** -0.5)
    else:
        scores_bkgs = jnp.einsum("bkgh,bksh->bkgs", q_bkgh, k_bksh.astype(q_bkgh.dtype),
                                 precision=precision, preferred_element_type=f32) * (h ** -0.5)
    scores_bkgs = jnp.where(mask_bs[:, None, None, :], scores_bkgs, _MASKED)
    probs_bkgs = jax.nn.softmax(scores_bkgs, axis=-1)
    if reduce:
        return jnp.sum(probs_bkgs[..., None] * v_bksh.astype(f32)[:, :, None], axis=-2)
    return jnp.einsum("bkgs,bksh->bkgh", probs_bkgs.astype(v_bksh.dtype), v_bksh,
                      precision=precision, preferred_element_type=f32)


def _attend(q_btnh, k_bksh, v_bksh, mask_bts, precision, reduce: bool = False):
    """Grouped-query attention: queries [B, T, N, H] over keys, values [B, K, S, H] -> [B, T, N*H]
    (reduce: how one query per row attends, see `_decode_attention`)."""
    b, t, n, h = q_btnh.shape
    kv_heads = k_bksh.shape[1]
    dt = q_btnh.dtype
    q_btkgh = q_btnh.reshape(b, t, kv_heads, n // kv_heads, h)
    if t == 1:
        out = _decode_attention(q_btkgh[:, 0], k_bksh, v_bksh, mask_bts[:, 0], precision,
                                reduce).astype(dt)
        return out.reshape(b, 1, n * h)
    scores = jnp.einsum("btkgh,bksh->bkgts", q_btkgh, k_bksh.astype(dt), precision=precision,
                        preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_bksh.astype(dt), precision=precision)
    return out.reshape(b, t, n * h)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def swiglu_mlp(x_btd, gate_fd, up_fd, down_df, precision=None):
    """down(silu(gate x) * up x), with a hand-written backward pass.

    Left to autodiff, XLA:CPU fused the silu derivative into the transposed copy that each weight
    gradient's matmul wants, and that strided fusion ran ~40x slower than a plain transpose
    (29 ms against 0.75 ms for [1024, 1536] fp32). The backward below forms each weight gradient
    as x^T d (activations in their natural layout) and transposes the small [D, F] result: the
    bench model's gradient went from 2.50 to 2.23 s. tests/test_model.py checks it against torch
    autograd. `precision` is the matmul precision of every product, forward and backward.
    """
    return _swiglu_mlp_fwd(x_btd, gate_fd, up_fd, down_df, precision)[0]


def _swiglu_mlp_fwd(x_btd, gate_fd, up_fd, down_df, precision):
    mm = partial(jnp.einsum, precision=precision)
    gate = mm("btd,fd->btf", x_btd, gate_fd)
    up = mm("btd,fd->btf", x_btd, up_fd)
    h_btf = constrain(jax.nn.silu(gate) * up, ACT_BTF)
    return mm("btf,df->btd", h_btf, down_df), (x_btd, gate_fd, up_fd, down_df, gate, up)


def _swiglu_mlp_bwd(precision, res, g_btd):
    mm = partial(jnp.einsum, precision=precision)
    x, gate_fd, up_fd, down_df, gate, up = res
    s = jax.nn.sigmoid(gate)
    silu = gate * s
    h = silu * up
    d_h = mm("btd,df->btf", g_btd, down_df)
    d_gate = constrain(d_h * up * (s + silu * (1 - s)), ACT_BTF)  # d silu = s + x s (1 - s)
    d_up = constrain(d_h * silu, ACT_BTF)
    # Weight gradients as x^T @ d (the activation-sized operand stays in its natural layout),
    # then a transpose of the small [D, F] result.
    d_down = mm("btf,btd->fd", h, g_btd).T
    d_gate_fd = mm("btd,btf->df", x, d_gate).T
    d_up_fd = mm("btd,btf->df", x, d_up).T
    d_x = mm("btf,fd->btd", d_gate, gate_fd) + mm("btf,fd->btd", d_up, up_fd)
    return d_x, d_gate_fd, d_up_fd, d_down


swiglu_mlp.defvjp(_swiglu_mlp_fwd, _swiglu_mlp_bwd)


def decoder_layer(cfg: ModelConfig, w: dict, x_btd, positions_bt, mask_bts, kv=None, *,
                  layer=None, index=None):
    """One pre-norm decoder layer: x + attn(norm x), then + mlp(norm x).

    w: this layer's weights ({name: array} of `Layers.stacked()` sliced at the layer).
    mask_bts: True where query t may attend key slot s. With `kv` = (k_lbksh, v_lbksh), the whole
    cache, the chunk's keys and values are first written in place at [layer, :, :, index:]
    and attention reads that layer's slots; with `layer=None`, `kv` = (k_bksh, v_bksh) is this
    layer's own cache, written at [:, :, index:]. Without `kv` the chunk attends to itself only
    and its own keys and values are returned as `kv` ([B, K, T, H]: what a prefill caches).
    Returns (x_btd, kv).
    """
    eps, prec = cfg.rms_norm_eps, cfg.precision
    with jax.named_scope("attention"):
        h_btd = rms_norm(x_btd, w["input_norm_ld"], eps)
        proj = partial(lora.projected, cfg, w, h_btd, _heads_proj)  # + adapters (lora.py)
        q = rms_norm(proj("q", "q_lnhd"), w["q_norm_lh"], eps)
        k = rms_norm(proj("k", "k_lkhd"), w["k_norm_lh"], eps)
        v = constrain(proj("v", "v_lkhd"), ACT_BTNH)
        q = constrain(rope(q, positions_bt, cfg.rope_theta), ACT_BTNH)
        k = constrain(rope(k, positions_bt, cfg.rope_theta), ACT_BTNH)
        k_bksh, v_bksh = k.swapaxes(1, 2), v.swapaxes(1, 2)  # [B, K, T, H]
        if kv is None:
            kv = (k_bksh, v_bksh)
        elif layer is None:
            k_c, v_c = kv
            if jnp.ndim(index) == 1:  # one slot per row (the refill sampler): row b at index[b]
                rows = jnp.arange(k_c.shape[0])
                write = lambda c, x: c.at[rows, :, index].set(x[:, :, 0].astype(c.dtype))  # noqa: E731
            else:
                write = lambda c, x: jax.lax.dynamic_update_slice(  # noqa: E731
                    c, x.astype(c.dtype), (0, 0, index, 0))
            k_bksh = constrain(write(k_c, k_bksh), CACHE_BKSH)
            v_bksh = constrain(write(v_c, v_bksh), CACHE_BKSH)
            kv = (k_bksh, v_bksh)
        else:
            k_all, v_all = kv
            at = (layer, 0, 0, index, 0)
            k_all = constrain(jax.lax.dynamic_update_slice(
                k_all, k_bksh[None].astype(k_all.dtype), at), CACHE_LBKSH)
            v_all = constrain(jax.lax.dynamic_update_slice(
                v_all, v_bksh[None].astype(v_all.dtype), at), CACHE_LBKSH)
            k_bksh = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
            v_bksh = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
            kv = (k_all, v_all)
        out_btj = _attend(q, k_bksh, v_bksh, mask_bts, prec, cfg.decode_by_reduce)
        x_btd = x_btd + lora.out_projected(cfg, w, out_btj)  # o_proj (+ its adapter)
    with jax.named_scope("mlp"):
        h_btd = rms_norm(x_btd, w["post_norm_ld"], eps)
        x_btd = x_btd + lora.mlp(cfg, w, h_btd, swiglu_mlp)  # + adapters (lora.py)
    return constrain(x_btd, ACT_BTD), kv


def segment_positions(segment_ids_bt):
    """RoPE positions [B, T] of packed rows: 0, 1, ... restarting wherever the segment id
    changes, so each packed sequence gets the phases it has when run alone."""
    t_bt = jnp.broadcast_to(jnp.arange(segment_ids_bt.shape[1]), segment_ids_bt.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids_bt[:, :1], jnp.bool_),
                              segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1)
    start_bt = jax.lax.cummax(jnp.where(starts, t_bt, 0), axis=1)
    return (t_bt - start_bt).astype(jnp.int32)


_REMAT_POLICIES = {
    "full": None,  # save nothing inside the layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _default_positions(mask_bt, start_b, segment_ids):
    """RoPE positions [B, T] when the caller gives none: restarting at 0 in each segment of a
    packed row, else the running count of real tokens from `start_b` (so left padding does not
    shift them)."""
    if segment_ids is not None:
        return segment_positions(segment_ids)
    return start_b[:, None] + jnp.maximum(jnp.cumsum(mask_bt, axis=1) - 1, 0)


def _uncached_layers(cfg: ModelConfig, weights, x, positions, mask_bt, segment_ids, *,
                     collect: bool):
    """The full forward's scan over the stacked layers (rematerialised per cfg.remat): x after
    the last layer, and each layer's (k, v) stacked when `collect` (a prefill), else None."""
    t = x.shape[1]
    causal_tt = jnp.tril(jnp.ones((t, t), jnp.bool_))
    mask_bts = causal_tt[None] & mask_bt[:, None, :]
    if segment_ids is not None:  # packed rows: no attention across sequences
        mask_bts &= segment_ids[:, :, None] == segment_ids[:, None, :]

    def body(x, w):
        x, kv = decoder_layer(cfg, w, x, positions, mask_bts)
        return x, (kv if collect else None)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    return jax.lax.scan(body, x, weights)


def _unrolled_cached_layers(cfg: ModelConfig, layer_weights, x, positions, mask_bts, kv, index):
    """The layers as straight-line code over per-layer weights and a per-layer cache `kv`
    ((k per layer), (v per layer)): x after the last layer and the updated cache."""
    ks, vs = [], []
    for w, k_c, v_c in zip(layer_weights, *kv):
        x, (k_c, v_c) = decoder_layer(cfg, w, x, positions, mask_bts, (k_c, v_c), index=index)
        ks.append(k_c)
        vs.append(v_c)
    return x, (tuple(ks), tuple(vs))


def _scanned_cached_layers(cfg: ModelConfig, weights, x, positions, mask_bts, kv, index):
    """A scan over the stacked layers that writes layer l's slice of the stacked cache `kv`:
    x after the last layer and the updated cache."""
    def cached_body(carry, xs):
        x, kv = carry
        w, layer = xs
        return decoder_layer(cfg, w, x, positions, mask_bts, kv, layer=layer,
                             index=index), None

    (x, kv), _ = jax.lax.scan(cached_body, (x, kv),
                              (weights, jnp.arange(cfg.num_layers, dtype=jnp.int32)))
    return x, kv


class Qwen3(nnx.Module):
    """Qwen3 causal LM. `model(input_ids, attention_mask)` -> logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embed_vd = nnx.Param(
            _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.init_std, pd))
        self.layers = Layers(cfg, rngs=rngs)
        self.final_norm_d = nnx.Param(jnp.ones((cfg.hidden_size,), pd))
        if not cfg.tie_word_embeddings:
            self.lm_head_vd = nnx.Param(
                _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.init_std, pd))
        lora.attach(self, cfg, rngs)  # after the base weights: their draws are unchanged

    # -- public -------------------------------------------------------------------------------

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None):
        """Logits [B, T, V] (in the compute dtype) for a left- or right-padded batch, or for
        packed rows (`segment_ids`, see `hidden_states`)."""
        hidden, _ = self.hidden_states(input_ids, attention_mask, positions,
                                       segment_ids=segment_ids)
        return self.logits(hidden)

    def hidden_states(self, input_ids, attention_mask=None, positions=None,
                      cache: Optional[KVCache] = None, *,
                      layer_weights: Optional[Sequence[dict]] = None,
                      prompt_cache_slots: Optional[int] = None, segment_ids=None):
        """Final-norm hidden states [B, T, D], and the updated cache (None without one).

        attention_mask [B, T] (1 = token, 0 = pad); positions [B, T] default to the running count
        of real tokens (so left padding does not shift RoPE). With a cache, the chunk is written
        at slots [cache.index, cache.index + T) and attends to every valid slot before it.
        layer_weights: `unstacked_layers()` taken once outside a loop that calls this many
        times (the sampler's decode): the layers then run as straight-line code on those
        arrays instead of a scan that slices the stacked weights on every call (see
        `unstacked_layers`). With a per-layer cache only (`KVCache.unstacked()`).
        prompt_cache_slots: without a cache, also return a per-layer cache of that many slots
        holding this chunk's keys and values (`KVCache.from_prompt`): a prefill that is one
        scan over the stacked layers, so its program holds one layer whatever the depth.
        segment_ids [B, T] (packed rows, no cache): several sequences per row, each a run of
        equal ids > 0 (0 = pad); a token attends only to earlier tokens of its own segment and
        positions default to restarting at 0 in each segment (`segment_positions`).
        """
        cfg = self.cfg
        b, t = input_ids.shape
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) go with a full forward, not a KV cache")
        if attention_mask is None:
            attention_mask = (jnp.ones((b, t), jnp.bool_) if segment_ids is None
                              else segment_ids > 0)
        mask_bt = attention_mask.astype(jnp.bool_)
        start_b = cache.next_pos_b if cache is not None else jnp.zeros((b,), jnp.int32)
        if positions is None:
            positions = _default_positions(mask_bt, start_b, segment_ids)

        x = jnp.take(self.embed_vd[...], input_ids, axis=0).astype(cfg.jnp_dtype)
        x = constrain(x, ACT_BTD)
        weights = lora.stacked_weights(self) if layer_weights is None else None
        if cache is None:
            collect = prompt_cache_slots is not None
            x, kv_l = _uncached_layers(cfg, weights, x, positions, mask_bt, segment_ids,
                                       collect=collect)
            hidden = rms_norm(x, self.final_norm_d[...], cfg.rms_norm_eps)
            if not collect:
                return hidden, None
            return hidden, KVCache.from_prompt(*kv_l, mask_bt, prompt_cache_slots)

        index = cache.index
        if index.ndim == 1 and layer_weights is None:
            raise ValueError("a per-row cache index goes with per-layer weights")
        valid_bs, mask_bts = cache_masks(cache, mask_bt)
        if (layer_weights is not None) != cache.per_layer:
            raise ValueError("layer_weights (unstacked weights) go with a per-layer cache "
                             "(KVCache.unstacked()), stacked weights with a stacked cache")
        kv = (cache.k_lbksh, cache.v_lbksh)
        if layer_weights is not None:
            x, kv = _unrolled_cached_layers(cfg, layer_weights, x, positions, mask_bts, kv, index)
        else:
            x, kv = _scanned_cached_layers(cfg, weights, x, positions, mask_bts, kv, index)
        k_all, v_all = kv
        new_cache = KVCache(k_lbksh=k_all, v_lbksh=v_all, valid_bs=valid_bs, index=index + t,
                            next_pos_b=start_b + mask_bt.sum(axis=1).astype(jnp.int32))
        return rms_norm(x, self.final_norm_d[...], cfg.rms_norm_eps), new_cache

    def unstacked_layers(self) -> list[dict]:
        """Each layer's weights as arrays of their own ({name: array}, one dict per layer).

        Slicing a layer out of a stacked weight is a copy on XLA:CPU (and on GPU unless the
        slice fuses into the matmul): a scan over the stacked weights inside the sampler's
        decode loop would copy every weight on every step. Taken once before the loop, the
        slices cost one copy of the layers' weights, held while the loop runs.
        """
        return lora.per_layer(self.cfg, lora.stacked_weights(self))  # adapters merged in

    def logits(self, hidden_btd):
        """LM head on hidden states (tied: the embedding matrix)."""
        w_vd = self.lm_head_weight().astype(hidden_btd.dtype)
        out = jnp.einsum("btd,vd->btv", hidden_btd, w_vd, precision=self.cfg.precision)
        return constrain(out, LOGITS_BTV)

    def lm_head_weight(self):
        """The [V, D] matrix the head multiplies by (for chunked log-prob computations)."""
        w = self.embed_vd if self.cfg.tie_word_embeddings else self.lm_head_vd
        return w[...]


def create_cache(cfg, batch: int, slots: int, mesh: Mesh | None = None, dtype=None):
    """An empty KV cache created directly in its shardings (never whole on one device)."""
    make = lambda: KVCache.zeros(cfg, batch, slots, dtype)  # noqa: E731
    if mesh is None:
        return jax.jit(make)()
    check_model_fits_mesh(cfg, mesh)
    shardings = cache_shardings(jax.eval_shape(make), mesh)
    return jax.jit(make, out_shardings=shardings)()
