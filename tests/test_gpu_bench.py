"""The pieces of benchmarks/gpu/ that compute numbers: the trace summary, the FLOP count, and
reading the trainer's per-step lines. The whole script runs on CPU with
`benchmarks/gpu/run.sh OUT --tiny` (docs/gpu.md)."""

import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks", "gpu"), os.path.join(ROOT, "benchmarks")]

import flops  # noqa: E402
import profile_summary as ps  # noqa: E402


def _meta(pid, tid, kind, name):
    e = {"ph": "M", "pid": pid, "name": kind, "args": {"name": name}}
    if tid is not None:
        e["tid"] = tid
    return e


def _x(pid, tid, ts, dur, name="fusion"):
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}


def test_summary_counts_stream_kernels_busy_time_and_gaps():
    events = [
        _meta(1, None, "process_name", "/host:CPU"),
        _meta(7, None, "process_name", "/device:GPU:0"),
        _meta(7, 11, "thread_name", "Stream #13(Compute)"),
        _meta(7, 12, "thread_name", "Stream #14(MemcpyD2D)"),
        _meta(7, 99, "thread_name", "XLA Ops"),
        _x(1, 5, 0, 1000, "PjitFunction"),              # host: ignored
        _x(7, 11, 100, 10, "gemm"), _x(7, 11, 120, 10, "gemm"),
        _x(7, 11, 200, 30, "fusion.3"),
        _x(7, 12, 125, 10, "MemcpyD2D"),                # overlaps the second gemm by 5
        _x(7, 99, 100, 130, "dot.1"),                   # derived line: must not count
    ]
    s = ps.summarize(events)
    assert (s["kernels"], s["copies"]) == (3, 1)
    # Union of [100,110) [120,130) [125,135) [200,230) = 10 + 15 + 30.
    assert s["busy_us"] == pytest.approx(55.0)
    assert s["span_us"] == pytest.approx(130.0)
    assert s["gap_us"] == pytest.approx(75.0)
    assert s["top"][0] == {"name": "fusion.3", "count": 1, "total_us": 30}
    assert "Stream #13" in s["source"] and "XLA Ops" not in s["source"]


def test_per_step_is_the_difference_over_the_steps():
    short = {"kernels": 10, "copies": 2, "busy_us": 100.0, "span_us": 150.0}
    long = {"kernels": 410, "copies": 2, "busy_us": 900.0, "span_us": 1750.0}
    p = ps.per_step(short, long, 4)
    assert p["kernels_per_step"] == 100 and p["copies_per_step"] == 0
    assert p["busy_us_per_step"] == 200 and p["span_us_per_step"] == 400
    assert p["gap_us_per_step"] == 200 and p["busy_fraction"] == 0.5


def test_cpu_trace_falls_back_to_innermost_worker_events():
    events = [_meta(1, None, "process_name", "/host:CPU"),
              _meta(1, 3, "thread_name", "tf_XLAEigen/1"),
              _x(1, 3, 0, 100, "ThunkExecutor"), _x(1, 3, 10, 20, "a"), _x(1, 3, 40, 20, "b")]
    s = ps.summarize(events)
    assert s["kernels"] == 2 and s["busy_us"] == pytest.approx(40.0)
    assert "host" in s["source"]


def test_forward_flops_equal_a_count_from_the_parameters_and_causal_pairs():
    from flax import nnx

    from socialr1_jax.model.build import abstract_model
    from socialr1_jax.model.config import preset

    cfg = preset("tiny")
    rows, p, c = 3, 5, 4
    t = p + c
    # Every parameter but the norm scales is a matmul weight applied once per token, except
    # the (tied) embedding: a lookup in the layers and the head's weight at the c positions.
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(abstract_model(cfg)))
    sizes = {jax.tree_util.keystr(path): int(np.prod(x.shape)) for path, x in leaves}
    weights = sum(n for name, n in sizes.items() if "norm" not in name)
    embed = sum(n for name, n in sizes.items() if "embed" in name)
    assert cfg.tie_word_embeddings and embed == cfg.vocab_size * cfg.hidden_size
    pairs = sum(q + 1 for q in range(t))  # query q attends to keys 0..q
    by_hand = rows * (2 * (weights - embed) * t + 2 * embed * c
                      + cfg.num_layers * cfg.num_heads * pairs * 2 * (2 * cfg.head_dim))
    assert flops.forward_flops(cfg, rows, p, c) == by_hand
    assert flops.update_flops(cfg, rows, p, c) == 3 * by_hand


def test_train_phases_are_timed_and_parsed(capsys):
    """train_phases.py runs the trainer's main with its phases timed; run.py reads them."""
    import run as gpu_run
    import train_phases

    from tests.train_args import TOY

    assert train_phases.main([*TOY, "run.steps=2", "run.progress=false", "run.out_dir="]) == 0
    steps = gpu_run.parse_train(capsys.readouterr().out)
    assert [s["step"] for s in steps] == [0, 1]
    for s in steps:
        assert 0 < s["sample_s"] < s["rollout_s"] and s["update_s"] > 0
        assert s["ref_and_scoring_s"] == pytest.approx(s["rollout_s"] - s["sample_s"])
