"""The sampler against transformers' greedy `generate`, a NumPy sampling reference, and the
trainer's log-prob recomputation; EOS / lengths / early stop; sharding; bucketing; bad inputs."""

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from socialr1_jax import create_model, load_model, make_mesh, preset
from socialr1_jax.rollout import sampler as S
from socialr1_jax.model.logprobs import completion_logprobs
from tests.hf_fixtures import make_hf_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import decode_copies  # noqa: E402  (benchmarks/decode_copies.py: reading compiled HLO)

NEW = 64


def _prompts(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _hf_greedy(ref, prompts, new):
    """transformers' greedy generate on the left-padded batch (no EOS: runs `new` tokens)."""
    p = max(map(len, prompts))
    ids = np.zeros((len(prompts), p), np.int64)
    mask = np.zeros_like(ids)
    for i, pr in enumerate(prompts):
        ids[i, p - len(pr):], mask[i, p - len(pr):] = pr, 1
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert out.shape[1] == p + new
    return out[:, p:].numpy()


@pytest.fixture(scope="module", params=[(True, 4, 2, 4), (False, 8, 2, 1)],
                ids=["tied-gqa2", "untied-gqa4"])
def greedy_case(request, tmp_path_factory):
    """A random checkpoint with std 0.3 weights, its HF greedy reference and ours loaded."""
    tie, heads, kv, seed = request.param
    d = tmp_path_factory.mktemp("greedy")
    ref = make_hf_checkpoint(d, tie=tie, heads=heads, kv_heads=kv, init_std=0.3, seed=seed)
    prompts = _prompts(256, [7, 12, 1, 9], seed=seed)
    expected = _hf_greedy(ref, prompts, NEW)
    return load_model(str(d)), prompts, expected


def test_greedy_equals_transformers_generate(greedy_case):
    model, prompts, expected = greedy_case
    # A broken cache can still reproduce a model that repeats one token: demand variety.
    assert len(np.unique(expected)) >= 20, np.unique(expected)
    assert min(len(set(row)) for row in expected.tolist()) >= 8
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0)
    got = np.asarray(res.tokens)
    assert got.shape == (4, NEW)
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(res.mask).all() and (np.asarray(res.lengths) == NEW).all()
    assert res.steps == NEW


def test_group_shares_one_prefill_and_matches_transformers(greedy_case):
    """num_samples=3: the group's prefill runs once and its cache is copied; greedy rows must
    still equal transformers' output for their prompt, in the order i*n + j."""
    model, prompts, expected = greedy_case
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, num_samples=3)
    np.testing.assert_array_equal(np.asarray(res.tokens), np.repeat(expected, 3, axis=0))


def test_eos_stops_rows_and_the_loop(greedy_case):
    """Each row stops at its first EOS (several ids), which it keeps; then pads, mask 0."""
    model, prompts, expected = greedy_case
    # Two EOS ids taken from the reference so that every row stops at a known place.
    eos = (int(expected[0, 10]), int(expected[1, 20]))
    stop = [next((t + 1 for t, tok in enumerate(row) if tok in eos), NEW) for row in expected]
    assert min(stop) <= 11 and len(set(stop)) > 1
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, eos_ids=eos, pad_id=3)
    tokens, mask = np.asarray(res.tokens), np.asarray(res.mask)
    for r, n in enumerate(stop):
        np.testing.assert_array_equal(tokens[r, :n], expected[r, :n])
        assert (tokens[r, n:] == 3).all() and mask[r, :n].all() and not mask[r, n:].any()
        assert (np.asarray(res.logprobs)[r, n:] == 0).all()
    np.testing.assert_array_equal(np.asarray(res.lengths), stop)
    # The loop ran only until the last row finished, not to max_new_tokens.
    assert res.steps == max(stop)


def test_on_tokens_streams_each_step_in_order(greedy_case):
    """on_tokens (token streaming) gets step 0, 1, ... with each row's token, -1 once the row
    is done (its EOS delivered first), and the result is the one without it."""
    model, prompts, expected = greedy_case
    eos = (int(expected[0, 10]), int(expected[1, 20]))
    seen = []
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, eos_ids=eos, pad_id=3,
                   on_tokens=lambda step, toks: seen.append((step, toks.copy())))
    tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
    assert [s for s, _ in seen] == list(range(int(res.steps)))
    streamed = np.stack([t for _, t in seen], axis=1)  # [rows, steps]
    for r, n in enumerate(lengths):
        np.testing.assert_array_equal(streamed[r, :n], tokens[r, :n])
        assert (streamed[r, n:] == -1).all()
    plain = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, eos_ids=eos, pad_id=3)
    np.testing.assert_array_equal(np.asarray(plain.tokens), tokens)
    with pytest.raises(ValueError, match="on_tokens"):
        S.sample(model, prompts, max_new_tokens=4, temperature=0, slots=2,
                 on_tokens=lambda *a: None)


