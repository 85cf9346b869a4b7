"""Static vs refill (continuous batching) sampling on heavy-tailed completion lengths, same run.

P prompts x S samples; each sequence's length is drawn from a log-normal (median --median, sigma
--sigma, clipped to [1, --max-new]) and imposed as its own cap (`sample(max_new_tokens=[...])`),
which costs the sampler exactly what a forced EOS at that step would. The same lengths (same
seed) go to today's static sampler over all rows and to the refill sampler with each of --slots;
the best slot count is reported as a user would pick it. Then every row runs to the cap (no
raggedness: the case where refill can only lose). Wall times are medians of --reps calls after
one warm-up call (which compiles); tokens/s counts generated tokens.

    python benchmarks/rollout_bench.py                      # writes results/rollout_bench.*
    python benchmarks/rollout_bench.py --config bench-100m --prompts 8 --samples 8 --max-new 512
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import add_options, git_commit, median_time  # noqa: E402

# A small model with the structure of the big ones (GQA, tied head), fast enough for 2 CPU cores.
SMALL = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
             head_dim=64, intermediate_size=768, tie_word_embeddings=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="small", help="'small' (see SMALL) or a preset name")
    add_options(ap, prompts=8, samples=8, prompt_len=32, max_new=512, median=96.0, sigma=1.0,
                slots="8,16,32", reps=3, seed=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "rollout_bench"))
    return ap.parse_args(argv)


def ragged_lengths(rows: int, median: float, sigma: float, cap: int, seed: int) -> list[int]:
    """Completion lengths from a log-normal with the given median, clipped to [1, cap]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, rows)), 1, cap).astype(int).tolist()


def timed(model, prompts, caps, samples, slots, reps):
    """(median wall s, all, generated tokens, refills) of one sampling configuration."""
    import jax
    from socialr1_jax.rollout.sampler import sample

    out = {}

    def call():
        res = sample(model, prompts, max_new_tokens=caps, temperature=1.0, num_samples=samples,
                     seed=1, slots=slots)
        jax.block_until_ready(res.tokens)
        out["res"] = res

    med, all_s = median_time(call, reps, warmup=True)
    res = out["res"]
    return med, all_s, int(np.asarray(res.lengths).sum()), res


