"""Packed (padding-free) rows: the segment-masked forward, the packing plan, and the GRPO loss,
gradients, update and log-prob forward on packed rows against the padded ones (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import make_mesh, preset
from socialr1_jax.model.build import create_model
from socialr1_jax.model.logprobs import completion_logprobs
from socialr1_jax.rl import grpo
from socialr1_jax.rl import packed_step as ps
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import GRPOConfig, OptimConfig
from socialr1_jax.parallel.sharding import batch_sharding
from socialr1_jax.rl.packing import (_flat_take, concat_plans, first_fit_decreasing, pack,
                                     pack_plan, shift_plan, unpack)

CFG = preset("tiny")
PADDED_LOGPROBS = ts.make_logprob_fn(CFG)  # one program for every test's padded forward


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


def ragged_batch(model, b=8, p=6, c=20, seed=0):
    """A scored batch with ragged prompts (1..p tokens) and completions (1..c tokens)."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(2, CFG.vocab_size, (b, p)).astype(np.int32)
    cid = rng.integers(2, CFG.vocab_size, (b, c)).astype(np.int32)
    p_b, c_b = rng.integers(1, p + 1, b), rng.integers(1, c + 1, b)
    c_b[0] = c  # one completion at the cap
    pm = (np.arange(p)[None] >= (p - p_b)[:, None]).astype(np.int32)
    cm = (np.arange(c)[None] < c_b[:, None]).astype(np.int32)
    logp = np.asarray(PADDED_LOGPROBS(nnx.state(model), pid, pm, cid, cm))
    old = (logp - rng.choice([-0.6, -0.1, 0.0, 0.1, 0.5, 1.4], size=(b, c))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (b, c))).astype(np.float32)
    adv = np.asarray(grpo.advantages(rng.normal(size=b).astype(np.float32), 4))
    return ts.TrainBatch(pid, pm, cid, cm, old, ref, adv)


