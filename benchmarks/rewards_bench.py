"""Benchmark: the Social-R1 reward of 1,000 completions with the heuristic judges, on the CPU.

    python benchmarks/rewards_bench.py [--n 1000] [--repeats 15] [--seed 0]

Builds `--n` synthetic rows (a ToMi-like story, four options) and completions whose think text
is 200-3,000 characters (the paper's window is 400-3,000): SIP-staged traces, unstructured
prose, one in ten heavily repeated, one in ten without `</think>`. Times, after one warm-up
call, the median over `--repeats` of:
- rule terms: `social_r1_score` per completion (format, answer, EM, length window, repetition,
  curriculum, tau, variant), judge values fixed;
- heuristic judges: structure + content heuristics on every completion;
- reward set: `RewardSet.score` end to end (parsing, both judges on the formatted completions,
  the combination, per-term metrics), the trainer's call.
Results: printed table, benchmarks/results/rewards_bench.{json,md}. Target (issue 10): 1,000
completions scored by the rule terms plus the heuristic judge in under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from socialr1_jax.social.judges import (SIP_STAGES, JudgeItem, content_heuristic,  # noqa: E402
                                        structure_heuristic)
from socialr1_jax.social.reward_fns import RewardSet, RewardSetConfig  # noqa: E402
from socialr1_jax.social.rewards import parse_completion, social_r1_score  # noqa: E402
from bench_common import median_time, write_results  # noqa: E402

TARGET_S = 1.0
NAMES = ["Sally", "Anne", "Tom", "Mia", "Omar", "Li", "Ravi", "Zoe"]
PLACES = ["basket", "box", "drawer", "fridge", "cupboard", "suitcase", "bucket", "envelope"]
OBJECTS = ["marble", "apple", "key", "scarf", "letter", "ball"]
FILLER = ("noticed", "remembered", "believes", "wanted", "left the room", "came back",
          "did not see", "expects", "looked around", "felt unsure", "the hallway", "later on")


def make_rows_and_completions(n: int, seed: int):
    """n (prompt, completion, row) triples with varied length, structure and defects."""
    rng = random.Random(seed)
    prompts, comps, rows = [], [], []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        obj = rng.choice(OBJECTS)
        opts = rng.sample(PLACES, 4)
        story = (f"{a} put the {obj} in the {opts[0]}. {a} left the room. {b} moved the {obj} "
                 f"to the {opts[1]}. {a} came back.")
        question = f"Where will {a} look for the {obj}?"
        target = rng.randint(200, 3000)
        words = []
        while sum(len(w) + 1 for w in words) < target:
            words.append(rng.choice(FILLER + tuple(story.split())) + f" {rng.randint(0, 999)}")
        body = " ".join(words)
        if i % 3 == 0:  # SIP-staged
            q = len(body) // 4
            body = "\n".join(f"{s}: {body[k * q:(k + 1) * q]}" for k, s in enumerate(SIP_STAGES))
        if i % 10 == 1:  # heavily repeated
            body = (body[:80] + " ") * (target // 81 + 1)
        answer = rng.choice("ABCD")
        close = "" if i % 10 == 2 else "</think>"
        comps.append(f"<think>{body}{close}\n<Answer>{answer}</Answer>")
        prompts.append(f"{story}\n{question}")
        rows.append({"id": f"bench-{i}", "gold": "A", "story": story, "question": question,
                     "options": [f"the {o}" for o in opts]})
    return prompts, comps, rows


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(median, all) seconds after a warm-up call (regex compilation, caches)."""
    return median_time(fn, repeats, warmup=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    prompts, comps, rows = make_rows_and_completions(a.n, a.seed)
    items = [JudgeItem(r["story"], r["question"], tuple(r["options"]),
                       parse_completion(c).think, r["id"]) for c, r in zip(comps, rows)]

    def rules():
        for c, r in zip(comps, rows):
            social_r1_score(c, r["gold"], step=100, struct=0.5, content=0.0)

    def judges():
        for it in items:
            structure_heuristic(it)
            content_heuristic(it)

    rs = RewardSet.from_config(RewardSetConfig())
    try:
        def reward_set():
            rs.score(prompts, comps, rows, step=100)

        results = {}
        for name, fn in (("rule terms", rules), ("heuristic judges", judges),
                         ("RewardSet.score (rules + heuristic judges)", reward_set)):
            med, times = timed(fn, a.repeats)
            results[name] = {"median_s": med, "min_s": min(times), "max_s": max(times),
                             "per_completion_us": med / a.n * 1e6}
        scores, metrics = rs.score(prompts, comps, rows, step=100)
    finally:
        rs.close()
    think_lens = [len(it.reasoning) for it in items]
    e2e = results["RewardSet.score (rules + heuristic judges)"]["median_s"]
    out = {
        "n": a.n, "repeats": a.repeats, "seed": a.seed,
        "think_chars": {"mean": statistics.mean(think_lens), "max": max(think_lens)},
        "formatted_share": metrics["reward/social_r1/format"],
        "mean_score": float(scores.mean()),
        "results": results, "target_s": TARGET_S, "met": e2e < TARGET_S,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "load_average_1m": os.getloadavg()[0],
        "command": "python benchmarks/rewards_bench.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [f"# Social-R1 reward benchmark ({a.n} completions, heuristic judges, CPU)", "",
             f"Think text {out['think_chars']['mean']:.0f} characters on average (max "
             f"{out['think_chars']['max']}); {out['formatted_share']:.0%} in the right format. "
             f"Median of {a.repeats} after one warm-up call; {out['machine']}; load average "
             f"{out['load_average_1m']:.1f} (a shared machine: the times are upper bounds).",
             f"Target: the rule terms plus the heuristic judge under {TARGET_S:.0f} s for "
             f"{a.n} completions.", "",
             "| what | median s | min s | max s | us per completion |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['per_completion_us']:.0f} |")
    lines += ["", f"Target met: {'yes' if out['met'] else 'NO'} (end to end {e2e:.3f} s).", "",
              f"Command: `{out['command'].strip()}`"]
    table = "\n".join(lines)
    print(table)
    res_dir = os.path.join(ROOT, "benchmarks", "results")
    write_results(os.path.join(res_dir, "rewards_bench.json"), out)
    write_results(os.path.join(res_dir, "rewards_bench.md"), table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
