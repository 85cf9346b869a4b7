"""The GRPO update on packed rows against the padded one, same ragged batch, same run.

The batch is rollout_bench's: P prompts x S samples, prompt --prompt-len tokens, completion
lengths log-normal (median --median, sigma --sigma, clipped to [1, --max-new]; the same draw as
`rollout_bench.ragged_lengths`), padded to --max-new. The padded update runs on [B, P + C]; the
packed one on the rows `pack_plan` gives (row length P + C, rows rounded up to a multiple of the
micro-batches). Each side's first call (compile) starts from the same state and gives the loss
compared; then the two updates are timed alternately (the load drifts on a shared machine),
medians of --reps. The packing itself (host plan + device gather) and the reference log-prob
forward on both layouts are timed too. Writes results/packed_bench.{json,md} and the keys
`packed_update_speedup`, `packed_loss_abs_diff` (and the raw times) into rollout_bench.json,
keeping its other keys.

    python benchmarks/packed_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import add_options, write_results  # noqa: E402
from rollout_bench import SMALL, ragged_lengths  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_options(ap, prompts=8, samples=8, prompt_len=32, max_new=256, median=48.0, sigma=1.0,
                micro_batches=1, agg="token-mean", reps=3, seed=0)
    ap.add_argument("--out", default=os.path.join(RESULTS, "packed_bench"))
    ap.add_argument("--rollout-json", default=os.path.join(RESULTS, "rollout_bench.json"))
    return ap.parse_args(argv)


def scored_batch(cfg, params, lengths, args):
    """The padded TrainBatch: random prompts and completions of `lengths`, old / ref log-probs
    near the model's own, group advantages."""
    from socialr1_jax.rl import grpo
    from socialr1_jax.rl import train_step as ts

    rng = np.random.default_rng(args.seed)
    b, p, c = len(lengths), args.prompt_len, args.max_new
    pid = rng.integers(0, cfg.vocab_size, (b, p)).astype(np.int32)
    cid = rng.integers(0, cfg.vocab_size, (b, c)).astype(np.int32)
    pm = np.ones((b, p), np.int32)
    cm = (np.arange(c)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    logp = np.asarray(ts.make_logprob_fn(cfg)(params, pid, pm, cid, cm))
    old = (logp - rng.normal(0, 0.1, (b, c))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.1, (b, c))).astype(np.float32)
    adv = np.asarray(grpo.advantages(rng.normal(size=b).astype(np.float32), args.samples))
    return ts.TrainBatch(pid, pm, cid, cm, old, ref, adv)


