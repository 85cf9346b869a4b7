"""GRPO as verl computes it: group advantages, KL estimators, the clipped loss and its metrics.

Everything here is a pure function of arrays, so the same code runs on one micro-batch inside the
jitted train step (train_step.py) and in tests against an independent NumPy implementation.

Definitions (verl, verl/trainer/ppo/core_algos.py):

* advantage of completion j of a prompt, with scores s over its group of G completions:
  A = (s - mean_g) / (std_g + 1e-6), std unbiased (ddof=1); Dr.GRPO: A = s - mean_g.
  A is per sequence and broadcast over the completion's tokens.
* ratio = exp(clip(logp - old_logp, -20, 20));
  pg = max(-A ratio, -A clip(ratio, 1 - eps_low, 1 + eps_high)), and for A < 0 min(pg, -A c)
  with c = dual_clip (3.0).
* KL to the reference as a loss term, beta * kl with
  k1 = logp - ref, k2 = (logp - ref)^2 / 2,
  k3 ("low_var_kl") = clip(exp(d) - d - 1, -10, 10), d = clip(ref - logp, -20, 20).
* aggregation of a per-token matrix L [B, C] with mask m (n_i = sum_t m_it):
  token-mean               sum_it m L / N,           N = sum_i n_i
  seq-mean-token-mean      sum_i (sum_t m L / n_i) / S, S = #{i : n_i > 0}
  seq-mean-token-sum       sum_i (sum_t m L) / S
  seq-mean-token-sum-norm  sum_it m L / K,           K = loss_scale_factor, default C
  The last one is verl's Dr.GRPO mode (core_algos.agg_loss): the total token sum divided by a
  constant, by default the padded completion length C (mask.shape[-1]); it is NOT divided by the
  number of sequences. Sequences with no token are left out of S, as verl does.

N, S and K can be given explicitly (`num_tokens`, `num_seqs`, `loss_scale_factor`): the train step
passes the counts of the whole mini-batch, so the loss of k micro-batches sums to the loss of the
one batch, and so do their gradients.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

KL_TYPES = ("k1", "k2", "k3")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
ADV_EPS = 1e-6       # verl's epsilon in the std normalisation
LOG_RATIO_CLIP = 20.0
K3_CLIP = 10.0


def advantages(rewards, group_size: int, *, normalize: bool = True, eps: float = ADV_EPS):
    """Per-sequence advantages [B] from scores [B] ordered group by group (row i*G + j).

    normalize=True: (s - mean_g) / (std_g + eps) with the unbiased std (ddof=1): a group of one
    has no std, so group_size=1 is refused. normalize=False: Dr.GRPO, s - mean_g.
    Returns float32; works on NumPy or JAX input, inside or outside jit (group_size is static).
    """
    group_size = int(group_size)
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if normalize and group_size == 1:
        raise ValueError("group_size=1 with std normalisation: the unbiased std of a group of one "
                         "is undefined; sample at least 2 completions per prompt or use "
                         "normalize=False (Dr.GRPO)")
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 1:
        raise ValueError(f"rewards must be one score per completion [B], got shape {r.shape}")
    if r.shape[0] % group_size:
        raise ValueError(f"{r.shape[0]} rewards do not split into groups of {group_size}")
    r_ng = r.reshape(-1, group_size)
    # Shifting by the group's first score first makes a flat group exactly zero (a plain fp32
    # mean of five 0.7s is off by an ulp, which the 1e-6 epsilon would blow up to ~0.02).
    shifted = r_ng - r_ng[:, :1]
    centred = shifted - shifted.mean(axis=1, keepdims=True)
    if normalize:
        std = jnp.sqrt(jnp.sum(centred * centred, axis=1, keepdims=True) / (group_size - 1))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def kl_penalty(logp, ref_logp, kind: str = "k3"):
    """Per-token KL estimate of the policy from the reference (k1, k2 or k3 = verl low_var_kl)."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    if kind == "k3":
        d = jnp.clip(ref_logp - logp, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
        return jnp.clip(jnp.exp(d) - d - 1.0, -K3_CLIP, K3_CLIP)
    raise ValueError(f"kl={kind!r}; expected one of {KL_TYPES}")


def aggregate(mat, mask, agg: str, *, num_tokens=None, num_seqs=None, loss_scale_factor=None,
              segment_ids=None):
    """Reduce a per-token matrix [B, C] to a scalar by one of `AGG_MODES` (see module doc).

    Masked entries never contribute, even if they hold NaN or Inf. segment_ids [B, C]: packed
    rows (rl/packing.py), where each run of equal ids > 0 within a row is one sequence; the
    seq-mean modes then reduce per (row, segment) as the padded layout does per row.
    """
    m = mask.astype(bool)
    mf = m.astype(jnp.float32)
    safe = jnp.where(m, mat, 0.0).astype(jnp.float32)
    if agg in ("token-mean", "seq-mean-token-sum-norm"):
        total = jnp.sum(safe)
        if agg == "token-mean":
            denom = jnp.maximum(jnp.sum(mf), 1.0) if num_tokens is None else num_tokens
        else:
            denom = mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return total / denom
    if agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
        n_b, seq_b = per_sequence(mf, segment_ids), per_sequence(safe, segment_ids)
        if agg == "seq-mean-token-mean":
            seq_b = seq_b / jnp.maximum(n_b, 1.0)
        denom = jnp.maximum(jnp.sum(n_b > 0), 1.0) if num_seqs is None else num_seqs
        return jnp.sum(seq_b) / denom
    raise ValueError(f"agg={agg!r}; expected one of {AGG_MODES}")


def per_sequence(x_bc, segment_ids=None):
    """Sums of x over each sequence: [B] per row, or with packed `segment_ids` one sum per
    (row, segment id) pair, [B * (C + 1)] (pairs that hold no sequence sum to 0)."""
    if segment_ids is None:
        return jnp.sum(x_bc, axis=-1)
    b, c = x_bc.shape
    pair_bc = jnp.arange(b)[:, None] * (c + 1) + segment_ids
    return jax.ops.segment_sum(x_bc.reshape(-1), pair_bc.reshape(-1), num_segments=b * (c + 1))


def loss(logp, old_logp, ref_logp, advantages, mask, *, beta: float, kl: str = "k3",
         eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: Optional[float] = 3.0,
         agg: str = "token-mean", entropy=None, num_tokens=None, num_seqs=None,
         loss_scale_factor=None, segment_ids=None):
    """The GRPO loss pg + beta * kl, both aggregated by `agg`, and its metrics.

    logp, old_logp, ref_logp, mask: [B, C] (policy now, at rollout, reference); advantages: [B],
    or [B, C] per token (packed rows, whose `segment_ids` [B, C] say which tokens are one
    sequence: see `aggregate`).
    dual_clip=None turns the dual clip off; beta=0 drops the KL term (still reported).
    entropy [B, C] (optional): reported as a token mean, never differentiated.
    num_tokens / num_seqs / loss_scale_factor: the normalisers of `aggregate`, given when this is
    one micro-batch of a larger batch.

    Returns (loss, metrics). Every metric is normalised by the same global counts, so the metrics
    of micro-batches add up to the metrics of the batch: loss, pg_loss, kl (aggregated like the
    loss, before beta), clip_frac_high (A > 0 and ratio > 1 + eps_high), clip_frac_low (A < 0 and
    ratio < 1 - eps_low), dual_clip_frac (A < 0 and -A ratio above -A dual_clip), ppo_kl (token
    mean of old_logp - logp), entropy (0 when not given), num_tokens (this batch's share).
    """
    if kl not in KL_TYPES:
        raise ValueError(f"kl={kl!r}; expected one of {KL_TYPES}")
    if agg not in AGG_MODES:
        raise ValueError(f"agg={agg!r}; expected one of {AGG_MODES}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (verl's clip_ratio_c), or None")
    m = mask.astype(bool)
    # Masked positions may hold garbage; zero them before any exp so neither the value nor the
    # gradient can become NaN there.
    logp = jnp.where(m, logp, 0.0).astype(jnp.float32)
    old_logp = jnp.where(m, old_logp, 0.0).astype(jnp.float32)
    ref_logp = jnp.where(m, ref_logp, 0.0).astype(jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)
    adv = adv[:, None] if adv.ndim == 1 else adv

    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = jnp.maximum(pg1, pg2)
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        dual_active = (adv < 0) & (pg > pg3)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    else:
        dual_active = jnp.zeros_like(m)
    kl_bc = kl_penalty(logp, ref_logp, kl)

    norms = dict(num_tokens=num_tokens, num_seqs=num_seqs, loss_scale_factor=loss_scale_factor,
                 segment_ids=segment_ids)
    pg_loss = aggregate(pg, m, agg, **norms)
    kl_loss = aggregate(kl_bc, m, agg, **norms)
    total = pg_loss + beta * kl_loss

    def token_mean(x):
        return aggregate(x.astype(jnp.float32), m, "token-mean", num_tokens=num_tokens)

    metrics = {
        "loss": total,
        "pg_loss": pg_loss,
        "kl": kl_loss,
        "clip_frac_high": token_mean((adv > 0) & (ratio > 1.0 + eps_high)),
        "clip_frac_low": token_mean((adv < 0) & (ratio < 1.0 - eps_low)),
        "dual_clip_frac": token_mean(dual_active),
        "ppo_kl": token_mean(jax.lax.stop_gradient(old_logp - logp)),
        "entropy": (token_mean(jax.lax.stop_gradient(entropy)) if entropy is not None
                    else jnp.zeros((), jnp.float32)),
        "num_tokens": jnp.sum(m.astype(jnp.float32)),
    }
    return total, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}


