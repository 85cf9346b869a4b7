"""Adapter dropout (model.lora.dropout, PEFT's lora_dropout) in the GRPO update: it changes the
update, the same (seed, update counter) draws the same masks, and they depend on the row, not
on the micro-batch split, so a micro-batched update equals the one-batch update."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from socialr1_jax import preset
from socialr1_jax.model import build, lora
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import GRPOConfig, OptimConfig
from tests.test_train_step import make_batch

# eps 1e-3: Adam's first step is then a smooth function of the gradient (see test_train_step).
OCFG = OptimConfig(lr=1e-3, weight_decay=0.0, eps=1e-3)
GCFG = GRPOConfig(group_size=4, beta=0.04, agg="seq-mean-token-mean")


@pytest.fixture(scope="module")
def parts():
    """(base state, adapters with B != 0 so that the adapters act, batch of 16 rows)."""
    model = build.create_model(preset("tiny"), seed=0)
    batch = make_batch(model, b=16)
    adapted = build.with_lora(model, lora.parse_spec(4, 32, "all-linear"), seed=1)
    _, base, adapters = build.split_lora(adapted)
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)
    return base, adapters, batch


@functools.lru_cache(maxsize=None)
def _step(p, mbs):
    """The jitted LoRA GRPO update under dropout p (one compile per setting)."""
    cfg = preset("tiny").replace(lora=lora.parse_spec(4, 32, "all-linear", p))
    return lora_train.make_train_step(cfg, OCFG, GCFG, micro_batch_size=mbs)


def _update(parts, p, *, mbs=0):
    """(new adapters, metrics) of one LoRA GRPO update under dropout p."""
    base, adapters, batch = parts
    step = _step(p, mbs)
    state = ts.init_train_state(jax.tree.map(jnp.copy, adapters), OCFG, None)
    new, metrics = step(state, ts.put_batch(batch, None), base)
    return [np.asarray(x) for x in jax.tree.leaves(new.params)], metrics


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_dropout_changes_the_update_and_is_reproducible(parts):
    no_drop, m0 = _update(parts, 0.0)
    dropped, m1 = _update(parts, 0.3)
    again, m2 = _update(parts, 0.3)
    assert float(m1["loss"]) != float(m0["loss"])
    assert _max_diff(dropped, no_drop) > 1e-5
    # same (seed, update counter): the same masks, bit for bit
    assert _max_diff(dropped, again) == 0.0 and float(m2["loss"]) == float(m1["loss"])


def test_dropout_masks_do_not_depend_on_the_micro_batch_split(parts):
    one, m1 = _update(parts, 0.3)
    split, m4 = _update(parts, 0.3, mbs=4)  # 4 micro-batches of 4 rows
    assert _max_diff(one, split) <= 1e-6
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5, abs=1e-7)
