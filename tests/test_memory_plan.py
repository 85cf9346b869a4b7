"""The memory plan: XLA's per-device numbers agree with the shardings, and remat and
micro-batching show up in them (tiny configs; the Qwen3-4B table is benchmarks/results/)."""

import json
import math
import os
import subprocess
import sys

import pytest

from socialr1_jax.jobs import memory_plan
from socialr1_jax.model.config import preset
from socialr1_jax.checkpoint.hf_layout import layout
from tests.xla_env import session_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _elements_per_device(cfg, split: int) -> int:
    """Our own count: every matrix split `split` ways (1x8x1 FSDP), vectors replicated."""
    return sum(math.prod(e.shape) // split if len(e.shape) >= 2 else math.prod(e.shape)
               for e in layout(cfg))


def test_plan_agrees_with_the_shardings():
    b, p_len, c_len = 16, 8, 16
    plan = memory_plan.plan(preset="tiny", mesh="1x8x1", prompts=4, group=4, prompt_len=p_len,
                            completion_len=c_len, micro_batch=8, remat="none",
                            param_dtype="bfloat16", master_dtype="float32")
    n = _elements_per_device(preset("tiny"), 8)
    st = plan["state_bytes_per_device"]
    assert st["params"] == st["reference_params"] == 2 * n   # bf16
    assert st["master"] == 4 * n                              # fp32 master copy
    assert 8 * n <= st["optimizer"] <= 8 * n + 64             # fp32 mu + nu, and step counters
    assert st["train_state_total"] == st["params"] + st["master"] + st["optimizer"] + 12

    train, ref, rollout = plan["programs"]
    rows = b // 8
    # XLA's arguments of the reference forward: its weight shards and this device's rows.
    assert ref["arguments"] == st["reference_params"] + 4 * rows * 2 * (p_len + c_len)
    assert ref["outputs"] == 4 * rows * c_len
    # The donated train state comes back in place: the master and moments are aliased.
    assert train["aliased"] >= st["master"] + 8 * n
    assert train["outputs"] >= st["train_state_total"] - 64
    assert train["resident_besides"] == st["reference_params"]
    assert ref["resident_besides"] == st["train_state_total"]
    # The sampler's weights are the policy's bf16 params (plus its prompts: under 1 KiB here);
    # the master copy, the moments and the reference stay resident while it runs.
    assert st["params"] <= rollout["arguments"] <= st["params"] + 1024
    assert rollout["resident_besides"] == (st["train_state_total"] - st["params"]
                                           + st["reference_params"])
    for q in plan["programs"]:
        assert q["program_total"] == q["arguments"] + q["outputs"] - q["aliased"] + q["temporaries"]
        assert q["peak"] == q["program_total"] + q["resident_besides"]
    assert plan["peak_bytes_per_device"] == max(q["peak"] for q in plan["programs"])


def test_packed_plan_compiles_the_packed_programs():
    """grpo.packed: the update and the reference forward planned on packed rows of
    packed_row_len tokens, by default as many as full-length sequences need (2 per row of
    48 here: 8 rows, bucketed to a multiple of 2 micro-batches x 8 shards = 16)."""
    plan = memory_plan.plan(preset="tiny", mesh="1x8x1", prompts=4, group=4, prompt_len=8,
                            completion_len=16, micro_batch=8, remat="none",
                            param_dtype="bfloat16", master_dtype="float32", rollout=False,
                            packed=True, packed_row_len=48)
    s, st = plan["setting"], plan["state_bytes_per_device"]
    assert (s["packed"], s["packed_rows"], s["packed_ref_rows"], s["packed_row_len"]) == (
        True, 16, 16, 48)
    train, ref = plan["programs"]
    # Its weight shards and this device's 2 packed rows of ids, segment ids, positions, targets.
    assert ref["arguments"] == st["reference_params"] + 4 * 4 * 2 * 48
    assert ref["outputs"] == 4 * 2 * 48
    assert train["aliased"] >= st["master"] and train["resident_besides"] == st["reference_params"]
    assert "packed: 16 rows x 48 tokens (reference 16)" in memory_plan.format_plan(plan)
    with pytest.raises(ValueError, match="packed_row_len=20 is shorter than prompt"):
        memory_plan.plan(preset="tiny", mesh="1x8x1", prompts=4, group=4, prompt_len=8,
                         completion_len=16, rollout=False, packed=True, packed_row_len=20)


@pytest.mark.slow
def test_cli_shows_remat_and_micro_batching(tmp_path):
    """A fresh process (its own XLA flags): 4 settings; remat and micro-batching cut temps."""
    env = dict(os.environ, XLA_FLAGS=session_flags())  # the command sets its own devices
    out = tmp_path / "plan"
    proc = subprocess.run(
        [sys.executable, "-m", "socialr1_jax.memory_plan", "--preset", "tiny", "--layers", "4",
         "--prompts", "4", "--group", "4", "--prompt-len", "128", "--completion-len", "384",
         "--remat", "none,full", "--micro-batch", "16,8", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = json.loads((tmp_path / "plan.json").read_text())["plans"]
    temps = {(p["setting"]["remat"], p["setting"]["micro_batch"]): p["programs"][0]["temporaries"]
             for p in plans}
    assert sorted(temps) == [("full", 8), ("full", 16), ("none", 8), ("none", 16)]
    print({k: f"{v / 2**20:.2f} MiB" for k, v in temps.items()})
    # Measured: none/16 73.4, none/8 40.3, full/16 71.2, full/8 18.4 MiB.
    assert temps[("none", 8)] < 0.7 * temps[("none", 16)]
    assert temps[("full", 8)] < 0.6 * temps[("none", 8)]
    assert temps[("full", 8)] == min(temps.values())
    for p in plans:
        assert p["setting"]["devices"] == 8 and p["setting"]["layers"] == 4
        assert memory_plan.MEMORY_SCHEDULER_FLAG in p["xla_flags"]
    table = (tmp_path / "plan.md").read_text()
    assert table.count("\n| 1x8x1 |") == 4
    assert "peak per device" in proc.stdout


def test_cli_refuses_a_bad_mesh(tmp_path):
    env = dict(os.environ, XLA_FLAGS=session_flags())  # the command sets its own devices
    proc = subprocess.run(
        [sys.executable, "-m", "socialr1_jax.memory_plan", "--preset", "tiny", "--mesh", "1x4x1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--mesh 1x4x1 needs 4 devices; there are 8" in proc.stderr
