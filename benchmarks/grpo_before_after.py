"""The whole GRPO step, before and after, through the real trainer (`grpo_bench.py --before-after`).

    python benchmarks/grpo_bench.py --before-after --config demo
    python benchmarks/grpo_bench.py --before-after --config bench-100m

Each variant is one `jobs.train.train` run of the same config at optim.lr=1e-12 (the weights
stay put: every variant samples the same completions and does the same work), every step with
the prompts of step 0 (no new prompt shape after the warm-up), on the same machine, one after
the other in one process (a persistent compilation cache shared by the variants):

    before        static sampler, padded update, on-policy
    after         refill sampler (rollout.slots), packed update (grpo.packed=true), on-policy
    after+async   the same, one-step off-policy (grpo.async_rollout=true)

each with the task's reward as it is and with a reward that sleeps --sleep seconds first (a slow
judge). Per step: the wall time between the ends of consecutive steps ("total"), and the job's
own metrics: rollout_s (step start to scores on the host, so the part of the sampling the host
waits for plus the scoring), rewards_s (the scoring), update_s (scores to the updates' metrics on
the host: the rest of the reference forward, advantages, the updates). In the runs without the
sleep and on-policy, the phases are also timed with the devices awaited after each (the sampler,
the reference forward, the rewards, the update): there the barriers cost nothing but the
reference forward's overlap with a reward of a few milliseconds. Medians over the steps after
--warmup steps, the last step left out (an async run dispatches nothing ahead after it).

demo: the tiny CPU demo (configs/tiny_cpu.yaml: the Social-R1 task and reward on the tiny
model, 8 prompts x 8 samples, 72 new tokens) with no warm start and no evaluation, on one CPU
device. bench-100m: the ~100M bench model (random weights, fp32) on the toy task, --prompts x
--group rows, --prompt-len-token prompts; completions are ragged: a set of stop tokens holding
about ln2/--median of the random model's nearly uniform next-token mass ends a completion at
each step with that probability (geometric lengths, median about --median, capped at --max-new).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("sample", "reference", "rewards", "update")


def variants(slots: int) -> dict[str, list[str]]:
    """{name: overrides} of the three variants."""
    after = [f"rollout.slots={slots}", "grpo.packed=true"]
    return {"before": [], "after": after, "after+async": after + ["grpo.async_rollout=true"]}


def config_args(name: str, args) -> list[str]:
    """The command line of the benchmarked config (steps, no run directory, no evaluation)."""
    # optim.lr=1e-12 leaves the fp32 weights where they are (an AdamW step of ~lr per weight is
    # below their rounding), so every variant samples the same completions at every step (the
    # refill sampler draws what the static one does, and one step ahead samples what on-policy
    # would): the variants do the same work and only their schedule differs.
    common = ["optim.lr=1e-12", "run.progress=false", "run.out_dir=", "run.save_every=0",
              "run.samples_per_step=0",
              f"run.steps={args.warmup + args.reps + 1}", "eval.every=0", "eval.at_start=false"]
    if name == "demo":
        return ["--config", os.path.join(REPO, "configs", "tiny_cpu.yaml"), "sft.steps=0"] + common
    return ["--config", os.path.join(REPO, "configs", "toy.yaml"), f"model.preset={name}",
            "model.vocab_size=151936", "model.random_init=true",
            f"toy.prompt_len={args.prompt_len}", "toy.num_prompts=16",
            f"rollout.prompts_per_step={args.prompts}", f"grpo.group_size={args.group}",
            f"rollout.max_prompt_len={args.prompt_len}",
            f"rollout.max_new_tokens={args.max_new}"] + common


class BenchTask:
    """A task whose every step has the prompts of its step 0 (fresh samples each step: the
    seed is the step's), so no step compiles a new shape after the warm-up (a step one ahead
    would compile inside the step before it); its rewards come after `sleep_s` seconds of sleep
    (a slow judge); with `stop_tokens`, those ids end a completion (ragged lengths on a random
    model)."""

    def __init__(self, task, sleep_s: float, stop_tokens=None):
        self.task, self.sleep_s = task, sleep_s
        self.eos_ids = tuple(stop_tokens) if stop_tokens is not None else task.eos_ids
        self.pad_id = task.pad_id

    def prompts(self, step, n):
        return self.task.prompts(0, n)

    def rewards(self, prompts, completions, mask, group_size):
        time.sleep(self.sleep_s)
        return self.task.rewards(prompts, completions, mask, group_size)

    def __getattr__(self, name):  # write_side_files, state_dict, tokenizer ... of the task
        return getattr(self.task, name)


def stop_tokens(vocab: int, median: float, avoid=(0, 1, 7)) -> list[int]:
    """Ids holding a share ln2/median of a uniform distribution over `vocab` (spread evenly)."""
    n = max(1, round(vocab * math.log(2) / median))
    ids = np.linspace(2, vocab - 1, n).astype(int)
    return [int(i) for i in ids if i not in avoid]


@contextlib.contextmanager
def phase_timers(record: dict):
    """Time the sampler, the rollout's device half, its host half and the updates, each awaited
    (adds to `record`'s lists); the trainer's own functions are put back after."""
    from socialr1_jax.rl import experience
    from socialr1_jax.rl import rollout_updates as ru

    def wrap(owner, name, key, ready):
        inner = getattr(owner, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = inner(*a, **kw)
            jax.block_until_ready(ready(out))
            record.setdefault(key, []).append(time.perf_counter() - t0)
            return out
        setattr(owner, name, timed)
        return owner, name, inner

    undo = [wrap(experience.Programs, "sample", "sample", lambda o: o),
            wrap(experience.Programs, "start_rollout", "start", lambda p: (p.seqs, p.old, p.ref)),
            wrap(experience.Programs, "finish_rollout", "finish", lambda r: r.batch),
            wrap(ru, "rollout_updates", "update", lambda o: jax.tree.leaves(o))]
    try:
        yield record
    finally:
        for owner, name, inner in undo:
            setattr(owner, name, inner)


def run_variant(argv: list[str], sleep_s: float, *, barriers: bool, stops=None) -> dict:
    """One trainer run: per-step wall times, the job's timing metrics and (barriers) phases."""
    from socialr1_jax.jobs import train as train_mod

    cfg = train_mod.parse_args(argv)
    task = BenchTask(train_mod.make_task(cfg, cfg.model.preset_config().vocab_size), sleep_s,
                     stops)
    ends, record = [], {}
    ctx = phase_timers(record) if barriers else contextlib.nullcontext()
    with ctx:
        res = train_mod.train(cfg, task=task, log=lambda s: None,
                              on_step=lambda k, st, m: ends.append(time.perf_counter()))
    hist = res.history
    out = {"total": [0.0] + list(np.diff(ends))}
    for k in ("rollout_s", "rewards_s", "update_s", "response_len"):
        out[k] = [m[k] for m in hist]
    if barriers:
        out["phases"] = {"sample": record["sample"],
                         "reference": [s - p for s, p in zip(record["start"], record["sample"])],
                         "rewards": record["finish"], "update": record["update"]}
    out["reward_mean"] = [m["reward_mean"] for m in hist]
    return out


def medians(run: dict, warmup: int) -> dict:
    """Median of each per-step series over steps warmup .. last-1."""
    def med(xs):
        return statistics.median(xs[warmup:-1])
    out = {k: med(v) for k, v in run.items() if k not in ("phases", "reward_mean")}
    for k, v in run.get("phases", {}).items():
        out[f"phase_{k}"] = med(v)
    return out


def add_args(ap) -> None:
    """The mode's flags on grpo_bench.py's parser."""
    ap.add_argument("--before-after", action="store_true",
                    help="the whole step before/after (see benchmarks/grpo_before_after.py)")
    ap.add_argument("--config", default="demo", help="demo or bench-100m (--before-after)")
    ap.add_argument("--sleep", type=float, default=1.0, help="seconds the slow reward sleeps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--slots", type=int, default=0, help="refill slots (0: half the rows)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--median", type=float, default=20.0)


def run_all(args) -> dict:
    """Every variant with and without the sleeping reward: {"<variant> sleep=<s>": medians}."""
    import tempfile

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="grpo_ba_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    argv = config_args(args.config, args)
    rows = (64 if args.config == "demo" else args.prompts * args.group)
    stops = None if args.config == "demo" else stop_tokens(151936, args.median)
    out = {}
    for name, extra in variants(args.slots or rows // 2).items():
        for sleep_s in (0.0, args.sleep):
            barriers = sleep_s == 0 and name != "after+async"
            t0 = time.perf_counter()
            run = run_variant(argv + extra, sleep_s, barriers=barriers, stops=stops)
            key = f"{name} sleep={sleep_s:g}"
            out[key] = {"medians": medians(run, args.warmup), "per_step": run,
                        "overrides": extra, "barriers": barriers,
                        "run_s": time.perf_counter() - t0}
            print(key, {k: round(v, 3) for k, v in out[key]["medians"].items()}, flush=True)
    return out


def table(results: dict) -> list[str]:
    """The markdown tables: job metrics and totals of every run, then the awaited phases."""
    lines = ["| variant | reward sleep s | total s | rollout_s | rewards_s | update_s | "
             "response len | vs before |", "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        name, sleep = key.split(" sleep=")
        m = results[f"before sleep={sleep}"]["medians"]["total"]
        x = r["medians"]
        lines.append(f"| {name} | {sleep} | {x['total']:.3f} | {x['rollout_s']:.3f} | "
                     f"{x['rewards_s']:.3f} | {x['update_s']:.3f} | {x['response_len']:.1f} | "
                     f"{m / x['total']:.2f}x |")
    lines += ["", "Phases with the devices awaited after each (no sleep, on-policy):", "",
              "| variant | sample | reference | rewards | update | sum | step total |",
              "|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        if r["barriers"]:
            x = r["medians"]
            s = sum(x[f"phase_{p}"] for p in PHASES)
            lines.append(f"| {key.split(' sleep=')[0]} | " +
                         " | ".join(f"{x[f'phase_{p}']:.3f}" for p in PHASES) +
                         f" | {s:.3f} | {x['total']:.3f} |")
    return lines


def main(args) -> int:
    """Run every variant of --config; its section replaces the config's in
    results/grpo_step_before_after.{json,md} (the other configs' sections are kept)."""
    import json

    from bench_common import provenance, write_results

    load = os.getloadavg()
    results = run_all(args)
    prov = provenance()
    head = (f"## {args.config}: median of {args.reps} steps after {args.warmup} warm-up steps "
            f"(the last step left out); reward sleep {args.sleep:g} s; commit {prov['commit']}, "
            f"{prov['date']}, load average {load[0]:.2f} at start, "
            f"{os.getloadavg()[0]:.2f} at end ({prov['cpus']} CPUs, shared)")
    section = "\n".join([head, ""] + table(results)) + "\n"
    print(section)
    base = os.path.join(REPO, "benchmarks", "results", "grpo_step_before_after")
    stored = {}
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            stored = json.load(f).get("configs", {})
    stored[args.config] = {"provenance": prov, "load_avg_start": load, "args": vars(args),
                           "section_md": section, "results": results}
    write_results(base + ".json", {"configs": stored})
    intro = __doc__.split("\n\n", 2)[2]
    notes = base + ".notes.md"  # the reading of the numbers, written by hand
    notes = open(notes).read() if os.path.exists(notes) else ""
    write_results(base + ".md", "# The whole GRPO step before/after (grpo_bench.py "
                  "--before-after)\n\n" + intro + "\n" +
                  "\n".join(c["section_md"] for c in stored.values()) + "\n" + notes)
    return 0