def test_early_stop_when_all_rows_done(greedy_case):
    model, prompts, expected = greedy_case
    eos = tuple(int(expected[r, 4]) for r in range(4))  # every row stops by its 5th token
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, eos_ids=eos)
    lengths = np.asarray(res.lengths)
    assert lengths.max() <= 5 and res.steps == lengths.max()


def _truncated_reference(logits, temperature, top_k, top_p):
    """softmax(logits / T), cut to top-k, renormalised, cut to the smallest prefix with mass
    >= top_p, renormalised: written independently in NumPy (float64)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    k = top_k if top_k > 0 else len(p)
    keep[order[:k]] = True
    q = np.where(keep, p, 0)
    q /= q.sum()
    if top_p < 1:
        cum = np.cumsum(q[order])
        n = int(np.searchsorted(cum, top_p) + 1)  # first prefix whose mass reaches top_p
        nucleus = np.zeros_like(keep)
        nucleus[order[:n]] = True
        q = np.where(nucleus, q, 0)
        q /= q.sum()
    return q


@pytest.fixture(scope="module")
def dist_model():
    # Seed chosen so that every case below keeps >= 10 tokens (a one-token nucleus would pass
    # any sampler).
    return create_model(preset("tiny", init_std=0.3), seed=9)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 20, 1.0), (1.3, 0, 0.8), (0.9, 40, 0.7)])
def test_first_token_distribution(dist_model, temperature, top_k, top_p):
    """4000 draws of the first token against the truncated softmax of the model's logits.

    Bound: E|p_hat_i - p_i| <= sqrt(p_i (1 - p_i) / N), so the expected total variation is at
    most s = 0.5 * sum_i sqrt(p_i (1 - p_i) / N) (the normal approximation gives 0.8 s). TV is
    a sum over ~100 nearly independent terms, so its spread is a small fraction of s; we allow
    2 s (2.5x the expectation) and check the same draws are rejected against a wrong
    reference. Tokens outside the kept set must never appear (exact).
    """
    n = 4000
    prompt = [5, 17, 99, 3, 250, 42]
    logits = np.asarray(dist_model(jnp.asarray([prompt]))[0, -1], np.float64)
    q = _truncated_reference(logits, temperature, top_k, top_p)
    assert (q > 0).sum() >= 10, "degenerate case: too few tokens kept to test the draws"
    res = S.sample(dist_model, [prompt], max_new_tokens=1, temperature=temperature, top_k=top_k,
                   top_p=top_p, num_samples=n, seed=11)
    tokens = np.asarray(res.tokens)[:, 0]
    emp = np.bincount(tokens, minlength=len(q)) / n
    assert emp[q == 0].sum() == 0, "sampled a token outside the top-k / top-p set"
    tv = 0.5 * np.abs(emp - q).sum()
    bound = 2 * 0.5 * np.sqrt(q * (1 - q) / n).sum()
    print(f"TV {tv:.4f} bound {bound:.4f} wrong {0.5 * np.abs(emp - _truncated_reference(logits, temperature * 1.5, 0, 1.0)).sum():.4f} support {(q > 0).sum()}")
    assert tv < bound, (tv, bound)
    # Power: the same draws against the untruncated / wrong-temperature distribution fail.
    wrong = _truncated_reference(logits, temperature * 1.5, 0, 1.0)
    assert 0.5 * np.abs(emp - wrong).sum() > bound
    # The reported log-probs are those of softmax(logits / T) before truncation.
    full = logits / temperature - np.log(np.exp(logits / temperature).sum())
    np.testing.assert_allclose(np.asarray(res.logprobs)[:, 0], full[tokens], atol=1e-5)


def test_top_p_candidates_and_bisection_agree():
    """The partial-sort fast path and the bisection fallback of top-p give the reference cut."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (6, 300)).astype(np.float32)
    logits[0, :5] = logits[0, 5]  # ties: kept together
    for top_p in (0.3, 0.9, 0.999):
        ref = np.stack([_truncated_reference(l, 1.0, 0, top_p) > 0 for l in logits])
        ref[0, :6] = ref[0, :6].any()
        for cand in (8, 64, 300):  # 8 forces the bisection; 300 = V: the sort only
            kept = S.truncate_logits(jnp.asarray(logits), top_k=0, top_p=top_p, use_top_p=True,
                                     candidates=cand)
            np.testing.assert_array_equal(np.isfinite(np.asarray(kept)), ref)
        lse = jax.nn.logsumexp(jnp.asarray(logits), axis=-1, keepdims=True)
        thresh = S._nucleus_threshold_bisect(jnp.asarray(logits), lse, top_p)
        np.testing.assert_array_equal(np.asarray(thresh), np.where(ref, logits, np.inf).min(-1))


