"""Benchmark: our jitted sampler vs transformers' `generate`, same weights and prompts, one run.

    python benchmarks/sampler_bench.py [--batches 1,8] [--repeats 5] [--prompt-len 64]
                                       [--new-tokens 128] [--work DIR] [--skip-hf]

Model: the 'bench-100m' preset (hidden 512, 8 layers, 8 heads / 4 KV heads, head_dim 64, MLP 1536,
tied, the real 151,936-token vocabulary; 103M parameters), fp32. A transformers
Qwen3ForCausalLM is built at random, saved, and loaded into ours with `load_model`, so both run
the identical weights. Prompts: random 64-token rows, no padding. Both decode greedily 128 new
tokens with no EOS (ours: eos_ids=(); transformers: eos_token_id=None, min_new_tokens=128).

Timing: after one warm-up call each (compilation for ours), --repeats rounds, each timing
transformers then ours (alternating, so a slow patch of a shared machine hits both); medians.
tokens/s = B * new_tokens / wall time of the whole call (prefill included, as for transformers).
Per decode step: (t(new_tokens) - t(1)) / (new_tokens - 1), from runs of ours that generate
1 token (prefill + first token) and new_tokens tokens.

Memory-bandwidth floor: a decode step must read every weight once (all 103M parameters, the
tied embedding as LM head included, fp32) = 412 MB. Bandwidth is measured in the same run as
the median time of copying a 1 GiB float32 array with NumPy (1 and 2 threads, the faster),
counting read + write traffic (2 x 1 GiB per copy, STREAM's convention). Floor = weight bytes /
bandwidth; we report per-step time / floor.

The same run also checks that our greedy tokens equal transformers' (fraction of rows identical
and mean identical prefix; fp32 near-ties may legitimately split the two after a while).

Targets (issue 5): >= 2.5x transformers at B=8, >= 1x at B=1, per-step <= 1.5x the floor.
Results: printed table, benchmarks/results/sampler_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_common import git_commit, hf_qwen3_config, one_cpu_device, wait_for_quiet  # noqa: E402

one_cpu_device()  # before jax is imported

TARGET_B8, TARGET_B1, TARGET_FLOOR = 2.5, 1.0, 1.5
GIB = 1 << 30


def build_checkpoint(path: str, seed: int = 0):
    """A random transformers Qwen3ForCausalLM with the bench-100m shapes, saved to `path`."""
    import torch
    from transformers import Qwen3ForCausalLM

    cfg = hf_qwen3_config("bench-100m")
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model


def copy_bandwidth(repeats: int = 5) -> dict:
    """Read + write bytes per second of copying a 1 GiB float32 array (median), 1 and 2 threads."""
    import numpy as np

    src = np.ones(GIB // 4, np.float32)
    dst = np.zeros_like(src)
    out = {}
    for threads in (1, 2):
        parts = np.array_split(np.arange(src.size), threads)
        bounds = [(p[0], p[-1] + 1) for p in parts]

        def copy_part(lo, hi):
            np.copyto(dst[lo:hi], src[lo:hi])  # NumPy releases the GIL for the copy

        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ts = [threading.Thread(target=copy_part, args=b) for b in bounds]
            [t.start() for t in ts]
            [t.join() for t in ts]
            times.append(time.perf_counter() - t0)
        out[f"{threads}_thread_s"] = statistics.median(times)
        out[f"{threads}_thread_GBps"] = 2 * src.nbytes / statistics.median(times) / 1e9
    out["GBps"] = max(out["1_thread_GBps"], out["2_thread_GBps"])
    return out


def timed(fn, repeats_list):
    t0 = time.perf_counter()
    out = fn()
    repeats_list.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "work", "sampler_bench"))
    ap.add_argument("--skip-hf", action="store_true", help="time only ours (for profiling)")
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--quiet-load", type=float, default=None,
                    help="first wait (up to --wait-s) until the 1-min load average is below this")
    ap.add_argument("--wait-s", type=float, default=1800)
    args = ap.parse_args(argv)
    wait_for_quiet(args.quiet_load, args.wait_s)

    import jax
    import numpy as np
    import torch

    from socialr1_jax import load_model, param_count
    from socialr1_jax.rollout.sampler import sample

    load_start = os.getloadavg()
    ckpt = os.path.join(args.work, "hf")
    os.makedirs(args.work, exist_ok=True)
    print(f"building the bench-100m checkpoint in {ckpt} ...", flush=True)
    ref = build_checkpoint(ckpt)
    ours = load_model(ckpt)
    n_params = param_count(ours)
    weight_bytes = 4 * n_params
    assert ours.cfg.vocab_size == 151936 and jax.device_count() == 1, jax.devices()
    new = args.new_tokens

    def run_ours(prompts, n, **kw):
        kw = kw or {"temperature": 0}
        res = sample(ours, prompts, max_new_tokens=n, eos_ids=(), **kw)
        return np.asarray(res.tokens)

    def run_hf(prompts):
        ids = torch.tensor(prompts)
        with torch.no_grad():
            out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + new
        return out[:, ids.shape[1]:].numpy()

    rows = []
    rng = np.random.default_rng(0)
    for b in [int(x) for x in args.batches.split(",")]:
        prompts = rng.integers(0, 151643, (b, args.prompt_len)).tolist()
        print(f"B={b}: warm-up (compiles ours) ...", flush=True)
        run_ours(prompts, 1)
        mine = run_ours(prompts, new)
        theirs = None if args.skip_hf else run_hf(prompts)
        t_hf, t_ours, t_one = [], [], []
        for r in range(args.repeats):
            if not args.skip_hf:
                timed(lambda: run_hf(prompts), t_hf)
            timed(lambda: run_ours(prompts, new), t_ours)
            timed(lambda: run_ours(prompts, 1), t_one)
            print(f"  round {r + 1}: hf {t_hf[-1] if t_hf else float('nan'):.3f} s, ours "
                  f"{t_ours[-1]:.3f} s, ours 1 token {t_one[-1]:.3f} s", flush=True)
        med_ours, med_one = statistics.median(t_ours), statistics.median(t_one)
        step = (med_ours - med_one) / (new - 1)
        row = {"batch": b, "ours_s": med_ours, "ours_tok_s": b * new / med_ours,
               "ours_prefill_plus_1_s": med_one, "ours_step_ms": 1e3 * step,
               "ours_runs_s": t_ours, "ours_1tok_runs_s": t_one}
        if theirs is not None:
            med_hf = statistics.median(t_hf)
            same_rows = float(np.mean((mine == theirs).all(axis=1)))
            prefix = [int(np.argmin(np.append(m == t, False))) for m, t in zip(mine, theirs)]
            row.update({"hf_s": med_hf, "hf_tok_s": b * new / med_hf, "hf_runs_s": t_hf,
                        "speedup": med_hf / med_ours, "greedy_rows_identical": same_rows,
                        "greedy_mean_identical_prefix": float(np.mean(prefix))})
        # Sampling instead of greedy (ours only): T = 1 over the full vocabulary, and with
        # top-p 0.95, whose nucleus on this random model spans most of the vocabulary, so every
        # step takes the exact bisection path (the worst case of our top-p).
        for name, kw in (("sampled", {"temperature": 1.0}),
                         ("top_p", {"temperature": 1.0, "top_p": 0.95})):
            run_ours(prompts, new, **kw)
            ts = []
            for _ in range(min(3, args.repeats)):
                timed(lambda: run_ours(prompts, new, **kw), ts)
            row[f"ours_{name}_tok_s"] = b * new / statistics.median(ts)
        rows.append(row)

    print("measuring copy bandwidth (1 GiB float32) ...", flush=True)
    bw = copy_bandwidth()
    floor_ms = 1e3 * weight_bytes / (bw["GBps"] * 1e9)
    for row in rows:
        row["floor_ms"] = floor_ms
        row["step_over_floor"] = row["ours_step_ms"] / floor_ms

    result = {
        "model": "bench-100m (Qwen3-shaped, vocab 151936, tied), fp32", "params": n_params,
        "weight_bytes": weight_bytes, "prompt_len": args.prompt_len, "new_tokens": new,
        "repeats": args.repeats, "bandwidth": bw, "rows": rows,
        "torch_threads": torch.get_num_threads(), "jax_devices": str(jax.devices()),
        "cpu_count": os.cpu_count(), "commit": git_commit(), "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "targets": {"speedup_b8": TARGET_B8, "speedup_b1": TARGET_B1,
                    "step_over_floor": TARGET_FLOOR},
    }
    table = render(result)
    print(table)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "sampler_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.results, "sampler_bench.md"), "w") as f:
        f.write(table + "\n")
    return result


def render(r: dict) -> str:
    """The results as a Markdown table with ratios and targets."""
    bw, tg = r["bandwidth"], r["targets"]

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "-"

    lines = [
        f"# Sampler benchmark: {r['model']}, {r['params']:,} parameters",
        "",
        f"Greedy, {r['prompt_len']}-token prompts, {r['new_tokens']} new tokens, no EOS; median "
        f"of {r['repeats']} alternating runs after warm-up. CPU: {r['cpu_count']} cores, torch "
        f"threads {r['torch_threads']}, JAX devices {r['jax_devices']}. Load average (1 min) at "
        f"start {r['loadavg_start'][0]:.2f}, at end {r['loadavg_end'][0]:.2f} (other jobs "
        f"share this machine). Commit {r.get('commit', 'unknown')}.",
        "",
        "| B | transformers tok/s | ours tok/s | ours / transformers | target | ours ms/step "
        "| floor ms/step | step / floor (target <= {0}) | greedy rows identical to transformers "
        "| ours sampled T=1 tok/s | ours T=1 top-p 0.95 tok/s |".format(tg["step_over_floor"]),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        target = tg["speedup_b8"] if row["batch"] >= 8 else tg["speedup_b1"]
        same = (f"{row['greedy_rows_identical']:.0%} (mean identical prefix "
                f"{row['greedy_mean_identical_prefix']:.0f})" if "greedy_rows_identical" in row
                else "-")
        lines.append(" | ".join([
            f"| {row['batch']}", cell(row, "hf_tok_s", "{:.1f}"), f"{row['ours_tok_s']:.1f}",
            cell(row, "speedup", "{:.2f}x"), f">= {target}x", f"{row['ours_step_ms']:.2f}",
            f"{row['floor_ms']:.2f}", f"{row['step_over_floor']:.2f}", same,
            cell(row, "ours_sampled_tok_s", "{:.1f}"), cell(row, "ours_top_p_tok_s", "{:.1f}"),
        ]) + " |")
    lines += [
        "",
        f"Floor: {r['weight_bytes'] / 1e6:.1f} MB of fp32 weights read per decode step / "
        f"{bw['GBps']:.1f} GB/s copy bandwidth (read + write bytes of a 1 GiB NumPy copy, "
        f"median: 1 thread {bw['1_thread_GBps']:.1f} GB/s, 2 threads {bw['2_thread_GBps']:.1f} "
        "GB/s; the faster is used). Ours per step = (t(new) - t(1 token)) / (new - 1).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