def test_packed_forward_equals_each_sequence_alone(model):
    """Three sequences in one row and one in another (segment ids, positions restarting):
    each sequence's logits are the ones it gets alone (run as a right-padded batch, whose
    forward test_model.py checks against transformers)."""
    rng = np.random.default_rng(3)
    lengths = (5, 9, 3, 12)
    alone = rng.integers(0, CFG.vocab_size, (4, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids, seg = np.zeros((2, 17), np.int32), np.zeros((2, 17), np.int32)
    at, where = [0, 0], []
    for k, (n, r) in enumerate(zip(lengths, (0, 0, 0, 1))):
        ids[r, at[r]:at[r] + n], seg[r, at[r]:at[r] + n] = alone[k, :n], k + 1
        where.append((r, at[r]))
        at[r] += n
    both = jax.jit(lambda i, s, a, m: (model(i, segment_ids=s), model(a, m)))
    packed, ref = (np.asarray(x) for x in both(ids, seg, alone, mask))
    for k, (n, (r, a)) in enumerate(zip(lengths, where)):
        np.testing.assert_allclose(packed[r, a:a + n], ref[k, :n], atol=2e-5, rtol=1e-5)


def test_plan_keeps_sequences_whole_and_unpacks(model):
    batch = ragged_batch(model)
    plan = pack_plan(batch.prompt_mask, batch.completion_mask, row_len=26, rows_multiple=2)
    lengths = batch.prompt_mask.sum(1) + batch.completion_mask.sum(1)
    assert plan.rows % 2 == 0 and plan.rows <= len(first_fit_decreasing(lengths, 26)) + 1
    pb = pack(batch, plan)
    # every sequence sits in one row, its tokens in order; its loss tokens are its completion's
    for i in range(batch.size):
        r, t = np.nonzero((np.asarray(plan.seq_of) == i) & (np.asarray(pb.segment_ids) > 0))
        assert len(set(r)) == 1 and len(t) == lengths[i]
        seq = np.concatenate([batch.prompt_ids[i][batch.prompt_mask[i] == 1],
                              batch.completion_ids[i][batch.completion_mask[i] == 1]])
        np.testing.assert_array_equal(np.asarray(pb.ids)[r, t], seq)
    assert int(pb.loss_mask.sum()) == int(batch.completion_mask.sum())
    back = np.asarray(unpack(pb.old_logp, plan))
    np.testing.assert_array_equal(back * batch.completion_mask,
                                  batch.old_logp * batch.completion_mask)
    with pytest.raises(ValueError, match="left-padded"):
        pack_plan(1 - batch.prompt_mask, batch.completion_mask)
    with pytest.raises(ValueError, match="does not fit a packed row of 8"):
        pack_plan(batch.prompt_mask, batch.completion_mask, row_len=8)
    # the trainer's bucketing: rows in steps of ~B/8 (and of the micro-batches x shards)
    assert [ps.bucket_rows(n, 64, 8) for n in (1, 8, 9, 23)] == [8, 8, 16, 24]
    assert [ps.bucket_rows(n, 256, 2) for n in (1, 33, 100)] == [32, 64, 128]
    bucketed = ps.plan_batch(batch.prompt_mask, batch.completion_mask, row_len=26, multiple=2)
    assert bucketed.rows == ps.bucket_rows(len(first_fit_decreasing(lengths, 26)), 8, 2)


def test_packed_loss_equals_padded_in_every_mode(model):
    """The policy's log-probs on packed rows are the padded ones, and so are the loss, its
    metrics and its gradient with respect to the log-probs, for every aggregation mode
    (the gradient with respect to the weights: the update test below)."""
    batch = ragged_batch(model)
    plan = pack_plan(batch.prompt_mask, batch.completion_mask, row_len=32)
    pb = pack(batch, plan)
    logp0 = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                batch.completion_mask)
    logp1 = jax.jit(lambda *a: ps.packed_logprobs(model, *a))(pb.ids, pb.segment_ids,
                                                               pb.positions, pb.targets)
    m = batch.completion_mask
    np.testing.assert_allclose(np.asarray(unpack(logp1, plan)) * m, np.asarray(logp0) * m,
                               atol=2e-5)
    for agg in grpo.AGG_MODES:
        gcfg = GRPOConfig(group_size=4, beta=0.1, agg=agg)
        kw = dict(beta=0.1, agg=agg, entropy=None)

        def padded(lp):
            norms = dict(zip(("num_tokens", "num_seqs", "loss_scale_factor"),
                             grpo.batch_normalisers(m, agg)))
            return grpo.loss(lp, batch.old_logp, batch.ref_logp, batch.advantages, m, **kw,
                             **norms)

        def packed(lp):
            norms = dict(zip(("num_tokens", "num_seqs", "loss_scale_factor"),
                             ps.packed_normalisers(pb, gcfg)))
            return grpo.loss(lp, pb.old_logp, pb.ref_logp, pb.advantages, pb.loss_mask, **kw,
                             segment_ids=pb.segment_ids, **norms)

        (l0, m0), g0 = jax.value_and_grad(padded, has_aux=True)(logp0)
        (l1, m1), g1 = jax.value_and_grad(packed, has_aux=True)(logp1)
        assert abs(float(l1) - float(l0)) <= 1e-6, (agg, float(l0), float(l1))
        for k in ("pg_loss", "kl", "clip_frac_high", "clip_frac_low", "ppo_kl", "num_tokens"):
            assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5, abs=1e-6), (agg, k)
        np.testing.assert_allclose(np.asarray(unpack(g1, plan)), np.asarray(g0) * m,
                                   rtol=1e-5, atol=1e-8)


def test_packed_update_with_micro_batches_equals_padded(model):
    """One update over 8 ragged sequences in 2 micro-batches, padded vs packed (rows in
    multiples of 2): the same loss, metrics and new weights; the packed log-prob forward
    gives the padded one's log-probs back through `unpack`."""
    ocfg = OptimConfig(lr=1e-3, eps=1e-3)  # eps: see test_train_step's micro-batch test
    gcfg = GRPOConfig(group_size=4, beta=0.04, agg="seq-mean-token-mean")
    batch = ragged_batch(model, seed=1)
    plan = pack_plan(batch.prompt_mask, batch.completion_mask, rows_multiple=2)
    pb = pack(batch, plan)
    params = nnx.state(model)
    s0, m0 = ts.make_train_step(CFG, ocfg, gcfg, micro_batch_size=4)(
        ts.init_train_state(params, ocfg), ts.put_batch(batch, None))
    s1, m1 = ps.make_packed_train_step(CFG, ocfg, gcfg, micro_batches=2)(
        ts.init_train_state(params, ocfg), pb)
    for k in ("loss", "kl", "grad_norm", "num_tokens", "adv_mean", "adv_std", "adv_max"):
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5, abs=1e-6), k
    assert abs(float(m1["loss"]) - float(m0["loss"])) <= 1e-6
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)))
    assert diff <= 1e-6, diff
    logp = ps.make_packed_logprob_fn(CFG)(params, pb.ids, pb.segment_ids, pb.positions,
                                          pb.targets)
    ref = PADDED_LOGPROBS(params, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                          batch.completion_mask)
    m = batch.completion_mask
    np.testing.assert_allclose(np.asarray(unpack(logp, plan)) * m, np.asarray(ref) * m,
                               atol=2e-5)



