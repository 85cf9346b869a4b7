"""The Qwen3 dense decoder in Flax NNX.

Weights keep Hugging Face's [out, in] layout, only reshaped (never transposed) so heads are an
axis: q_proj [N*H, D] is stored as `q_nhd` [N, H, D]. Conversion to and from safetensors is then
a rename plus a free reshape (hf_layout.py), and XLA contracts the trailing `d` directly.

Shape letters: b batch, t query time, s key slot, d hidden, n query heads, k KV heads,
g query heads per KV head, h head_dim, f MLP hidden, v vocabulary.

Positions are explicit so left-padded batches get the same RoPE phases as unpadded ones, and a
KV cache (`KVCache`) lets the sampler prefill once and decode one token per step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model.config import ModelConfig
from socialr1_jax.parallel.sharding import (ACT_BTD, ACT_BTF, ACT_BTNH, CACHE_BKSH, LOGITS_BTV,
                                            cache_shardings, check_model_fits_mesh, constrain)

# Finite stand-in for -inf: a query whose keys are all masked (a left-pad position) gets a
# uniform softmax instead of NaN; its output is never read.
_MASKED = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer for `S` slots, and which slots hold real tokens.

    k, v: one [B, K, S, H] array per layer (heads before slots, so a decode step's attention
    reads each head's keys contiguously instead of transposing the whole cache every step).
    `valid_bs` marks slots written with a non-pad token; `index` is the next slot to write (all
    rows advance together); `next_pos_b` is each row's next RoPE position (its count of real
    tokens so far).
    """

    k: list[jax.Array]
    v: list[jax.Array]
    valid_bs: jax.Array
    index: jax.Array
    next_pos_b: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype=None) -> "KVCache":
        """An empty cache; under jit with out_shardings it is created already sharded."""
        dtype = dtype or cfg.jnp_dtype
        shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
        return cls(
            k=[jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
            v=[jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
            valid_bs=jnp.zeros((batch, slots), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
            next_pos_b=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.valid_bs.shape[1]


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32 and cast back, as transformers' Qwen3RMSNorm does."""

    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale_d = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x):
        return rms_norm(x, self.scale_d[...], self.eps)


def rms_norm(x, scale, eps):
    """x / rms(x) * scale over the last axis, statistics in fp32."""
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


class Attention(nnx.Module):
    """Grouped-query attention with QK-norm (RMSNorm over head_dim before RoPE)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd, std = cfg.jnp_param_dtype, cfg.init_std
        self.q_nhd = nnx.Param(_normal(rngs, (n, h, d), std, pd))
        self.k_khd = nnx.Param(_normal(rngs, (k, h, d), std, pd))
        self.v_khd = nnx.Param(_normal(rngs, (k, h, d), std, pd))
        self.o_dnh = nnx.Param(_normal(rngs, (d, n, h), std, pd))
        self.q_norm_scale_h = nnx.Param(jnp.ones((h,), pd))
        self.k_norm_scale_h = nnx.Param(jnp.ones((h,), pd))

    def __call__(self, x_btd, positions_bt, mask_bts, kv=None, index=None):
        """Attend; with `kv` = (k_bksh, v_bksh) the new keys are written at slot `index` first.

        mask_bts: True where query t may attend key slot s. Returns (out_btd, (k_bksh, v_bksh)).
        """
        cfg, dt = self.cfg, x_btd.dtype
        q = _heads_proj(x_btd, self.q_nhd[...].astype(dt))
        k = _heads_proj(x_btd, self.k_khd[...].astype(dt))
        v = _heads_proj(x_btd, self.v_khd[...].astype(dt))
        q = rms_norm(q, self.q_norm_scale_h[...], cfg.rms_norm_eps)
        k = rms_norm(k, self.k_norm_scale_h[...], cfg.rms_norm_eps)
        q = constrain(rope(q, positions_bt, cfg.rope_theta), ACT_BTNH)
        k = constrain(rope(k, positions_bt, cfg.rope_theta), ACT_BTNH)
        v = constrain(v, ACT_BTNH)
        k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # [B, K, T, H]
        if kv is not None:
            k_cache, v_cache = kv
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
            k, v = constrain(k, CACHE_BKSH), constrain(v, CACHE_BKSH)
        b, t, n, h = q.shape
        g = n // cfg.num_kv_heads
        q_btkgh = q.reshape(b, t, cfg.num_kv_heads, g, h)
        if t == 1:
            out = _decode_attention(q_btkgh[:, 0], k, v, mask_bts[:, 0]).astype(dt)
            out = out.reshape(b, 1, n * h)
        else:
            scores = jnp.einsum("btkgh,bksh->bkgts", q_btkgh, k.astype(dt),
                                preferred_element_type=jnp.float32) * (h ** -0.5)
            scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASKED)
            probs = jax.nn.softmax(scores, axis=-1).astype(dt)
            out = jnp.einsum("bkgts,bksh->btkgh", probs, v.astype(dt)).reshape(b, t, n * h)
        o_df = self.o_dnh[...].astype(dt).reshape(-1, n * h)  # free reshape, see _heads_proj
        out = jnp.einsum("btf,df->btd", out, o_df)
        return out, (k, v)


def _decode_attention(q_bkgh, k_bksh, v_bksh, mask_bs):
    """One query per row against the cache: out [B, K, G, H] in fp32.

    Written as fused multiply-reduces rather than einsums: per (row, KV head) the products are
    [G, H] x [H, S], far too small for a matmul kernel, and XLA:CPU ran them as batched dots at
    half the speed (measured 0.26 -> 0.13 ms per layer at B=8, S=128). Accelerators fuse the
    same reduces; a decode step's attention is bound by reading the cache either way.
    """
    f32 = jnp.float32
    h = q_bkgh.shape[-1]
    scores_bkgs = jnp.sum(q_bkgh.astype(f32)[:, :, :, None, :] * k_bksh.astype(f32)[:, :, None],
                          axis=-1) * (h ** -0.5)
    scores_bkgs = jnp.where(mask_bs[:, None, None, :], scores_bkgs, _MASKED)
    probs_bkgs = jax.nn.softmax(scores_bkgs, axis=-1)
    return jnp.sum(probs_bkgs[..., None] * v_bksh.astype(f32)[:, :, None], axis=-2)


def _heads_proj(x_btd, w_nhd):
    """x @ w per head: [B, T, D] x [N, H, D] -> [B, T, N, H].

    Written as one 2-D matmul against the free reshape [N*H, D]: with the 3-D weight, XLA's CPU
    backend transposed every projection weight on every call (inside the sampler's decode loop
    too), which cost as much as the matmuls themselves.
    """
    n, h, d = w_nhd.shape
    b, t, _ = x_btd.shape
    return jnp.einsum("btd,fd->btf", x_btd, w_nhd.reshape(n * h, d)).reshape(b, t, n, h)


@jax.custom_vjp
def swiglu_mlp(x_btd, gate_fd, up_fd, down_df):
    """down(silu(gate x) * up x), with a hand-written backward pass.

    Left to autodiff, XLA:CPU fused the silu derivative into the transposed copy that each weight
    gradient's matmul wants, and that strided fusion ran ~40x slower than a plain transpose
    (29 ms against 0.75 ms for [1024, 1536] fp32). The backward below forms each weight gradient
    as x^T d (activations in their natural layout) and transposes the small [D, F] result: the
    bench model's gradient went from 2.50 to 2.23 s. tests/test_model.py checks it against torch
    autograd.
    """
    return _swiglu_mlp_fwd(x_btd, gate_fd, up_fd, down_df)[0]


def _swiglu_mlp_fwd(x_btd, gate_fd, up_fd, down_df):
    gate = jnp.einsum("btd,fd->btf", x_btd, gate_fd)
    up = jnp.einsum("btd,fd->btf", x_btd, up_fd)
    h_btf = constrain(jax.nn.silu(gate) * up, ACT_BTF)
    return jnp.einsum("btf,df->btd", h_btf, down_df), (x_btd, gate_fd, up_fd, down_df, gate, up)


def _swiglu_mlp_bwd(res, g_btd):
    x, gate_fd, up_fd, down_df, gate, up = res
    s = jax.nn.sigmoid(gate)
    silu = gate * s
    h = silu * up
    d_h = jnp.einsum("btd,df->btf", g_btd, down_df)
    d_gate = constrain(d_h * up * (s + silu * (1 - s)), ACT_BTF)  # d silu = s + x s (1 - s)
    d_up = constrain(d_h * silu, ACT_BTF)
    # Weight gradients as x^T @ d (the activation-sized operand stays in its natural layout),
    # then a transpose of the small [D, F] result.
    d_down = jnp.einsum("btf,btd->fd", h, g_btd).T
    d_gate_fd = jnp.einsum("btd,btf->df", x, d_gate).T
    d_up_fd = jnp.einsum("btd,btf->df", x, d_up).T
    d_x = jnp.einsum("btf,fd->btd", d_gate, gate_fd) + jnp.einsum("btf,fd->btd", d_up, up_fd)
    return d_x, d_gate_fd, d_up_fd, d_down


swiglu_mlp.defvjp(_swiglu_mlp_fwd, _swiglu_mlp_bwd)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        pd, std = cfg.jnp_param_dtype, cfg.init_std
        self.gate_fd = nnx.Param(_normal(rngs, (f, d), std, pd))
        self.up_fd = nnx.Param(_normal(rngs, (f, d), std, pd))
        self.down_df = nnx.Param(_normal(rngs, (d, f), std, pd))

    def __call__(self, x_btd):
        dt = x_btd.dtype
        return swiglu_mlp(x_btd, self.gate_fd[...].astype(dt), self.up_fd[...].astype(dt),
                          self.down_df[...].astype(dt))


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm x), then + mlp(norm x)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_btd, positions_bt, mask_bts, kv=None, index=None):
        attn_out, kv = self.attn(self.input_norm(x_btd), positions_bt, mask_bts, kv, index)
        x_btd = x_btd + attn_out
        x_btd = x_btd + self.mlp(self.post_norm(x_btd))
        return constrain(x_btd, ACT_BTD), kv


_REMAT_POLICIES = {
    "full": None,  # save nothing inside the layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Qwen3(nnx.Module):
    """Qwen3 causal LM. `model(input_ids, attention_mask)` -> logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embed_vd = nnx.Param(_normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.init_std, pd))
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        if not cfg.tie_word_embeddings:
            self.lm_head_vd = nnx.Param(
                _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.init_std, pd))

    # -- public -------------------------------------------------------------------------------

    def __call__(self, input_ids, attention_mask=None, positions=None):
        """Logits [B, T, V] (in the compute dtype) for a left- or right-padded batch."""
        hidden, _ = self.hidden_states(input_ids, attention_mask, positions)
        return self.logits(hidden)

    def hidden_states(self, input_ids, attention_mask=None, positions=None,
                      cache: Optional[KVCache] = None):
        """Final-norm hidden states [B, T, D], and the updated cache (None without one).

        attention_mask [B, T] (1 = token, 0 = pad); positions [B, T] default to the running count
        of real tokens (so left padding does not shift RoPE). With a cache, the chunk is written
        at slots [cache.index, cache.index + T) and attends to every valid slot before it.
        """
        cfg = self.cfg
        b, t = input_ids.shape
        mask_bt = (jnp.ones((b, t), jnp.bool_) if attention_mask is None
                   else attention_mask.astype(jnp.bool_))
        start_b = cache.next_pos_b if cache is not None else jnp.zeros((b,), jnp.int32)
        if positions is None:
            positions = start_b[:, None] + jnp.maximum(jnp.cumsum(mask_bt, axis=1) - 1, 0)

        if cache is None:
            causal_tt = jnp.tril(jnp.ones((t, t), jnp.bool_))
            mask_bts = causal_tt[None] & mask_bt[:, None, :]
            index = None
        else:
            index = cache.index
            valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt, (0, index))
            slot_s = jnp.arange(cache.slots)
            query_slot_t = index + jnp.arange(t)
            mask_bts = (slot_s[None, :] <= query_slot_t[:, None])[None] & valid_bs[:, None, :]

        x = jnp.take(self.embed_vd[...], input_ids, axis=0).astype(cfg.jnp_dtype)
        x = constrain(x, ACT_BTD)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            if cache is None and cfg.remat != "none":
                x, kv = nnx.remat(_call_block, policy=_REMAT_POLICIES[cfg.remat])(
                    layer, x, positions, mask_bts)
            else:
                x, kv = layer(x, positions, mask_bts, kv, index)
            new_k.append(kv[0])
            new_v.append(kv[1])
        hidden = self.final_norm(x)
        if cache is None:
            return hidden, None
        new_cache = KVCache(k=new_k, v=new_v, valid_bs=valid_bs, index=index + t,
                            next_pos_b=start_b + mask_bt.sum(axis=1).astype(jnp.int32))
        return hidden, new_cache

    def logits(self, hidden_btd):
        """LM head on hidden states (tied: the embedding matrix)."""
        w_vd = self.embed_vd if self.cfg.tie_word_embeddings else self.lm_head_vd
        out = jnp.einsum("btd,vd->btv", hidden_btd, w_vd[...].astype(hidden_btd.dtype))
        return constrain(out, LOGITS_BTV)

    def lm_head_weight(self):
        """The [V, D] matrix the head multiplies by (for chunked log-prob computations)."""
        w = self.embed_vd if self.cfg.tie_word_embeddings else self.lm_head_vd
        return w[...]


def _call_block(layer, x, positions, mask_bts):
    return layer(x, positions, mask_bts)


def create_cache(cfg, batch: int, slots: int, mesh: Mesh | None = None, dtype=None):
    """An empty KV cache created directly in its shardings (never whole on one device)."""
    make = lambda: KVCache.zeros(cfg, batch, slots, dtype)  # noqa: E731
    if mesh is None:
        return jax.jit(make)()
    check_model_fits_mesh(cfg, mesh)
    shardings = cache_shardings(jax.eval_shape(make), mesh)
    return jax.jit(make, out_shardings=shardings)()
