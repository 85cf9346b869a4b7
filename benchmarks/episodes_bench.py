"""Benchmark: SOTOPIA episodes advanced together (one sampler call per turn) vs one at a time.

    python benchmarks/episodes_bench.py [--preset bench-100m] [--episodes 32] [--turns 10]
                                        [--max-new-tokens 16] [--repeats 1] [--work DIR]

The tested model plays both sides of every episode (self-play, in-process), so in the batched
mode every turn is ONE sampler call for all episodes (plus one repair call when some reply did
not parse); in the one-at-a-time mode each episode is played alone from its first turn to its
last. Both modes play the same episodes (the demo scenarios, cycled) for exactly --turns turns
(the stale rule is switched off: a random model never writes a valid action, so every turn also
has its repair call, in both modes alike), greedy, with the same LocalAgent; only the number of
episodes per call differs. The model is a random transformers Qwen3 with the preset's shapes
(vocabulary raised to fit the byte-level test tokenizer), loaded with `load_model`.

Timing: an untimed two-turn warm-up of each mode (compilation of both prompt buckets), then
--repeats rounds alternating the two modes; medians. Goal (issue 20): batched >= 4x faster than one at a time.
Results: printed table, benchmarks/results/episodes_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_common import (add_options, git_commit, hf_qwen3_config,  # noqa: E402
                                     one_cpu_device, wait_for_quiet)

one_cpu_device()  # before jax is imported

GOAL = 4.0


def build(path: str, preset_name: str):
    """A random HF Qwen3 with the preset's shapes and the byte-level tokenizer, saved to path."""
    import torch
    from transformers import Qwen3ForCausalLM

    from tests.hf_fixtures import make_tiny_tokenizer

    cfg = hf_qwen3_config(preset_name, min_vocab=272)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).eval().save_pretrained(path)
    make_tiny_tokenizer(path)


def episodes(n: int):
    """n fresh episodes over the demo scenarios (cycled), the model on alternating sides."""
    from socialr1_jax.episodes import DEMO_SCENARIOS
    from socialr1_jax.social.sotopia.episodes import Episode
    from socialr1_jax.social.sotopia.scenarios import load_scenarios

    scs = load_scenarios(DEMO_SCENARIOS)
    return [Episode(id=str(i), scenario=scs[i % len(scs)], model_side=i % 2) for i in range(n)]


def play(agent, eps, turns: int, pool) -> int:
    """Play `eps` together to `turns` turns; returns the number of sampler calls."""
    from socialr1_jax.social.sotopia.episodes import step

    before = agent.calls
    while any(not ep.done for ep in eps):
        step(eps, {"model": agent, "partner": agent}, pool, max_turns=turns, max_stale=10 ** 6)
    return agent.calls - before


def main(argv=None) -> int:
    """Build or reuse the model, time both modes, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_options(ap, preset="bench-100m", episodes=32, turns=10, max_new_tokens=16, repeats=1)
    ap.add_argument("--max-load", type=float, default=None)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    import concurrent.futures

    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.social.sotopia.episodes import LocalAgent

    work = args.work or tempfile.mkdtemp(prefix="episodes_bench_")
    if not os.path.exists(os.path.join(work, "config.json")):
        build(work, args.preset)
    tok = tk.load_tokenizer(work)
    model = load_model(work)
    eos = [tok.eos_token_id]

    def agent(width):
        return LocalAgent(model, tok, eos_ids=eos, pad_id=tk.pad_id(tok, eos), name="bench",
                          batch_size=width, width=width, max_new_tokens=args.max_new_tokens,
                          temperature=0.0)

    batched, single = agent(args.episodes), agent(1)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    modes = {"batched": lambda: play(batched, episodes(args.episodes), args.turns, pool),
             "one_at_a_time": lambda: sum(play(single, [ep], args.turns, pool)
                                          for ep in episodes(args.episodes))}
    load = wait_for_quiet(args.max_load)
    # Warm-up: two turns compile both prompt buckets (the first prompt, and the longer repair
    # and later prompts) at both widths; the sampler calls of a full pass are counted apart.
    play(batched, episodes(args.episodes), min(2, args.turns), pool)
    play(single, episodes(1), min(2, args.turns), pool)
    calls = {}
    times = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            calls[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "load_at_start": load, "cpus": os.cpu_count(),
           "preset": args.preset, "episodes": args.episodes, "turns": args.turns,
           "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
           "sampler_calls": calls, "seconds": times, "median_s": med,
           "speedup": med["one_at_a_time"] / med["batched"], "goal": GOAL}
    table = ["| mode | sampler calls | median wall s | ratio |", "|---|---|---|---|"]
    for name in modes:
        table.append(f"| {name} | {calls[name]} | {med[name]:.2f} | "
                     f"{med[name] / med['batched']:.2f}x |")
    text = "\n".join(table) + (f"\n\n{args.episodes} episodes x {args.turns} turns, preset "
                               f"{args.preset}, max_new_tokens {args.max_new_tokens}; speedup "
                               f"{res['speedup']:.2f}x (goal {GOAL}x); commit {res['commit']}, "
                               f"{res['date']}, load {load:.2f} on {res['cpus']} CPUs\n")
    print(text)
    out = os.path.join(ROOT, "benchmarks", "results", "episodes_bench")
    with open(out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