def test_inverse_cdf_and_argmax_helpers():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (3, 2500)).astype(np.float32)
    logits[:, 1000:] = -np.inf  # only the first 1000 tokens (first chunk) may be drawn
    logits[2, 1:] = -np.inf     # a single allowed token
    u = jnp.asarray([0.0, 0.999999, 0.5], jnp.float32)
    tok = np.asarray(S.inverse_cdf_sample(u, jnp.asarray(logits), chunk=256))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1) / p.sum(-1, keepdims=True)
    expected = [int(np.searchsorted(cdf[r], float(u[r]), side="right")) for r in range(3)]
    np.testing.assert_array_equal(tok, expected)
    assert (tok < 1000).all() and tok[2] == 0
    x = jnp.asarray([[1.0, 3.0, 3.0, 2.0], [0.0, -1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(S.argmax_first(x)), [1, 0])


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.9), (0.0, 0, 1.0), (1.2, 30, 0.95)])
def test_logprobs_equal_trainer_recomputation(greedy_case, temperature, top_k, top_p):
    model, prompts, expected = greedy_case
    eos = (int(expected[1, 5]),)
    res = S.sample(model, prompts, max_new_tokens=24, temperature=temperature, top_k=top_k,
                   top_p=top_p, num_samples=3, eos_ids=eos, seed=5)
    assert res.tokens.shape == (12, 24) and res.prompt_ids.shape == (12, 16)
    # row i*n+j is sample j of prompt i: the prompt is repeated per sample.
    np.testing.assert_array_equal(np.asarray(res.prompt_ids)[4:6], np.asarray(res.prompt_ids)[3:5])
    t = temperature if temperature > 0 else 1.0
    lp = completion_logprobs(model, res.prompt_ids, res.prompt_mask, res.tokens, res.mask,
                             temperature=t)
    m = np.asarray(res.mask) == 1
    diff = np.abs(np.asarray(lp) - np.asarray(res.logprobs))[m]
    assert m.sum() > 100 and diff.max() <= 1e-4, diff.max()


@pytest.mark.parametrize("shape,lengths", [((2, 4, 1), [5, 11, 2]), ((1, 4, 2), [5, 11, 2, 8])])
def test_sharded_sampling_equals_unsharded(tiny_hf, shape, lengths):
    # 3 prompts: 3 or 6 rows, padded to the 8 batch shards; 4 prompts x 2 samples: a shared
    # prefill on 4 rows split over 4 shards, with the heads split over 2 (tensor).
    prompts = _prompts(256, lengths, seed=1)
    plain = load_model(tiny_hf)
    mesh = make_mesh(*shape)
    sharded = load_model(tiny_hf, mesh=mesh)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, num_samples=2)):
        a = S.sample(plain, prompts, max_new_tokens=20, seed=3, **kw)
        b = S.sample(sharded, prompts, max_new_tokens=20, seed=3, mesh=mesh, **kw)
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


def test_bucketing_reuses_compiled_programs(tiny_hf):
    model = load_model(tiny_hf)
    S.sample(model, _prompts(256, [5, 3]), max_new_tokens=20, temperature=0)
    before = S.compiled_programs()
    for lengths, new in (([9, 2], 30), ([16, 1], 17), ([4, 4], 32)):  # prompt 16, gen 32 buckets
        res = S.sample(model, _prompts(256, lengths), max_new_tokens=new, temperature=0)
        assert res.tokens.shape == (2, new) and res.prompt_ids.shape == (2, 16)
    assert S.compiled_programs() == before
    assert [S.bucket(n) for n in (1, 16, 17, 64, 65, 1000, 1025, 3000)] == \
        [16, 16, 32, 64, 128, 1024, 2048, 3072]