def test_per_process_plans_give_the_padded_loss_in_every_mode(model):
    """What several processes do (`packed_step.process_plan`), on one host: each half of the
    batch planned alone into the same number of rows (the half needing fewer gets empty rows),
    re-indexed into the whole batch and stacked: the log-probs unpack to the padded ones, and
    the loss of every aggregation mode, its normalisers counted over the stacked rows, is the
    padded loss. Then `process_plan` itself on this one process and an 8-device mesh."""
    batch = ragged_batch(model, seed=4)
    halves = [slice(0, 4), slice(4, 8)]
    need = [len(first_fit_decreasing(batch.prompt_mask[h].sum(1) + batch.completion_mask[h]
                                     .sum(1), 26)) for h in halves]
    rows = max(need) + 1  # at least one empty row in each half
    plan = concat_plans([
        shift_plan(pack_plan(batch.prompt_mask[h], batch.completion_mask[h], row_len=26,
                             rows=rows), h.start, 8, 26) for h in halves])
    assert plan.rows == 2 * rows and plan.batch == 8
    pb = pack(batch, plan)
    assert int(pb.loss_mask.sum()) == int(batch.completion_mask.sum())
    logp1 = jax.jit(lambda *a: ps.packed_logprobs(model, *a))(pb.ids, pb.segment_ids,
                                                               pb.positions, pb.targets)
    logp0 = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                batch.completion_mask)
    m = batch.completion_mask
    np.testing.assert_allclose(np.asarray(unpack(logp1, plan)) * m, np.asarray(logp0) * m,
                               atol=2e-5)
    lp1 = jnp.where(pb.loss_mask > 0, _flat_take(logp0, plan.loss_src), 0.0)  # the same values
    for agg in grpo.AGG_MODES:
        kw = dict(beta=0.1, agg=agg, entropy=None)
        n0 = grpo.batch_normalisers(m, agg)
        n1 = ps.packed_normalisers(pb, GRPOConfig(group_size=4, beta=0.1, agg=agg))
        l0, _ = grpo.loss(logp0, batch.old_logp, batch.ref_logp, batch.advantages, m, **kw,
                          num_tokens=n0[0], num_seqs=n0[1], loss_scale_factor=n0[2])
        l1, _ = grpo.loss(lp1, pb.old_logp, pb.ref_logp, pb.advantages, pb.loss_mask, **kw,
                          segment_ids=pb.segment_ids, num_tokens=n1[0], num_seqs=n1[1],
                          loss_scale_factor=n1[2])
        assert abs(float(l1) - float(l0)) <= 1e-6, (agg, float(l0), float(l1))

    mesh = make_mesh(2, 4, 1)
    two = batch_sharding(mesh, 2)
    glob = ps.process_plan(jax.device_put(batch.prompt_mask, two),
                           jax.device_put(batch.completion_mask, two), mesh, row_len=26,
                           multiple=8)
    one = ps.plan_batch(batch.prompt_mask, batch.completion_mask, row_len=26, multiple=8)
    for k in ("tok_src", "segment_ids", "positions", "loss_src", "seq_of"):
        np.testing.assert_array_equal(np.asarray(getattr(glob, k)), np.asarray(getattr(one, k)))
    # A sequence too long for the rows: every process raises (none waits in the all-gather).
    with pytest.raises(ValueError, match=r"packed_row_len=8: a sequence of \d+ tokens does not "
                                         r"fit a packed row of 8 \(on process\(es\) \[0\]\)"):
        ps.process_plan(jax.device_put(batch.prompt_mask, two),
                        jax.device_put(batch.completion_mask, two), mesh, row_len=8, multiple=8)
