"""The refill sampler (`sample(..., slots=K)`) against the static sampler and transformers.

Ragged caps and EOS ids the model really emits make sequences end at different steps, so freed
slots are refilled (the reported refill count is asserted); every sequence must get the static
sampler's tokens and mask exactly and its log-probs to float rounding, in the layout i*n + j.
"""

import numpy as np
import pytest

from socialr1_jax import load_model, make_mesh
from socialr1_jax.rollout import sampler as S
from socialr1_jax.rollout.checks import ArgumentError
from tests.hf_fixtures import make_hf_checkpoint
from tests.test_sampler import _hf_greedy

N_SAMPLES = 2
CAP = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random checkpoint (std 0.3: varied tokens) and transformers' model of it."""
    d = tmp_path_factory.mktemp("refill")
    return str(d), make_hf_checkpoint(d, init_std=0.3, seed=1)


@pytest.fixture(scope="module")
def case(checkpoint):
    """The checkpoint's model, its prompts, ragged caps and EOS ids."""
    d, ref = checkpoint
    model = load_model(d)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in [5, 9, 3, 12, 7]]
    rows = len(prompts) * N_SAMPLES
    caps = rng.integers(1, CAP + 1, rows)
    caps[3] = CAP  # one sequence runs to the longest cap
    hf = _hf_greedy(ref, prompts, CAP)  # transformers' greedy continuation, no EOS
    # EOS ids the greedy rows emit part-way (so some rows stop early by EOS, not by their cap).
    eos = sorted({int(hf[0, 4]), int(hf[2, 6])})
    return model, prompts, caps.tolist(), eos, np.repeat(hf, N_SAMPLES, axis=0)


def _run(case, temperature, slots, **kw):
    model, prompts, caps, eos, _ = case
    return S.sample(model, prompts, max_new_tokens=caps, temperature=temperature,
                    num_samples=N_SAMPLES, eos_ids=eos, seed=7, slots=slots, **kw)


@pytest.fixture(scope="module")
def static_greedy(case):
    return _run(case, 0.0, None)


def _assert_same(static, refilled):
    np.testing.assert_array_equal(np.asarray(refilled.tokens), np.asarray(static.tokens))
    np.testing.assert_array_equal(np.asarray(refilled.mask), np.asarray(static.mask))
    np.testing.assert_allclose(np.asarray(refilled.logprobs), np.asarray(static.logprobs),
                               atol=2e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(refilled.prompt_ids), np.asarray(static.prompt_ids))


def test_static_rows_are_ragged(case, static_greedy):
    """The case is ragged: rows stop by their caps and by EOS, at many different lengths."""
    _, _, caps, eos, _ = case
    lengths = np.asarray(static_greedy.lengths)
    tokens = np.asarray(static_greedy.tokens)
    by_eos = [r for r in range(len(caps)) if tokens[r, lengths[r] - 1] in eos
              and lengths[r] < caps[r]]
    assert by_eos, (lengths, caps)
    assert (lengths <= np.asarray(caps)).all() and len(set(lengths.tolist())) >= 5


@pytest.mark.parametrize("slots", [1, 100], ids=["one-slot", "more-slots-than-rows"])
def test_greedy_refill_equals_static_and_transformers(case, static_greedy, slots):
    rows = len(case[2])
    res = _run(case, 0.0, slots)
    _assert_same(static_greedy, res)
    # Every sequence is a prefix of transformers' greedy continuation of its prompt.
    hf, lengths = case[4], np.asarray(res.lengths)
    for r in range(rows):
        np.testing.assert_array_equal(np.asarray(res.tokens)[r, :lengths[r]], hf[r, :lengths[r]])
    # One slot: every sequence after the first is a refill; enough slots: none is.
    assert int(res.refills) == (rows - 1 if slots == 1 else 0)
    if slots == 1:
        assert int(res.steps) == int(lengths.sum()) - rows  # one decode step per later token


def test_sampled_refill_equals_static(case, static_greedy):
    """Top-k + top-p sampling, 3 slots for 10 sequences: the same draws per sequence and step."""
    rows = len(case[2])
    static = _run(case, 0.9, None, top_k=40, top_p=0.95)
    res = _run(case, 0.9, 3, top_k=40, top_p=0.95)
    assert 0 < int(res.refills) == rows - 3
    _assert_same(static, res)
    # The draws are not greedy (else this test could not tell a per-step key mix-up).
    assert (np.asarray(static.tokens) != np.asarray(static_greedy.tokens)).any()


def test_sharded_refill_equals_unsharded_static(case, checkpoint):
    """On a (data 1, fsdp 4, tensor 2) mesh, 3 slots (rounded up to the 4 batch shards) give
    the unsharded static sampler's sequences: the refill program shards like the static one
    (the 10 rows are padded to 12, the 2 dummy rows refilled too)."""
    model, prompts, caps, eos, _ = case
    mesh = make_mesh(1, 4, 2)
    sharded = load_model(checkpoint[0], mesh=mesh)
    static = _run(case, 0.9, None, top_p=0.95)
    res = S.sample(sharded, prompts, max_new_tokens=caps, temperature=0.9, top_p=0.95,
                   num_samples=N_SAMPLES, eos_ids=eos, seed=7, slots=3, mesh=mesh)
    assert int(res.refills) == 12 - 4 and res.tokens.shape[0] == len(caps)
    _assert_same(static, res)


def test_bad_slots(case):
    with pytest.raises(ArgumentError, match="slots=0"):
        _run(case, 0.0, 0)
    with pytest.raises(ArgumentError, match="unstack_layers"):
        _run(case, 0.0, 2, unstack_layers=False)
    with pytest.raises(ArgumentError, match="one per row"):
        S.sample(case[0], case[1], max_new_tokens=[3, 4], num_samples=N_SAMPLES, slots=2)


def test_generate_refuses_bad_slots(capsys):
    from socialr1_jax import cli
    from socialr1_jax.rollout import generate

    code = cli.run(generate.main, ["--model", "unused", "--prompt", "hi", "--slots", "0"])
    assert code == 2 and "error: --slots 0: must be a positive integer" in capsys.readouterr().err
