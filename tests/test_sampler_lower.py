"""`sampler.lower`: the rollout program as `sample` would run it, lowered without running, so
that the memory plan can compile it on abstract weights. Its KV cache shows up in XLA's numbers
as counted here from the shapes."""

import jax
import numpy as np
import pytest

from socialr1_jax.model.build import abstract_state, create_model
from socialr1_jax.model.config import preset
from socialr1_jax.rollout import sampler

CFG = preset("tiny")


def _cache_bytes(rows: int, positions: int) -> int:
    """Keys + values of every layer, fp32 (the tiny model's dtype)."""
    return 2 * CFG.num_layers * rows * CFG.num_kv_heads * positions * CFG.head_dim * 4


def _temps(slots, new_tokens: int) -> int:
    graphdef, state = abstract_state(CFG)
    lowered = sampler.lower(graphdef, state, prompts=8, num_samples=5, prompt_len=16,
                            max_new_tokens=new_tokens, slots=slots)
    return lowered.compile().memory_analysis().temp_size_in_bytes


def test_the_cache_grows_with_the_positions_of_its_rows_only():
    """Doubling the new tokens adds at least the cache of the added positions to the
    temporaries: 40 rows without refill, 8 rows with 8 slots (measured: +5.74 MB static for
    +5.24 MB of cache, +1.31 MB with 8 slots for +1.05 MB)."""
    grow = {s: _temps(s, 512) - _temps(s, 256) for s in (None, 8)}
    cache = {s: _cache_bytes(rows, 256) for s, rows in ((None, 40), (8, 8))}
    assert grow[None] >= cache[None] and grow[8] >= cache[8]
    assert grow[None] - grow[8] >= 0.9 * (cache[None] - cache[8])


def test_lowered_program_is_the_one_sample_runs():
    """Compiled from concrete weights, the lowered static program gives `sample`'s tokens."""
    model = create_model(CFG, seed=0)
    from flax import nnx

    graphdef, state = nnx.split(model)
    lowered = sampler.lower(graphdef, state, prompts=2, num_samples=2, prompt_len=16,
                            max_new_tokens=16, temperature=0.0)
    ids = np.tile(np.arange(1, 17, dtype=np.int32), (4, 1))
    out = lowered.compile()(state, ids, np.ones_like(ids), np.ones(4, bool),
                            jax.random.key(0), np.float32(1.0), np.float32(1.0),
                            np.zeros((1,), np.int32), np.int32(16))
    ref = sampler.sample(model, [list(range(1, 17))] * 2, max_new_tokens=16, temperature=0.0,
                         num_samples=2, eos_ids=(0,))
    np.testing.assert_array_equal(np.asarray(out[0][0]), np.asarray(ref.tokens))


def test_lower_refuses_lengths_past_the_model():
    graphdef, state = abstract_state(CFG)
    with pytest.raises(ValueError, match="max_new_tokens=2048 with prompt_len 16 exceeds"):
        sampler.lower(graphdef, state, prompts=1, num_samples=1, prompt_len=16,
                      max_new_tokens=2048)