def batch_normalisers(mask, agg: str, loss_scale_factor=None, *, segment_ids=None,
                      completion_len=None):
    """(num_tokens, num_seqs, loss_scale_factor) of a whole batch, for its micro-batches.

    Packed rows: `segment_ids` as in `aggregate`, and `completion_len` the padded completion
    length C that seq-mean-token-sum-norm divides by by default (verl's mask.shape[-1])."""
    mf = jnp.asarray(mask).astype(jnp.float32)
    num_tokens = jnp.maximum(jnp.sum(mf), 1.0)
    num_seqs = jnp.maximum(jnp.sum(per_sequence(mf, segment_ids) > 0).astype(jnp.float32), 1.0)
    scale = loss_scale_factor or completion_len or mask.shape[-1]
    return num_tokens, num_seqs, jnp.float32(scale)


def reward_stats(rewards, group_size: int) -> dict:
    """Host-side reward statistics of one rollout (mean, std, min, max, share of groups whose
    rewards are all equal: those give zero advantage and no learning signal)."""
    r = np.asarray(rewards, np.float64)
    groups = r.reshape(-1, group_size)
    return {
        "reward_mean": float(r.mean()), "reward_std": float(r.std()),
        "reward_min": float(r.min()), "reward_max": float(r.max()),
        "flat_group_frac": float(np.mean(np.ptp(groups, axis=1) == 0)),
    }
