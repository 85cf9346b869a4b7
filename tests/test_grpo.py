"""grpo.py against an independent float64 NumPy implementation of verl's GRPO formulas."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from socialr1_jax.rl import grpo

# -- the reference, written from verl's formulas (trainer/ppo/core_algos.py), in float64 ------


def np_advantages(scores, g, normalize=True):
    out = np.empty(len(scores))
    for start in range(0, len(scores), g):
        s = np.asarray(scores[start:start + g], np.float64)
        a = s - s.mean()
        if normalize:
            a = a / (np.std(s, ddof=1) + 1e-6)
        out[start:start + g] = a
    return out


def np_kl(logp, ref, kind):
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref) ** 2
    d = np.clip(ref - logp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def np_agg(mat, mask, mode):
    rows = []
    for i in range(mat.shape[0]):
        sel = mat[i][mask[i] > 0]
        rows.append(sel)
    if mode == "token-mean":
        return np.concatenate(rows).sum() / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return np.mean([r.mean() for r in rows if len(r)])
    if mode == "seq-mean-token-sum":
        return np.mean([r.sum() for r in rows if len(r)])
    if mode == "seq-mean-token-sum-norm":  # verl: total token sum / padded completion length
        return sum(r.sum() for r in rows) / mat.shape[1]
    raise AssertionError(mode)


def np_loss(logp, old, ref, adv, mask, beta, kl, eps_low=0.2, eps_high=0.2, c=3.0,
            agg="token-mean"):
    logp, old, ref = (np.asarray(x, np.float64) for x in (logp, old, ref))
    a = np.asarray(adv, np.float64)[:, None] * np.ones_like(logp)
    ratio = np.exp(np.clip(logp - old, -20, 20))
    per_tok = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps_low, 1 + eps_high))
    dual = (a < 0) & (per_tok > -a * c)
    per_tok = np.where(a < 0, np.minimum(per_tok, -a * c), per_tok)
    pg = np_agg(per_tok, mask, agg)
    k = np_agg(np_kl(logp, ref, kl), mask, agg)
    clip_hi = np_agg(((a > 0) & (ratio > 1 + eps_high)).astype(float), mask, "token-mean")
    clip_lo = np_agg(((a < 0) & (ratio < 1 - eps_low)).astype(float), mask, "token-mean")
    np_loss.dual_frac = np_agg(dual.astype(float), mask, "token-mean")
    # the scale of the sums: aggregated magnitudes (+-advantages cancel in the loss itself)
    np_loss.scale = (np_agg(np.abs(per_tok), mask, agg),
                     np_agg(np.abs(np_kl(logp, ref, kl)), mask, agg))
    return pg + beta * k, pg, k, clip_hi, clip_lo


def random_inputs(seed, b=12, c=20):
    rng = np.random.default_rng(seed)
    logp = rng.uniform(-6, -0.05, (b, c))
    # log-ratios spread over both clips (0.8, 1.2), the dual clip (ratio > 3) and the +-20 clamp
    delta = rng.uniform(-1.6, 1.6, (b, c))
    delta[0, :3] = [25.0, -25.0, 21.0]
    old = logp - delta
    ref = logp + rng.normal(0, 0.8, (b, c))
    ref[1, :3] = [30.0, -30.0, 12.0]   # k3's +-20 and +-10 clamps, k1/k2 large values
    adv = rng.normal(0, 1.2, b)
    adv[2] = 0.0
    lengths = rng.integers(1, c + 1, b)
    lengths[3] = c
    mask = (np.arange(c)[None] < lengths[:, None]).astype(np.int32)
    # garbage where masked: must not matter
    logp = np.where(mask > 0, logp, np.nan)
    return [x.astype(np.float32) for x in (logp, old, ref)] + [adv.astype(np.float32), mask]


@pytest.mark.parametrize("kl,agg", list(itertools.product(grpo.KL_TYPES, grpo.AGG_MODES)))
def test_loss_matches_numpy(kl, agg):
    logp, old, ref, adv, mask = random_inputs(10 * grpo.KL_TYPES.index(kl) + grpo.AGG_MODES.index(agg))
    beta = 0.04
    total, m = jax.jit(lambda *a: grpo.loss(*a, beta=beta, kl=kl, agg=agg))(
        logp, old, ref, adv, mask)
    clean = np.where(mask > 0, logp, -1.0)  # the reference never reads masked entries anyway
    want, pg, k, hi, lo = np_loss(clean, old, ref, adv, mask, beta, kl, agg=agg)
    # the clips are really exercised by these inputs
    assert hi > 0.02 and lo > 0.02 and np_loss.dual_frac > 0.02
    # <= 1e-6 relative to the scale of the sum (the aggregated |per-token term|): with
    # advantages of both signs the loss cancels far below its terms, and fp32 rounding is
    # relative to the terms, not to the cancelled result.
    s_pg, s_kl = np_loss.scale
    for got, ref_val, scale in ((total, want, s_pg + beta * s_kl), (m["pg_loss"], pg, s_pg),
                                (m["kl"], k, s_kl)):
        assert abs(float(got) - ref_val) <= 1e-6 * scale, (float(got), ref_val, scale)
    assert float(m["clip_frac_high"]) == pytest.approx(hi, abs=1e-7)
    assert float(m["clip_frac_low"]) == pytest.approx(lo, abs=1e-7)
    assert float(m["dual_clip_frac"]) == pytest.approx(np_loss.dual_frac, abs=1e-7)
    assert float(m["num_tokens"]) == mask.sum()


def test_dual_clip_and_eps_options():
    logp, old, ref, adv, mask = random_inputs(7)
    clean = np.where(mask > 0, logp, -1.0)
    for eps_low, eps_high, c in ((0.2, 0.28, 3.0), (0.1, 0.1, 1.5)):
        got, _ = grpo.loss(logp, old, ref, adv, mask, beta=0.1, kl="k3", eps_low=eps_low,
                           eps_high=eps_high, dual_clip=c)
        want = np_loss(clean, old, ref, adv, mask, 0.1, "k3", eps_low, eps_high, c)[0]
        assert abs(float(got) - want) <= 1e-6 * abs(want)
    # dual clip off == a huge dual clip constant
    off, _ = grpo.loss(logp, old, ref, adv, mask, beta=0.0, dual_clip=None)
    want = np_loss(clean, old, ref, adv, mask, 0.0, "k3", c=1e30)[0]
    assert abs(float(off) - want) <= 1e-6 * abs(want)


def test_masked_garbage_has_no_effect_on_value_or_gradient():
    logp, old, ref, adv, mask = random_inputs(3)
    old = np.where(mask > 0, old, np.inf).astype(np.float32)
    g = jax.grad(lambda lp: grpo.loss(lp, old, ref, adv, mask, beta=0.04)[0])(jnp.asarray(logp))
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[mask == 0] == 0)


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_micro_batches_with_global_normalisers_sum_to_the_batch(agg):
    logp, old, ref, adv, mask = random_inputs(11, b=12)
    full, fm = grpo.loss(logp, old, ref, adv, mask, beta=0.04, agg=agg)
    nt, ns, scale = grpo.batch_normalisers(mask, agg)
    parts = [grpo.loss(logp[i::3], old[i::3], ref[i::3], adv[i::3], mask[i::3], beta=0.04,
                       agg=agg, num_tokens=nt, num_seqs=ns, loss_scale_factor=scale)
             for i in range(3)]
    assert abs(sum(float(p[0]) for p in parts) - float(full)) <= 1e-6 * abs(float(full))
    for key in ("kl", "clip_frac_low", "clip_frac_high", "ppo_kl"):
        assert sum(float(p[1][key]) for p in parts) == pytest.approx(float(fm[key]), rel=1e-5)


def test_advantages_match_numpy():
    rng = np.random.default_rng(0)
    g = 5
    scores = rng.normal(size=8 * g).astype(np.float32)
    scores[:g] = 0.7          # a flat group: zero advantage, no division blow-up
    scores[g:2 * g] = [0, 0, 0, 0, 1]
    got = np.asarray(grpo.advantages(scores, g))
    want = np_advantages(scores, g)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.all(got[:g] == 0)
    # Dr.GRPO: no std division
    np.testing.assert_allclose(np.asarray(grpo.advantages(scores, g, normalize=False)),
                               np_advantages(scores, g, normalize=False), rtol=1e-6, atol=1e-7)
    # jit-able, group_size static
    np.testing.assert_allclose(np.asarray(jax.jit(grpo.advantages, static_argnums=1)(scores, g)),
                               want, rtol=1e-6, atol=1e-6)


def test_group_of_one_is_refused_with_std_normalisation():
    with pytest.raises(ValueError, match="group_size=1"):
        grpo.advantages(np.ones(4), 1)
    assert np.all(np.asarray(grpo.advantages(np.arange(4.0), 1, normalize=False)) == 0)
    with pytest.raises(ValueError, match="do not split"):
        grpo.advantages(np.ones(7), 2)


def test_bad_options_are_refused():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="kl='k4'"):
        grpo.loss(x, x, x, np.zeros(2), x, beta=0.1, kl="k4")
    with pytest.raises(ValueError, match="agg='mean'"):
        grpo.loss(x, x, x, np.zeros(2), x, beta=0.1, agg="mean")
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.loss(x, x, x, np.zeros(2), x, beta=0.1, dual_clip=0.5)