def alternate(fns: dict, reps: int) -> dict:
    """{name: [wall s per call]} of already-compiled calls, timed in turn."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    from flax import nnx

    from socialr1_jax import create_model
    from socialr1_jax.model.config import ModelConfig
    from socialr1_jax.rl import packed_step as ps
    from socialr1_jax.rl import train_step as ts
    from socialr1_jax.rl.config import GRPOConfig, OptimConfig
    from socialr1_jax.rl.packing import pack, pack_plan

    cfg = ModelConfig(**SMALL)
    params = nnx.state(create_model(cfg, seed=0))
    b = args.prompts * args.samples
    lengths = ragged_lengths(b, args.median, args.sigma, args.max_new, args.seed)
    batch = ts.put_batch(scored_batch(cfg, params, lengths, args), None)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    plan = pack_plan(np.asarray(batch.prompt_mask), np.asarray(batch.completion_mask),
                     rows_multiple=args.micro_batches)
    plan_s = time.perf_counter() - t0
    pack_fn = jax.jit(pack)
    packed = jax.block_until_ready(pack_fn(batch, plan))
    ocfg, gcfg = OptimConfig(lr=1e-6), GRPOConfig(group_size=args.samples, agg=args.agg)
    micro = b // args.micro_batches
    padded_step = ts.make_train_step(cfg, ocfg, gcfg, micro_batch_size=micro)
    packed_step = ps.make_packed_train_step(cfg, ocfg, gcfg, micro_batches=args.micro_batches)
    ref_padded, ref_packed = ts.make_logprob_fn(cfg), ps.make_packed_logprob_fn(cfg)
    seqs = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    pseqs = (packed.ids, packed.segment_ids, packed.positions, packed.targets)

    # First calls compile; both start from the same state: their losses are the comparison.
    compile_s, states, first = {}, {}, {}
    for name, step, data in (("padded", padded_step, batch), ("packed", packed_step, packed)):
        t0 = time.perf_counter()
        states[name], first[name] = jax.block_until_ready(
            step(ts.init_train_state(params, ocfg), data))
        compile_s[name] = time.perf_counter() - t0
    jax.block_until_ready((ref_padded(params, *seqs), ref_packed(params, *pseqs)))

    def update(name, step, data):
        def call():
            states[name], _ = jax.block_until_ready(step(states[name], data))
        return call

    times = alternate({"padded_update": update("padded", padded_step, batch),
                       "packed_update": update("packed", packed_step, packed),
                       "pack": lambda: jax.block_until_ready(pack_fn(batch, plan)),
                       "padded_ref_logprobs": lambda: jax.block_until_ready(
                           ref_padded(params, *seqs)),
                       "packed_ref_logprobs": lambda: jax.block_until_ready(
                           ref_packed(params, *pseqs))}, args.reps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    real = b * args.prompt_len + sum(lengths)
    result = dict(
        load_before=list(load0), load_after=list(os.getloadavg()), config=SMALL,
        prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
        max_new_tokens=args.max_new, lognormal_median=args.median, lognormal_sigma=args.sigma,
        agg=args.agg, micro_batches=args.micro_batches, reps=args.reps,
        padded_shape=[b, args.prompt_len + args.max_new], packed_shape=list(packed.ids.shape),
        real_tokens=int(real), plan_s=plan_s, compile_s=compile_s,
        loss_padded=float(first["padded"]["loss"]), loss_packed=float(first["packed"]["loss"]),
        packed_loss_abs_diff=abs(float(first["padded"]["loss"]) - float(first["packed"]["loss"])),
        median_s=med, times_s=times,
        packed_update_speedup=med["padded_update"] / med["packed_update"],
        packed_update_speedup_with_packing=med["padded_update"] / (
            med["packed_update"] + med["pack"] + plan_s),
        packed_ref_logprob_speedup=med["padded_ref_logprobs"] / med["packed_ref_logprobs"])
    write_results(args.out + ".json", result)
    write_results(args.out + ".md", markdown(result))
    merge_into_rollout_json(args.rollout_json, result)
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    """The md table of one run."""
    m = r["median_s"]
    rows = [("update (policy log-probs + grad + AdamW)", "padded_update", "packed_update"),
            ("reference log-prob forward", "padded_ref_logprobs", "packed_ref_logprobs")]
    lines = [f"# GRPO update: packed rows vs padded ({r['prompts']} x {r['samples']} sequences)",
             "", f"Model {r['config']}, fp32, agg {r['agg']}, "
             f"{r['micro_batches']} micro-batch(es); "
             f"prompt {r['prompt_len']} tokens, completions log-normal (median "
             f"{r['lognormal_median']}, sigma {r['lognormal_sigma']}, cap {r['max_new_tokens']}): "
             f"{r['real_tokens']} real tokens; padded {r['padded_shape']}, packed "
             f"{r['packed_shape']}. Load average {r['load_before'][0]:.2f} -> "
             f"{r['load_after'][0]:.2f}. Medians of {r['reps']} alternating calls after the "
             "compiling one.", "",
             "| pass | padded s | packed s | speedup |", "|---|---|---|---|"]
    for name, a, b in rows:
        lines.append(f"| {name} | {m[a]:.3f} | {m[b]:.3f} | {m[a] / m[b]:.2f}x |")
    lines += ["", f"Packing: host plan {r['plan_s'] * 1e3:.1f} ms, device gather "
              f"{m['pack'] * 1e3:.1f} ms; update speedup counting them "
              f"{r['packed_update_speedup_with_packing']:.2f}x.",
              f"Loss of the first update: padded {r['loss_padded']:.9f}, packed "
              f"{r['loss_packed']:.9f}, |diff| {r['packed_loss_abs_diff']:.2e}.", ""]
    return "\n".join(lines)


def merge_into_rollout_json(path: str, r: dict) -> None:
    """Set the packed keys of rollout_bench.json (its other keys kept)."""
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(packed_update_speedup=r["packed_update_speedup"],
                packed_loss_abs_diff=r["packed_loss_abs_diff"],
                packed_update=dict(median_s=r["median_s"], times_s=r["times_s"],
                                   padded_shape=r["padded_shape"], packed_shape=r["packed_shape"],
                                   load_before=r["load_before"], load_after=r["load_after"],
                                   source="benchmarks/packed_bench.py"))
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
