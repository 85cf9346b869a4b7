"""grpo.packed with model.lora (fp32): the packed LoRA update trains the adapters only, with the
padded LoRA update's loss and new adapters, and a packed LoRA run trains end to end."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from socialr1_jax import preset
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.model import build, lora
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import GRPOConfig, OptimConfig
from socialr1_jax.rl.packing import pack, pack_plan
from tests.test_packing import ragged_batch
from tests.train_args import TOY

# eps 1e-3: Adam's first step is then a smooth function of the gradient (see test_train_step).
OCFG = OptimConfig(lr=1e-3, weight_decay=0.0, eps=1e-3)
LORA_CFG = preset("tiny").replace(lora=lora.parse_spec(4, 32, "all-linear"))
LORA = ["model.lora.rank=4", "model.lora.alpha=32", "model.lora.target_modules=all-linear"]


@pytest.fixture(scope="module")
def parts():
    """(base state, adapters with B != 0 so that the adapters act, a ragged batch of 8)."""
    model = build.create_model(preset("tiny"), seed=0)
    batch = ragged_batch(model, seed=2)
    adapted = build.with_lora(model, LORA_CFG.lora, seed=1)
    _, base, adapters = build.split_lora(adapted)
    return base, jax.tree.map(lambda x: x + 0.05, adapters), batch


@functools.lru_cache(maxsize=None)
def _steps(agg, micro):
    """(padded, packed) jitted LoRA updates of aggregation `agg` in `micro` micro-batches."""
    gcfg = GRPOConfig(group_size=4, beta=0.04, agg=agg)
    return (lora_train.make_train_step(LORA_CFG, OCFG, gcfg, micro_batch_size=8 // micro),
            lora_train.make_packed_train_step(LORA_CFG, OCFG, gcfg, micro_batches=micro))


@pytest.mark.parametrize("agg,micro", [("token-mean", 2), ("seq-mean-token-sum-norm", 1)])
def test_packed_lora_update_equals_padded(parts, agg, micro):
    """One LoRA update over 8 ragged sequences (`micro` micro-batches, packed rows in multiples
    of them): the same loss and metrics, new adapters within 1e-6, adapters only trained."""
    base, adapters, batch = parts
    padded, packed = _steps(agg, micro)
    plan = pack_plan(batch.prompt_mask, batch.completion_mask, rows_multiple=micro)
    s0, m0 = padded(ts.init_train_state(jax.tree.map(jnp.copy, adapters), OCFG),
                    ts.put_batch(batch, None), base)
    s1, m1 = packed(ts.init_train_state(jax.tree.map(jnp.copy, adapters), OCFG),
                    pack(batch, plan), base)
    assert abs(float(m1["loss"]) - float(m0["loss"])) <= 1e-6, (float(m0["loss"]),
                                                                 float(m1["loss"]))
    for k in ("kl", "grad_norm", "num_tokens", "adv_mean", "adv_std"):
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5, abs=1e-6), k
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(s1.params)]
    assert paths and all("lora" in p for p in paths)
    moved = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(adapters)))
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)))
    assert moved > 1e-4 and diff <= 1e-6, (moved, diff)


def test_packed_lora_run_trains_the_adapters(tmp_path):
    """The toy task, 2 steps, grpo.packed=true model.lora.rank=4 (update, old-policy and
    reference forwards on packed rows, 8-device mesh): it runs, the reference is the base (KL 0
    at step 0, > 0 after an update), and the state holds the adapters only, B trained."""
    cfg = train_mod.parse_args(TOY + [f"run.out_dir={tmp_path}", "run.steps=2",
                                      "run.progress=false", "run.save_every=0",
                                      "grpo.packed=true", *LORA])
    res = train_mod.train(cfg, log=lambda line: None)
    assert res.exit_code == 0 and len(res.history) == 2, res.status
    assert res.history[0]["kl"] == 0.0 and res.history[1]["kl"] > 0.0
    assert all(np.isfinite(m["loss"]) and m["num_tokens"] > 0 for m in res.history)
    leaves = jax.tree_util.tree_leaves_with_path(res.state.params)
    assert leaves and all("lora" in jax.tree_util.keystr(p) for p, _ in leaves)
    assert float(np.abs(np.asarray(res.state.params["lora"]["q_b_ljr"][...])).max()) > 0