def test_chunked_prefill_equals_single_pass(greedy_case):
    model, prompts, expected = greedy_case
    res = S.sample(model, prompts, max_new_tokens=NEW, temperature=0, prefill_chunk=4)
    np.testing.assert_array_equal(np.asarray(res.tokens), expected)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(max_new_tokens=-3), "max_new_tokens=-3"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(top_k=-1), "top_k=-1"),
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(eos_ids=(3, 256)), "eos id 256"),
    (dict(num_samples=0), "num_samples=0"),
    (dict(prompts=[]), "prompts is empty"),
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1, 300]]), r"token id\(s\) \[300\]"),
    (dict(max_new_tokens=2040), "prompt 0 has 10 tokens.*2050 positions.*2048"),
    (dict(max_cache_len=12), "prompt 0 has 10 tokens.*14 positions.*12"),
])
def test_bad_inputs(tiny_hf, kwargs, match):
    model = load_model(tiny_hf)
    args = dict(prompts=[list(range(10))], max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        S.sample(model, args.pop("prompts"), **args)


# ---- the compiled decode loop: cache written in place, weights never sliced per step ---------

def _loop_producers(text: str, shape: str) -> list[str]:
    """The opcode (a fusion's: its root's) of every instruction of type f32[shape] inside a while
    loop's body (computations reached from a `body=`, fusions included)."""
    comps = decode_copies.computations(text)
    return list(decode_copies.producers(comps, decode_copies.loop_computations(comps),
                                        shape).elements())


def _generate_hlo(model, unstack_layers: bool, b=2, p=8, n=16, mesh=None) -> str:
    """XLA's compiled sampling program (greedy, b prompts of p tokens, n new), on `mesh` with
    the parameters and rows sharded as `sample` shards them."""
    import contextlib

    from flax import nnx

    from socialr1_jax.parallel.sharding import batch_sharding, param_shardings

    graphdef, state = nnx.split(model)
    plan = S._Plan(new_len=n, greedy=True, top_k=0, use_top_p=False, pad_id=0, prefill_chunk=p,
                   unstack_layers=unstack_layers)
    rows = [np.zeros((b, p), np.int32), np.ones((b, p), np.int32), np.ones(b, bool)]
    if mesh is not None:
        state = jax.device_put(state, param_shardings(state, mesh))
        rows = [jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in rows]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return S._generate.lower(graphdef, state, *rows, jax.random.key(0), jnp.float32(1),
                                 jnp.float32(1), jnp.asarray([-1], jnp.int32), jnp.int32(n),
                                 plan=plan).compile().as_text()


def test_decode_loop_writes_the_cache_in_place_and_slices_no_weights():
    """In XLA's compiled sampler program: inside the decode loop, each layer's [B, K, S, H]
    cache is only ever produced by a dynamic-update-slice (an in-place write of the new slot, no
    per-step copy of the cache), and the loop takes no per-layer slice of a stacked weight (the
    slices are taken once, before it); the scanned alternative does slice them inside the loop.

    B=8: with this tiny model at B=2 (24 slots) XLA:CPU did not copy the stacked [L, B, K, S, H]
    cache that the loop used to carry; at B=8 it copied it after every layer's write (what
    KVCache.unstacked avoids)."""
    cfg = preset("tiny", num_layers=3)
    model = create_model(cfg)
    b, p, n = 8, 8, 16
    per_layer = f"{b},{cfg.num_kv_heads},{p + n},{cfg.head_dim}"          # [B, K, P + N, H]
    stacked = f"{cfg.num_layers},{per_layer}"
    gate_slice = rf"f32\[(1,)?{cfg.intermediate_size},{cfg.hidden_size}\]"  # one layer's gate
    text = _generate_hlo(model, True, b=b, p=p, n=n)
    producers = _loop_producers(text, per_layer)
    assert "dynamic-update-slice" in {p.removeprefix("fusion:") for p in producers}
    assert set(producers) <= {"parameter", "get-tuple-element", "tuple", "bitcast",
                              "dynamic-update-slice", "fusion:dynamic-update-slice"}, producers
    assert _loop_producers(text, stacked) == []
    for unstack in (True, False):
        text = text if unstack else _generate_hlo(model, False, b=b, p=p, n=n)
        # Weight slices whose op path is a loop inside a loop: the decode loop's layer scan.
        nested = [ln for ln in text.splitlines()
                  if re.search(rf"= {gate_slice}\S* (dynamic-)?slice\(", ln)
                  and "while/body/while/body" in ln]
        assert (len(nested) > 0) == (not unstack), nested[:2]


def test_per_layer_cache_is_sharded_inside_the_decode_loop():
    """On a (data 1, fsdp 4, tensor 2) mesh, each layer's cache in the compiled decode loop is a
    per-device shard (rows / 4, KV heads / 2), written in place; no device holds a whole one."""
    cfg = preset("tiny", num_layers=3)
    mesh = make_mesh(1, 4, 2)
    b, p, n = 8, 8, 16
    text = _generate_hlo(create_model(cfg, mesh=mesh), True, b=b, p=p, n=n, mesh=mesh)
    shard = f"{b // 4},{cfg.num_kv_heads // 2},{p + n},{cfg.head_dim}"
    whole = f"{b},{cfg.num_kv_heads},{p + n},{cfg.head_dim}"
    producers = _loop_producers(text, shard)
    assert "dynamic-update-slice" in {x.removeprefix("fusion:") for x in producers}
    assert set(producers) <= {"parameter", "get-tuple-element", "tuple", "bitcast",
                              "dynamic-update-slice", "fusion:dynamic-update-slice"}, producers
    assert _loop_producers(text, whole) == []
