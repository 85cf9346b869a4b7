"""GRPO step time with LoRA adapters against full fine-tuning, on the ~100M bench model, same run.

    python benchmarks/lora_bench.py [--repeats 3] [--rank 16] [--results benchmarks/results/lora_bench]

The step of grpo_bench.py (2 prompts x 4 samples, 64 prompt + 64 new tokens, no early EOS, k3
KL 0.04, one AdamW update), phase by phase, for both ways of training the same base weights:
full fine-tuning (train_step.make_train_step) and LoRA on every projection (rl/lora_train.py:
adapters only in the optimizer, the base frozen and also the KL reference). The two alternate
step by step after one warm-up step each (compilation excluded), so the machine's load falls
on both alike; the median of `--repeats` steps is reported. Single CPU device, fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from socialr1_jax import load_model, sample  # noqa: E402
from socialr1_jax.model import build, lora  # noqa: E402
from socialr1_jax.rl import grpo, lora_train  # noqa: E402
from socialr1_jax.rl import train_step as ts  # noqa: E402
from socialr1_jax.rl.config import GRPOConfig, OptimConfig  # noqa: E402
from bench_common import write_results  # noqa: E402
from grpo_bench import BETA, GROUP, LR, NEW, PROMPT_LEN, PROMPTS, make_checkpoint  # noqa: E402


def _runner(model, rank: int, alpha: float):
    """(state, policy(state) -> params, graphdef, ref params, ref log-prob fn, step fn)."""
    gcfg = GRPOConfig(group_size=GROUP, beta=BETA, kl="k3", agg="token-mean")
    ocfg = OptimConfig(lr=LR)
    if not rank:
        graphdef, ref = nnx.split(model)
        return (ts.init_train_state(ref, ocfg, None), lambda s: s.params, graphdef, ref,
                ts.make_logprob_fn(model.cfg, None), ts.make_train_step(model.cfg, ocfg, gcfg))
    adapted = build.with_lora(model, lora.parse_spec(rank, alpha, "all-linear"))
    graphdef, base, adapters = build.split_lora(adapted)
    parts = lora_train.LoraParts(base, adapted.cfg)
    step = lora_train.LoraStep(lora_train.make_train_step(adapted.cfg, ocfg, gcfg), base)
    return (ts.init_train_state(adapters, ocfg, None), lambda s: parts.policy(s.params),
            graphdef, base, ts.make_logprob_fn(parts.reference_cfg, None), step)


def _step(r, state, prompts, target, seed, rng):
    _, policy, graphdef, ref, logp_fn, step_fn = r
    t0 = time.perf_counter()
    out = sample(nnx.merge(graphdef, policy(state)), prompts, max_new_tokens=NEW,
                 temperature=1.0, num_samples=GROUP, eos_ids=(), seed=seed)
    tokens = np.asarray(out.tokens)
    t1 = time.perf_counter()
    seqs = (out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
    ref_logp = jax.block_until_ready(logp_fn(ref, *seqs))
    t2 = time.perf_counter()
    rewards = (tokens[:, 0] == target).astype(np.float32) + rng.random(len(tokens),
                                                                       dtype=np.float32)
    batch = ts.TrainBatch(*seqs, out.logprobs, ref_logp, grpo.advantages(rewards, GROUP))
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics["loss"])
    t3 = time.perf_counter()
    return state, {"rollout": t1 - t0, "reference log-probs": t2 - t1, "update": t3 - t2,
                   "total": t3 - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--results", default="benchmarks/results/lora_bench")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    work = tempfile.mkdtemp(prefix="lora_bench_")
    make_checkpoint(work)
    model = load_model(work)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, model.cfg.vocab_size, PROMPT_LEN)) for _ in range(PROMPTS)]
    target = int(rng.integers(0, model.cfg.vocab_size))
    runs = {"full": _runner(model, 0, 0.0), f"lora r{args.rank}": _runner(model, args.rank,
                                                                          args.alpha)}
    states = {k: r[0] for k, r in runs.items()}
    times = {k: [] for k in runs}
    for i in range(args.repeats + 1):  # step 0: the warm-up (compiles)
        for k, r in runs.items():
            states[k], t = _step(r, states[k], prompts, target, i, rng)
            if i:
                times[k].append(t)
    med = {k: {p: statistics.median(t[p] for t in v) for p in v[0]} for k, v in times.items()}
    trainable = {k: build.param_count(states[k].params) for k in runs}
    names = list(runs)
    lines = [f"# GRPO step: LoRA (rank {args.rank}, alpha {args.alpha:g}, all-linear) vs full "
             f"fine-tuning (bench-100m, fp32, 1 CPU device, {PROMPTS} prompts x {GROUP}, "
             f"{PROMPT_LEN} + {NEW} tokens)", "",
             f"Median of {args.repeats} steps after a warm-up step each, the two alternating "
             f"step by step in one process. Load average at start "
             f"{', '.join(f'{x:.2f}' for x in load_start)}, at end "
             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores, shared).", "",
             "| phase (s) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for p in med[names[0]]:
        lines.append(f"| {p} | " + " | ".join(f"{med[k][p]:.3f}" for k in names) + " |")
    lines += [f"| trainable parameters | " + " | ".join(f"{trainable[k]:,}" for k in names)
              + " |", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args.results + ".md", text)
    write_results(args.results + ".json", {"median_s": med, "all_s": times,
                                           "trainable_params": trainable, "rank": args.rank,
                                           "alpha": args.alpha, "repeats": args.repeats,
                                           "jax": jax.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