def interleaved(model, prompts, caps, samples, slots, reps):
    """Static and refill(slots) timed alternately after a warm-up of each: two result rows."""
    import time

    import jax
    from socialr1_jax.rollout.sampler import sample

    def call(k):
        res = sample(model, prompts, max_new_tokens=caps, temperature=1.0, num_samples=samples,
                     seed=1, slots=k)
        jax.block_until_ready(res.tokens)
        return res

    times = {None: [], slots: []}
    toks = {}
    for k in times:
        toks[k] = int(np.asarray(call(k).lengths).sum())  # warm-up (compiles)
    for _ in range(reps):
        for k in times:
            t = time.perf_counter()
            call(k)
            times[k].append(time.perf_counter() - t)
    rows = []
    for k, ts in times.items():
        med = float(np.median(ts))
        rows.append(dict(wall_s=med, wall_all_s=ts, tokens=toks[k], tokens_per_s=toks[k] / med,
                         refills=None, decode_iterations=None))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from socialr1_jax import create_model, preset
    from socialr1_jax.model.config import ModelConfig

    cfg = ModelConfig(**SMALL) if args.config == "small" else preset(args.config)
    model = create_model(cfg, seed=0)
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(0, cfg.vocab_size, args.prompt_len).tolist()
               for _ in range(args.prompts)]
    rows = args.prompts * args.samples
    slot_list = [int(s) for s in args.slots.split(",")]
    ragged = ragged_lengths(rows, args.median, args.sigma, args.max_new, args.seed)
    at_cap = [args.max_new] * rows
    load0 = os.getloadavg()[0]
    runs = []

    def run(name, caps, slots, reps):
        med, all_s, toks, res = timed(model, prompts, caps, args.samples, slots, reps)
        row = dict(case=name, slots=slots, wall_s=med, wall_all_s=all_s, tokens=toks,
                   tokens_per_s=toks / med,
                   refills=None if res.refills is None else int(res.refills),
                   decode_iterations=int(res.steps))
        runs.append(row)
        print(f"{name:7s} slots={str(slots):5s} {med:8.3f} s  {toks / med:9.1f} tok/s  "
              f"iterations {row['decode_iterations']:5d}  refills {row['refills']}", flush=True)
        return row, res

    static, ref_res = run("ragged", ragged, None, 1)
    assert [int(x) for x in np.asarray(ref_res.lengths)] == ragged
    refill = []
    for k in slot_list:  # the sweep a user would do (one timed call each)
        row, res = run("ragged", ragged, k, 1)
        # Same draws per sequence: the refill must give the static sampler's tokens.
        row["tokens_equal_static"] = bool(np.array_equal(np.asarray(res.tokens),
                                                         np.asarray(ref_res.tokens)))
        refill.append(row)
    best_k = min(refill, key=lambda r: r["wall_s"])["slots"]
    # The figures: static and the best slots timed alternately (the load drifts on a shared
    # machine), medians of --reps each, for the ragged lengths and with every row at the cap.
    final = {}
    for case, caps in (("ragged", ragged), ("at_cap", at_cap)):
        final[case] = interleaved(model, prompts, caps, args.samples, best_k, args.reps)
        for slots, row in zip((None, best_k), final[case]):
            runs.append(dict(row, case=case + "_interleaved", slots=slots))
            print(f"{case} interleaved slots={str(slots):5s} {row['wall_s']:8.3f} s", flush=True)
    static, best = final["ragged"]
    cap_static, cap_refill = final["at_cap"]
    result = dict(
        commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        machine=f"{platform.machine()} {os.cpu_count()} CPUs", load_before=load0,
        load_after=os.getloadavg()[0], config=args.config if args.config != "small" else SMALL,
        prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
        max_new_tokens=args.max_new, lognormal_median=args.median, lognormal_sigma=args.sigma,
        ragged_lengths=ragged, best_slots=best_k,
        speedup_ragged=static["wall_s"] / best["wall_s"],
        speedup_at_cap=cap_static["wall_s"] / cap_refill["wall_s"],
        speedup_by_slots_sweep={r["slots"]: runs[0]["wall_s"] / r["wall_s"] for r in refill},
        runs=runs, **packed_keys(args.out + ".json"))
    write(args.out, result)
    return 0


def packed_keys(path: str) -> dict:
    """The packed-update keys that benchmarks/packed_bench.py wrote into this results file
    (kept when the sampler figures are rewritten; None before it has run)."""
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    return {k: old.get(k) for k in ("packed_update_speedup", "packed_loss_abs_diff",
                                    "packed_update")}


def write(out: str, result: dict) -> None:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# Rollout: static vs refill sampler ({result['commit']}, {result['date'][:16]} UTC)",
             "", f"{result['machine']}, load {result['load_before']:.1f} -> "
             f"{result['load_after']:.1f}; model {result['config']}; "
             f"{result['prompts']} prompts x {result['samples']} samples, prompt "
             f"{result['prompt_len']} tokens, cap {result['max_new_tokens']}, lengths log-normal "
             f"(median {result['lognormal_median']}, sigma {result['lognormal_sigma']}), "
             f"{sum(result['ragged_lengths'])} tokens in all; medians of the timed calls after "
             "one warm-up.", "",
             "| case | slots | wall s | tokens/s | decode iterations | refills | ratio to static |",
             "|---|---|---|---|---|---|---|"]
    base = {r["case"]: r["wall_s"] for r in result["runs"] if r["slots"] is None}
    # Sweep rows are single calls; the interleaved rows (medians) give the speedups.
    for r in result["runs"]:
        lines.append(f"| {r['case']} | {r['slots'] or 'static'} | {r['wall_s']:.3f} | "
                     f"{r['tokens_per_s']:.1f} | {r['decode_iterations']} | {r['refills']} | "
                     f"{base[r['case']] / r['wall_s']:.2f}x |")
    lines += ["", f"speedup_ragged (best slots = {result['best_slots']}): "
              f"{result['speedup_ragged']:.2f}x; speedup_at_cap: {result['speedup_at_cap']:.2f}x", ""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
