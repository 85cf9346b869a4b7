"""Benchmark: what token streaming costs the sampler (`sample(..., on_tokens=)`).

    python benchmarks/stream_bench.py [--repeats 7] [--max-load 3]

The server's programs carry a host callback after every decode step (rollout/stream.py: an
ordered io_callback that hands the step's tokens to the worker thread). This times one sampler
call with and without it, alternating, same prompts and shapes, greedy, no EOS (every row
decodes all the new tokens), on randomly initialised models:
- 'tiny' (2 layers, hidden 64): a step costs little, so the callback's share is the largest;
- 'bench-100m' (8 layers, hidden 512, 151,936-token vocabulary), 8 rows: a small served model.
Reports medians over --repeats of each and the ratio (streamed tokens/s / plain tokens/s).
Results: benchmarks/results/stream_bench.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench_common import wait_for_quiet, write_results  # noqa: E402

CASES = [("tiny", 32, 32, 128), ("bench-100m", 8, 32, 64)]  # preset, rows, prompt, new tokens


def _no_tokens(step, tokens) -> None:
    """The callback, doing nothing (the cost measured is the round trip itself)."""


def time_case(name, rows, p_len, new, repeats):
    """Median wall seconds of the plain and the streamed call, alternating."""
    import numpy as np

    from socialr1_jax import create_model, preset, sample

    cfg = preset(name)
    model = create_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, min(cfg.vocab_size, 256), p_len).tolist() for _ in range(rows)]

    def call(on_tokens):
        t0 = time.perf_counter()
        r = sample(model, prompts, max_new_tokens=new, temperature=0, eos_ids=[], pad_id=0,
                   max_cache_len=p_len + new, shapes=(rows, p_len, new), on_tokens=on_tokens)
        np.asarray(r.tokens)
        return time.perf_counter() - t0

    call(None), call(_no_tokens)  # compile both
    plain, streamed = [], []
    for _ in range(repeats):
        plain.append(call(None))
        streamed.append(call(_no_tokens))
    return plain, streamed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-load", type=float, default=None)
    args = ap.parse_args()
    load = wait_for_quiet(args.max_load)
    lines = ["# stream_bench: one sampler call with and without the per-step host callback",
             "", f"Load average (1 min) at start {load:.2f}; medians of {args.repeats} "
             "alternating calls each; greedy, no EOS.", "",
             "| model | rows x new tokens | plain s | streamed s | streamed / plain tokens/s |",
             "| --- | --- | ---: | ---: | ---: |"]
    out = {}
    for name, rows, p_len, new in CASES:
        plain, streamed = time_case(name, rows, p_len, new, args.repeats)
        a, b = statistics.median(plain), statistics.median(streamed)
        out[name] = {"rows": rows, "prompt": p_len, "new": new, "plain_s": plain,
                     "streamed_s": streamed}
        lines.append(f"| {name} | {rows} x {new} | {a:.3f} | {b:.3f} | **{a / b:.2f}x** |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    path = os.path.join(HERE, "results", "stream_bench")
    write_results(path + ".md", text)
    write_results(path + ".json", {"cases": out, "load_at_start": load, "args": vars(args)})


if __name__ == "__main__":
    main()
