"""The jitted train step: gradients vs finite differences, micro-batch accumulation, NaN skipping,
shardings/donation, abstract compilation, schedules, several updates per rollout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import make_mesh, preset
from socialr1_jax.rl import grpo
from socialr1_jax.rl import rollout_updates as ru
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.optimizer import make_schedule
from socialr1_jax.model.build import create_model
from socialr1_jax.parallel.sharding import path_str
from socialr1_jax.rl.config import GRPOConfig, OptimConfig

CFG = preset("tiny")


def make_batch(model, b=16, p=8, c=12, seed=0, temperature=1.0):
    """A scored batch whose old/ref log-probs sit near the model's own (ratios across clips)."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(2, CFG.vocab_size, (b, p)).astype(np.int32)
    pm = np.ones((b, p), np.int32)
    pm[:, : rng.integers(0, 3)] = 0
    cid = rng.integers(2, CFG.vocab_size, (b, c)).astype(np.int32)
    lengths = rng.integers(1, c + 1, b)
    cm = (np.arange(c)[None] < lengths[:, None]).astype(np.int32)
    fn = ts.make_logprob_fn(CFG, None, temperature=temperature)
    logp = np.asarray(fn(nnx.state(model), pid, pm, cid, cm))
    # Keep every log-ratio >= 0.03 away from the clip edges log(0.8), log(1.2) and log(3), so
    # finite differences never straddle a kink.
    delta = rng.choice([-0.6, -0.1, -0.05, 0.0, 0.05, 0.1, 0.5, 1.4], size=(b, c))
    old = (logp - delta).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (b, c))).astype(np.float32)
    adv = np.asarray(grpo.advantages(rng.normal(size=b).astype(np.float32), 4))
    return ts.TrainBatch(pid, pm, cid, cm, old, ref, adv)


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


def test_gradient_matches_finite_differences(model):
    """d loss / d params along a few directions vs central differences (fp32, h = 1e-3)."""
    gcfg = GRPOConfig(group_size=4, beta=0.1, kl="k3", agg="seq-mean-token-mean")
    batch = make_batch(model, temperature=0.7)
    graphdef, params = nnx.split(model)

    def loss(p):
        return ts.policy_loss(graphdef, p, batch, gcfg, temperature=0.7)[0]

    grads = jax.jit(jax.grad(loss))(params)
    loss_jit = jax.jit(loss)
    rng = np.random.default_rng(1)
    flat, tree = jax.tree.flatten(params)
    gflat = jax.tree.leaves(grads)
    names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    directions = {"gradient": [g / jnp.linalg.norm(jnp.concatenate(
        [x.ravel() for x in gflat])) for g in gflat]}
    for target in ("layers/q_lnhd", "layers/down_ldf", "embed_vd"):
        vs = [jnp.zeros_like(x) for x in flat]
        i = names.index(target)
        # half gradient, half random: a generic direction with a measurable slope
        r = rng.normal(size=flat[i].shape).astype(np.float32)
        v = np.asarray(gflat[i]) / np.linalg.norm(gflat[i]) + r / np.linalg.norm(r)
        vs[i] = jnp.asarray(v / np.linalg.norm(v))
        directions[target] = vs
    h = 1e-3
    for name, vs in directions.items():
        plus = jax.tree.unflatten(tree, [x + h * v for x, v in zip(flat, vs)])
        minus = jax.tree.unflatten(tree, [x - h * v for x, v in zip(flat, vs)])
        fd = (float(loss_jit(plus)) - float(loss_jit(minus))) / (2 * h)
        analytic = float(sum(jnp.vdot(g, v) for g, v in zip(gflat, vs)))
        # fp32 loss ~ 1 -> rounding ~ 1e-7 / h = 1e-4 on fd; h^2 truncation ~ 1e-6
        assert abs(analytic) > 1e-3, (name, analytic)
        assert abs(fd - analytic) <= 2e-2 * abs(analytic) + 3e-4, (name, fd, analytic)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_give_the_same_update_as_one_batch(model, agg):
    mesh = make_mesh(1, 8, 1)
    # Adam's first step is lr * g / (|g| + eps): with eps 1e-8 a gradient component that is zero
    # up to fp32 rounding (1e-12 vs -1e-12) becomes +-lr, so the comparison would measure
    # rounding noise. eps 1e-3 keeps the update a smooth function of the accumulated gradient.
    ocfg = OptimConfig(lr=1e-3, weight_decay=0.01, eps=1e-3)
    gcfg = GRPOConfig(group_size=4, beta=0.04, agg=agg)
    batch = ts.put_batch(make_batch(model, b=32), mesh)
    params = nnx.state(model)
    out = {}
    for mbs in (0, 8):  # one batch of 32 vs 4 micro-batches of 8 (1 row per device each)
        step = ts.make_train_step(CFG, ocfg, gcfg, mesh, micro_batch_size=mbs)
        state = ts.init_train_state(params, ocfg, mesh)
        out[mbs] = step(state, batch)
    (s1, m1), (s4, m4) = out[0], out[8]
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)))
    moved = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(params)))
    assert moved > 5e-4  # the update really moved the weights (lr 1e-3)
    assert diff <= 1e-6, diff
    for k in ("loss", "pg_loss", "kl", "grad_norm", "entropy", "num_tokens"):
        assert float(m4[k]) == pytest.approx(float(m1[k]), rel=1e-5, abs=1e-7), k
    # optimizer state and params stay sharded by the rule table, the state was donated
    emb = s4.params["embed_vd"][...]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    mu = s4.opt_state[1][0].mu["embed_vd"][...]
    assert mu.sharding.spec == emb.sharding.spec


