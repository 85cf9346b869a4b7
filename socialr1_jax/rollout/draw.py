"""Choosing one token per row from logits: greedy, temperature, top-k, top-p, inverse-CDF draws.

Shared by the static sampler (`rollout.sampler`) and the refill sampler (`rollout.refill`), so
that both make the same choice from the same logits and the same uniform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


# When only top-p is asked, the nucleus is first looked for among this many highest logits (a
# partial sort); only if some row's nucleus is wider does the step fall back to a bisection.
TOP_P_CANDIDATES = 1024


# -- one sampling step on logits ---------------------------------------------------------------
# Everything here is a few linear passes over [B, V]: XLA's CPU sort of a 151,936-wide row takes
# ~30 ms and jax.random.categorical (V Gumbel draws per row) ~4 ms per row, either of which
# would cost more than a whole decode step of the 100M benchmark model.

def argmax_first(x_bv):
    """Index of the first maximum per row (as argmax), from two plain reductions."""
    v = x_bv.shape[-1]
    top = jnp.max(x_bv, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x_bv == top, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def _keep_threshold(sorted_desc, probs_sorted, top_p):
    """The smallest kept value per row: the nucleus is the shortest prefix with mass >= top_p."""
    cum = jnp.cumsum(probs_sorted, axis=-1)
    keep = (cum - probs_sorted) < top_p  # mass strictly before a token < p: always >= 1 kept
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    return jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)[:, 0]


def _ordered_key(x):
    """int32 keys with the order of the float32 values (for exact bisection over floats)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _nucleus_threshold_bisect(scaled_bv, lse_b1, top_p):
    """Largest value t per row with mass(x >= t) >= top_p: the last value of the nucleus.

    32 halvings of the int32 key range, each a masked sum over the row: exact, no sort.
    """
    key_bv = _ordered_key(scaled_bv)
    p_bv = jnp.exp(scaled_bv - lse_b1)
    b = scaled_bv.shape[0]
    lo = jnp.full((b,), jnp.iinfo(jnp.int32).min, jnp.int32)  # mass(key >= lo) = 1 >= p
    hi = jnp.max(key_bv, axis=-1) + 1                           # mass(key >= hi) = 0 < p

    def halve(_, lo_hi):
        lo, hi = lo_hi
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        ok = jnp.sum(jnp.where(key_bv >= mid[:, None], p_bv, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 33, halve, (lo, hi))
    # The smallest real value whose key is >= lo (the boundary token itself).
    return jnp.min(jnp.where(key_bv >= lo[:, None], scaled_bv, jnp.inf), axis=-1)


def truncate_logits(scaled_bv, *, top_k: int, top_p, use_top_p: bool,
                    candidates: int = TOP_P_CANDIDATES):
    """Logits with everything outside top-k, then top-p (of the renormalised rest), at -inf.

    Order as in transformers' and vLLM's samplers: temperature, top-k, top-p. Tokens tied with
    the last kept value are kept too (measure-zero for real logits). With top-p alone the
    nucleus is looked for among the `candidates` highest logits and, only when some row's
    nucleus is wider than that, by an exact bisection over the whole row (`lax.cond`).
    """
    if top_k <= 0 and not use_top_p:
        return scaled_bv
    v = scaled_bv.shape[-1]
    if top_k > 0:
        vals, _ = jax.lax.top_k(scaled_bv, min(top_k, v))
        thresh = vals[:, -1]
        if use_top_p:
            thresh = _keep_threshold(vals, jax.nn.softmax(vals, axis=-1), top_p)
    else:
        lse = jax.nn.logsumexp(scaled_bv, axis=-1, keepdims=True)
        vals, _ = jax.lax.top_k(scaled_bv, min(candidates, v))
        probs = jnp.exp(vals - lse)
        if candidates >= v:
            thresh = _keep_threshold(vals, probs, top_p)
        else:
            covered = jnp.all(jnp.sum(probs, axis=-1) >= top_p)
            thresh = jax.lax.cond(covered, lambda: _keep_threshold(vals, probs, top_p),
                                  lambda: _nucleus_threshold_bisect(scaled_bv, lse, top_p))
    return jnp.where(scaled_bv >= thresh[:, None], scaled_bv, -jnp.inf)


def _last_positive(x_bn):
    n = x_bn.shape[-1]
    return jnp.max(jnp.where(x_bn > 0, jnp.arange(n, dtype=jnp.int32), 0), axis=-1)


def inverse_cdf_sample(u_b, kept_bv, chunk: int = 1024):
    """Token per row drawn from softmax(kept) with uniforms u_b in [0, 1) (inverse CDF).

    Two levels so no [B, V] cumulative sum is needed: the chunk of `chunk` tokens holding the
    u-quantile from per-chunk masses, then the token inside it. A row can only land on a token
    of positive probability (rounding at the very top of the range falls back to the last one).
    """
    b, v = kept_bv.shape
    chunk = min(chunk, v)
    pad = -v % chunk
    p_bv = jnp.exp(kept_bv - jnp.max(kept_bv, axis=-1, keepdims=True))  # -inf -> 0
    p_bnc = jnp.pad(p_bv, ((0, 0), (0, pad))).reshape(b, -1, chunk)
    mass_bn = jnp.sum(p_bnc, axis=-1)
    cum_bn = jnp.cumsum(mass_bn, axis=-1)
    target = u_b * cum_bn[:, -1]
    ci = jnp.minimum(jnp.sum(cum_bn <= target[:, None], axis=-1), _last_positive(mass_bn))
    before = jnp.where(ci > 0, jnp.take_along_axis(cum_bn, jnp.maximum(ci - 1, 0)[:, None],
                                                   axis=-1)[:, 0], 0.0)
    row_bc = jnp.take_along_axis(p_bnc, ci[:, None, None], axis=1)[:, 0]
    inner = before[:, None] + jnp.cumsum(row_bc, axis=-1)
    j = jnp.minimum(jnp.sum(inner <= target[:, None], axis=-1), _last_positive(row_bc))
    return (ci * chunk + j).astype(jnp.int32)


def sample_step(key, logits_bv, temperature, top_p, *, greedy: bool, top_k: int,
                use_top_p: bool, candidates: int = TOP_P_CANDIDATES, u_b=None):
    """Choose one token per row from logits [B, V]; returns (tokens [B], logprobs [B]).

    The log-prob is under softmax(logits / T) before truncation (T = 1 when greedy). Row r's
    uniform is element r of `jax.random.uniform(key, (B,))`, or `u_b[r]` when u_b is given (the
    refill sampler draws each slot's uniform for its own sequence and step; `key` is unused then).
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if greedy:
        tok = argmax_first(logits_bv)
        scaled = logits_bv
    else:
        scaled = logits_bv / temperature
        kept = truncate_logits(scaled, top_k=top_k, top_p=top_p, use_top_p=use_top_p,
                               candidates=candidates)
        u_b = jax.random.uniform(key, (scaled.shape[0],)) if u_b is None else u_b
        tok = inverse_cdf_sample(u_b, kept)
    lse = jax.nn.logsumexp(scaled, axis=-1)
    logp = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - lse
    return tok, logp


def head(h_bd, w_vd, precision):
    """LM-head logits [B, V] in fp32 of last hidden states [B, D] (w_vd: `lm_head_weight()`)."""
    return jnp.einsum("bd,vd->bv", h_bd, w_vd.astype(h_bd.dtype), precision=precision,
                      preferred_element_type=jnp.float32)
