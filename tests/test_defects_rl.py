"""Tests for defects planted in `rl/`, `rollout/` and `checkpoint/` that the other tests let
through (docs/testing.md lists each): every expectation is recomputed here in NumPy from the
published formulas (optax's AdamW and schedules, verl's GRPO statistics)."""

import math

import numpy as np
import pytest

from socialr1_jax.checkpoint.finite import NonFiniteError, check_array
from socialr1_jax.rl import grpo
from socialr1_jax.rl.optimizer import OptimConfig, make_optimizer, make_schedule
from socialr1_jax.rollout.checks import check_against_model


# ----------------------------------------------------------------------------- GRPO statistics
def test_reward_stats_match_numpy_group_by_group():
    # rows i*G + j: groups [1,1,1], [0,2,4], [3,3,3], [5,0,5]; G = 3
    r = [1.0, 1.0, 1.0, 0.0, 2.0, 4.0, 3.0, 3.0, 3.0, 5.0, 0.0, 5.0]
    got = grpo.reward_stats(r, 3)
    a = np.asarray(r)
    assert got["reward_mean"] == pytest.approx(a.mean())
    assert got["reward_std"] == pytest.approx(math.sqrt(((a - a.mean()) ** 2).mean()))
    assert (got["reward_min"], got["reward_max"]) == (0.0, 5.0)
    assert got["flat_group_frac"] == pytest.approx(2 / 4)


def test_batch_normalisers_count_only_rows_with_tokens():
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    tokens, seqs, scale = grpo.batch_normalisers(mask, "seq-mean-token-mean")
    assert (float(tokens), float(seqs), float(scale)) == (7.0, 3.0, 4.0)
    _, _, scale = grpo.batch_normalisers(mask, "seq-mean-token-sum-norm", loss_scale_factor=16)
    assert float(scale) == 16.0
    empty = np.zeros((2, 3))
    assert [float(x) for x in grpo.batch_normalisers(empty, "token-mean")[:2]] == [1.0, 1.0]


def test_seq_mean_aggregation_skips_empty_rows():
    mat = np.array([[1.0, 3.0, 9.0], [7.0, 7.0, 7.0], [2.0, 4.0, 6.0]])
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    # row means 2 and 4 over the 2 rows that have tokens; token sums 4 and 12
    assert float(grpo.aggregate(mat, mask, "seq-mean-token-mean")) == pytest.approx(3.0)
    assert float(grpo.aggregate(mat, mask, "seq-mean-token-sum")) == pytest.approx(8.0)
    assert float(grpo.aggregate(mat, mask, "token-mean")) == pytest.approx(16 / 5)
    assert float(grpo.aggregate(mat, mask, "seq-mean-token-sum-norm")) == pytest.approx(16 / 3)


# ----------------------------------------------------------------------------- optimizer
def ref_lr(step, *, lr, warmup, decay_steps, alpha, schedule):
    """optax's linear warm-up then cosine decay (to alpha * lr) or constant, by hand."""
    if warmup and step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    t = min(step - warmup, decay_steps - warmup) / (decay_steps - warmup)
    return lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)


@pytest.mark.parametrize("schedule, warmup, decay", [("cosine", 4, 0), ("cosine", 3, 12),
                                                     ("constant", 5, 0), ("cosine", 0, 0)])
def test_schedule_by_hand(schedule, warmup, decay):
    cfg = OptimConfig(lr=0.1, schedule=schedule, warmup_steps=warmup, decay_steps=decay,
                      min_lr_ratio=0.1)
    total = 20
    sched = make_schedule(cfg, total)
    for step in range(total + 3):
        want = ref_lr(step, lr=0.1, warmup=warmup, decay_steps=decay or total, alpha=0.1,
                      schedule=schedule)
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), step


def test_adamw_with_global_norm_clipping_by_hand():
    import jax.numpy as jnp

    cfg = OptimConfig(lr=0.01, weight_decay=0.1, max_grad_norm=1.0)
    opt, _ = make_optimizer(cfg, 10)
    p = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.25])}
    grads = [{"w": jnp.array([6.0, 0.0, -8.0]), "b": jnp.array([0.0])},     # norm 10: clipped
             {"w": jnp.array([0.1, 0.2, -0.2]), "b": jnp.array([0.1])}]     # norm < 1: kept
    state = opt.init(p)
    ref = {k: np.asarray(v, np.float64) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t, g in enumerate(grads, 1):
        updates, state = opt.update(g, state, p)
        p = {k: p[k] + updates[k] for k in p}
        gn = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in g.values()))
        scale = min(1.0, 1.0 / gn)
        for k in ref:
            gk = np.asarray(g[k], np.float64) * scale
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk ** 2
            mh, vh = m[k] / (1 - 0.9 ** t), v[k] / (1 - 0.999 ** t)
            ref[k] = ref[k] - 0.01 * (mh / (np.sqrt(vh) + 1e-8) + 0.1 * ref[k])
    for k in ref:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- checks
def test_prompt_plus_new_tokens_may_fill_the_cache_exactly():
    kw = dict(vocab=50, max_len=10, eos_ids=[1], pad_id=0)
    check_against_model([[3] * 6], max_new_tokens=4, **kw)  # 6 + 4 = 10 positions: fits
    with pytest.raises(ValueError, match=r"needs 11 positions, more than the cache allows \(10\)"):
        check_against_model([[3] * 7], max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 50\)"):
        check_against_model([[3, 50]], max_new_tokens=1, **kw)
    check_against_model([[49]], max_new_tokens=1, **kw)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad, word", [(np.inf, "an Inf"), (-np.inf, "an Inf"),
                                       (np.nan, "a NaN")])
def test_non_finite_found_and_located_in_every_float_dtype(dtype, bad, word):
    import ml_dtypes  # noqa: F401 (registers bfloat16 with NumPy)

    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    arr[1, 2, 1] = bad
    arr = arr.astype(dtype)
    with pytest.raises(NonFiniteError, match=rf"tensor w has {word} at \[1, 2, 1\]"):
        check_array(arr, "w", "ckpt")
    check_array(np.nan_to_num(arr.astype(np.float32), nan=0, posinf=1, neginf=-1).astype(dtype),
                "w", "ckpt")