def test_non_finite_update_is_skipped_and_counted(model):
    ocfg = OptimConfig(lr=1e-3)
    gcfg = GRPOConfig(group_size=4)
    step = ts.make_train_step(CFG, ocfg, gcfg, None)
    good = make_batch(model)
    bad = ts.TrainBatch(**{**good.__dict__, "advantages": np.where(
        np.arange(good.size) == 3, np.nan, good.advantages).astype(np.float32)})
    # An Inf log-prob would be clipped to +-20 by verl's formulas, so the Inf goes where
    # nothing clips it: an advantage. NaN old log-probs poison the ratio.
    inf_adv = ts.TrainBatch(**{**good.__dict__, "advantages": np.where(
        np.arange(good.size) == 5, np.inf, good.advantages).astype(np.float32)})
    nan_old = ts.TrainBatch(**{**good.__dict__, "old_logp": np.where(
        good.completion_mask > 0, np.nan, 0.0).astype(np.float32)})
    state = ts.init_train_state(nnx.state(model), ocfg, None)
    state, m = step(state, ts.put_batch(good, None))
    assert int(state.step) == 1 and float(m["skipped"]) == 0
    snapshot = jax.tree.map(np.asarray, (state.params, state.opt_state))
    for i, b in enumerate((bad, inf_adv, nan_old)):
        state, m = step(state, ts.put_batch(b, None))
        assert float(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
        assert int(state.skipped) == i + 1 and int(state.consecutive_skips) == i + 1
        assert int(state.step) == 1
        for a, b_ in zip(jax.tree.leaves(snapshot), jax.tree.leaves((state.params, state.opt_state))):
            np.testing.assert_array_equal(a, np.asarray(b_))
    state, m = step(state, ts.put_batch(good, None))
    assert int(state.step) == 2 and int(state.consecutive_skips) == 0 and int(state.skipped) == 3
    assert np.isfinite(float(m["loss"]))


def test_bf16_params_keep_an_fp32_master_and_compile_abstractly():
    """bf16 weights: fp32 master + fp32 moments; an update of 1e-6 moves the master although
    it is below bf16 resolution. The step also lowers from ShapeDtypeStructs on 8 devices with
    the state donated (aliased)."""
    cfg = CFG.replace(param_dtype="bfloat16", dtype="bfloat16", remat="full")
    mesh = make_mesh(1, 8, 1)
    ocfg = OptimConfig(lr=1e-6)
    gcfg = GRPOConfig(group_size=4)
    abstract = ts.abstract_train_state(cfg, ocfg, mesh)
    assert jax.tree.leaves(abstract.params)[0].dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract.master))
    mus = abstract.opt_state[1][0].mu
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(mus))
    step = ts.make_train_step(cfg, ocfg, gcfg, mesh, micro_batch_size=8)
    compiled = step.lower(abstract, ts.abstract_batch(16, 8, 12, mesh)).compile()
    mem = compiled.memory_analysis()
    per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                     for x in jax.tree.leaves((abstract.master, abstract.opt_state)))
    assert mem.alias_size_in_bytes >= per_device

    model = create_model(cfg, mesh=mesh)
    state = ts.init_train_state(nnx.state(model), ocfg, mesh)
    batch = ts.put_batch(make_batch(create_model(CFG), b=16), mesh)
    before = np.asarray(state.master["embed_vd"][...])
    state, m = compiled(state, batch)  # the abstractly compiled program runs the real state
    after = np.asarray(state.master["embed_vd"][...])
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1
    assert 0 < np.max(np.abs(after - before)) < 1e-5
    np.testing.assert_array_equal(np.asarray(state.params["embed_vd"][...]),
                                  after.astype(jnp.bfloat16))


def test_schedules():
    cos = make_schedule(OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10,
                                       min_lr_ratio=0.1), total_updates=110)
    assert float(cos(0)) == 0.0
    assert float(cos(5)) == pytest.approx(5e-4)
    assert float(cos(10)) == pytest.approx(1e-3)
    assert float(cos(60)) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(cos(110)) == pytest.approx(1e-4, rel=1e-5)
    const = make_schedule(OptimConfig(lr=5e-7), total_updates=600)
    assert float(const(0)) == float(const(599)) == pytest.approx(5e-7)


def test_mini_batches_and_epochs(model):
    ocfg = OptimConfig(lr=1e-3, warmup_steps=4)
    gcfg = GRPOConfig(group_size=4)
    step = ts.make_train_step(CFG, ocfg, gcfg, None, total_updates=8)
    state = ts.init_train_state(nnx.state(model), ocfg, None, total_updates=8)
    batch = make_batch(model, b=16)
    state, hist = ru.rollout_updates(step, state, batch, mini_batch_size=8, epochs=2, seed=0)
    assert len(hist) == 4 and int(state.step) == 4
    lrs = [float(m["lr"]) for m in hist]
    assert lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])
    # the first update of a fresh rollout sees ratio == exp(logp - old) of the batch as built;
    # later ones see the moved policy: clip/KL metrics change
    assert float(hist[0]["ppo_kl"]) != float(hist[-1]["ppo_kl"])
    with pytest.raises(ValueError, match="does not divide"):
        ru.rollout_updates(step, state, batch, mini_batch_size=5)


@pytest.mark.parametrize("remat", [True, False])
def test_completion_logprobs_and_entropy_match_transformers(tiny_hf, remat):
    """Policy/reference log-probs (chunked head, left-padded prompts, temperature) and the
    entropy metric vs transformers' Qwen3, row by row without padding; the gradient does not
    depend on whether the head is rematerialised."""
    import torch
    from transformers import Qwen3ForCausalLM

    from socialr1_jax import load_model
    from socialr1_jax.model.logprobs import completion_logprobs

    model = load_model(tiny_hf)
    hf = Qwen3ForCausalLM.from_pretrained(tiny_hf).float().eval()
    rng = np.random.default_rng(4)
    b, p, c, temp = 4, 7, 12, 0.8
    pid = rng.integers(0, 256, (b, p)).astype(np.int32)
    plen = np.array([7, 3, 5, 1])
    pm = (np.arange(p)[None] >= p - plen[:, None]).astype(np.int32)
    cid = rng.integers(0, 256, (b, c)).astype(np.int32)
    clen = np.array([12, 4, 1, 9])
    cm = (np.arange(c)[None] < clen[:, None]).astype(np.int32)

    def fn(params):
        m = nnx.merge(nnx.graphdef(model), params)
        return completion_logprobs(m, pid, pm, cid, cm, temperature=temp, chunk=5,
                                   with_entropy=True, remat=remat)

    logp, ent = jax.jit(fn)(nnx.state(model))
    for i in range(b):
        ids = np.concatenate([pid[i, p - plen[i]:], cid[i, :clen[i]]])
        with torch.no_grad():
            logits = hf(torch.as_tensor(ids[None]).long()).logits[0].double() / temp
        lsm = torch.log_softmax(logits, -1)[plen[i] - 1: plen[i] - 1 + clen[i]]
        want = lsm.gather(-1, torch.as_tensor(cid[i, :clen[i], None]).long())[:, 0].numpy()
        want_ent = -(lsm.exp() * lsm).sum(-1).numpy()
        np.testing.assert_allclose(np.asarray(logp[i, :clen[i]]), want, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(ent[i, :clen[i]]), want_ent, atol=2e-5, rtol=1e-5)

    def total(params):
        m = nnx.merge(nnx.graphdef(model), params)
        lp = completion_logprobs(m, pid, pm, cid, cm, temperature=temp, chunk=5, remat=remat)
        return jnp.sum(jnp.where(cm > 0, lp, 0.0))

    other = jax.jit(jax.grad(lambda q: jnp.sum(jnp.where(cm > 0, completion_logprobs(
        nnx.merge(nnx.graphdef(model), q), pid, pm, cid, cm, temperature=temp, chunk=5,
        remat=not remat), 0.0))))(nnx.state(model))
    mine = jax.jit(jax.grad(total))(nnx.state(model))
    for a, b_ in zip(jax.tree.leaves(mine), jax.tree.leaves(other)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-5, atol=1e-7)
