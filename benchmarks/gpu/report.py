"""The GPU benchmark's report: gpu_results.md (tables against the issue's targets) and .json."""

from __future__ import annotations

import json
import os

import flops

H200_BF16_DENSE_TFLOPS = 989.0  # datasheet, dense bf16 (H100 / H200 SXM)
TARGETS = {"b1_over_floor": 2.0, "b1_over_floor_stretch": 1.4, "group_tok_s": 10_000.0,
           "first_call_s": 30.0, "init_s": 30.0}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _f(x, fmt="{:.2f}", missing="-"):
    return missing if x is None else fmt.format(x)


def _stage_note(res: dict, name: str) -> str:
    for s in res["stages"]:
        if s["stage"] == name:
            return s["note"]
    return "not run"


def decode_section(res: dict, lines: list[str]) -> None:
    env = res.get("env") or {}
    d = (res.get("decode") or {}).get("default")
    lines += ["## Decode (the sampler, `socialr1_jax.sample`)", ""]
    if not d:
        lines += [f"Not measured: {_stage_note(res, 'decode.default')}.", ""]
        return
    bw = env.get("copy_GBps")
    floor_ms = 1e3 * d["weight_bytes"] / (bw * 1e9) if bw else None
    ratio = d["b1"]["step_ms"] / floor_ms if floor_ms else None
    lines += [f"Random bf16 weights ({d['weight_bytes'] / 1e9:.2f} GB), {d['prompt_len']}-token "
              f"prompts, {d['new_tokens']} new tokens, T = {d['temperature']}, no EOS. Per step ="
              " (t(new) - t(1 token)) / (new - 1); medians of "
              f"{len(d['group']['runs_s'])} runs after the compiling call.", "",
              "| what | measured | target | |", "|---|---|---|---|",
              f"| B=1 token step | {d['b1']['step_ms']:.2f} ms ({d['b1']['tok_s']:.0f} tok/s "
              "whole call) | "
              f"<= {TARGETS['b1_over_floor']}x floor ({_f(floor_ms)} ms = weights / "
              f"{_f(bw, '{:.0f}')} GB/s copy bandwidth); stretch {TARGETS['b1_over_floor_stretch']}x"
              f" | {_f(ratio)}x the floor: "
              + (_met(ratio <= TARGETS["b1_over_floor"]) if ratio else "no floor") + " |",
              f"| {d['group']['rows']} rows ({d['prompts']} prompts x {d['group']['rows'] // d['prompts']}"
              f" samples) | {d['group']['tok_s']:.0f} tok/s, {d['group']['step_ms']:.2f} ms per "
              f"step | >= {TARGETS['group_tok_s']:.0f} tok/s | "
              f"{_met(d['group']['tok_s'] >= TARGETS['group_tok_s'])} |",
              f"| first call, compile included ({d['group']['rows']} rows) | "
              f"{d['first_call_s']:.1f} s (B=1 first call {d['b1_first_call_s']:.1f} s) | "
              f"< {TARGETS['first_call_s']:.0f} s | {_met(d['first_call_s'] < TARGETS['first_call_s'])} |"]
    g = d.get("greedy")
    if g:
        lines.append(f"| greedy vs transformers `generate`, same bf16 weights, {g['rows']} rows "
                     f"x {g['new_tokens']} | rows identical {g['rows_identical']:.0%}, mean "
                     f"identical prefix {g['mean_identical_prefix']:.1f} tokens | reported | "
                     f"transformers: {g['hf_tok_s']:.0f} tok/s at B={g['rows']} |")
    lines += ["", f"Checkpoint load {d['load_s']:.1f} s; peak device memory (JAX) "
              f"{_f((d.get('peak_device_bytes') or 0) / 1e9)} GB.", ""]


def profile_section(res: dict, lines: list[str]) -> None:
    rows = []
    for arm, d in (res.get("decode") or {}).items():
        for tag in ("b1", "group"):
            p = (d or {}).get(f"profile_{tag}")
            if not p:
                continue
            if "error" in p:
                rows.append(f"| {arm} | {tag} | profile failed: {p['error'][:200]} |||||")
                continue
            rows.append(f"| {arm} | {tag} | {p['kernels_per_step']:.0f} | "
                        f"{p['copies_per_step']:.1f} | {p['busy_us_per_step'] / 1e3:.2f} | "
                        f"{p['gap_us_per_step'] / 1e3:.2f} | {p['busy_fraction']:.0%} |")
    if not rows:
        return
    src = next(((d or {}).get("profile_b1") or {}).get("source", "")
               for d in res["decode"].values() if d)
    lines += ["## Profile of a decode step", "",
              "`jax.profiler.trace(..., create_perfetto_trace=True)` around a 1-token call and a "
              "(1 + n)-token call; per step = the difference / n. Busy = union of the device's "
              "kernel and copy intervals; gap = the span between the first and last device "
              f"activity minus busy. Events from: {src}.", "",
              "| XLA arm | rows | kernels / step | copies / step | busy ms / step | gap ms / step "
              "| busy fraction |", "|---|---|---|---|---|---|---|"] + rows + [""]
    p = (res["decode"].get("default") or {}).get("profile_b1") or {}
    if p.get("top_kernels_long_call"):
        lines += ["Heaviest kernels of the traced B=1 call (default flags):", "",
                  "| kernel | count | total ms |", "|---|---|---|"]
        lines += [f"| `{k['name'][:90]}` | {k['count']} | {k['total_us'] / 1e3:.2f} |"
                  for k in p["top_kernels_long_call"][:8]] + [""]


def arms_section(res: dict, lines: list[str]) -> None:
    arms = res.get("decode") or {}
    if len(arms) < 2:
        return
    lines += ["## Decode A/B in one run: XLA command buffers (CUDA graphs), scanned layers", "",
              "| arm | XLA_FLAGS / sampler | B=1 step ms | 40-row tok/s | first call s | "
              "timed runs |",
              "|---|---|---|---|---|---|"]
    for arm, d in arms.items():
        flags = " ".join(x for x in (res["arms_flags"].get(arm),
                                     (res.get("arms_options") or {}).get(arm)) if x) or "(default)"
        if not d:
            lines.append(f"| {arm} | `{flags}` | {_stage_note(res, 'decode.' + arm)} ||||")
            continue
        lines.append(f"| {arm} | `{flags}` | {d['b1']['step_ms']:.2f} | {d['group']['tok_s']:.0f}"
                     f" | {d['first_call_s']:.1f} | {len(d['group']['runs_s'])} |")
    lines += ["", "With profiling active XLA runs op by op unless "
              "`--xla_enable_command_buffers_during_profiling=true` (set in the cmdbuf_while "
              "arm), so only that arm's profile shows graphs.", ""]


def init_section(res: dict, lines: list[str]) -> None:
    i = res.get("init")
    lines += ["## Model creation", ""]
    if not i:
        lines += [f"`create_model` of the preset in bf16: {_stage_note(res, 'init')}.", ""]
        return
    lines += [f"`create_model(preset('{i['preset']}'), bf16)`, {i['params']:,} parameters: "
              f"{i['first_s']:.1f} s (compile included; target < {TARGETS['init_s']:.0f} s: "
              f"{_met(i['first_s'] < TARGETS['init_s'])}), {i['second_s']:.1f} s a second time.",
              ""]


def train_section(res: dict, lines: list[str]) -> None:
    t, env = res["train"], res.get("env") or {}
    tu = res.get("torch_update")
    lines += ["## One GRPO step through `socialr1_jax.train`'s main", "",
              f"{t['rows']} sequences (8 prompts x 5 samples), {t['prompt_len']} + "
              f"{t['completion_len']} tokens" + (
                  " (tiny check)" if res["tiny"] else " (the recipe's 512 + 2048)"
                  if t["completion_len"] == 2048 else " (a slice of the recipe's 512 + 2048: the "
                  "largest that fit the time left, see run.py)")
              + f", micro-batch {t['micro_batch']}, full remat, bf16 weights with an fp32 "
              "master copy and fp32 AdamW moments, 1 device. Step 0 compiles; step 1 is timed.",
              "", f"Command: `{t['command']}`", ""]
    steps = {s["step"]: s for s in t["steps"]}
    if 1 not in steps:
        lines += [f"Not measured: {_stage_note(res, 'train')}.", ""]
        return
    s = steps[1]
    cfg = _cfg(res)
    f_upd = flops.update_flops(cfg, t["rows"], t["prompt_len"], t["completion_len"])
    f_ref = flops.forward_flops(cfg, t["rows"], t["prompt_len"], t["completion_len"])
    mm = env.get("matmul_bf16_TFLOPs")
    mfu = f_upd / s["update_s"] / 1e12
    lines += ["| phase | step 0 (compiles) s | step 1 s | model TFLOP/s |", "|---|---|---|---|",
              f"| rollout (sampling) | {steps[0]['sample_s']:.2f} | {s['sample_s']:.2f} | |",
              f"| reference log-probs (+ scoring, advantages) | "
              f"{steps[0]['ref_and_scoring_s']:.2f} | {s['ref_and_scoring_s']:.2f} | "
              f"{f_ref / s['ref_and_scoring_s'] / 1e12:.3g} |",
              f"| update | {steps[0]['update_s']:.2f} | {s['update_s']:.2f} | {mfu:.3g} |", "",
              f"Update model FLOP utilisation: {mfu:.3g} TFLOP/s = "
              f"{100 * mfu / H200_BF16_DENSE_TFLOPS:.3g}% of the H200's {H200_BF16_DENSE_TFLOPS:.0f}"
              " dense bf16 TFLOP/s (datasheet)" + (f", {100 * mfu / mm:.3g}% of the "
                                                  f"{mm:.3g} TFLOP/s measured for an "
                                                  f"{env['matmul_shape']}^3 bf16 matmul in this run"
                                                  if mm else "")
              + f". Model FLOPs per update {f_upd:.3e} (benchmarks/gpu/flops.py: 3x the "
              "forward; remat's recomputation not counted). Phases timed by "
              "benchmarks/gpu/train_phases.py around the trainer's own calls.", ""]
    peak = next((x.get("peak_gpu_mib_nvidia_smi") for x in res["stages"]
                 if x["stage"] == "train"), None)
    if peak:
        lines += [f"Peak GPU memory during the train stage (nvidia-smi, no preallocation): "
                  f"{peak / 1024:.1f} GiB.", ""]
    if tu:
        lines += [f"**The same update in transformers {env.get('versions', {}).get('transformers')}"
                  f" + torch {env.get('versions', {}).get('torch')}** (same rows and lengths, "
                  f"micro-batch {tu['micro_batch']}, gradient checkpointing, bf16 weights and "
                  "AdamW state, head on the completion positions via `logits_to_keep`): "
                  f"{tu['update_s']:.2f} s, {tu['model_TFLOPs_per_s']:.3g} model TFLOP/s; ours "
                  f"is {tu['update_s'] / s['update_s']:.2f}x "
                  + ("faster." if tu["update_s"] > s["update_s"] else "its speed (slower).")
                  + (f" Torch ran out of memory at micro-batch "
                     f"{tu['out_of_memory_at_micro_batch']}." if tu.get(
                         "out_of_memory_at_micro_batch") else ""), ""]
    else:
        lines += [f"Torch update: {_stage_note(res, 'torch_update')}.", ""]


def _cfg(res: dict):
    from socialr1_jax.model.config import preset

    return preset("tiny" if res["tiny"] else "qwen3-4b")


def render(res: dict) -> str:
    env = res.get("env") or {}
    v = env.get("versions", {})
    lines = [f"# GPU benchmark (issue 13): {env.get('device_kind', 'device unknown')}, "
             f"{env.get('date_utc', 'date unknown')}" + (" — TINY CPU CHECK, not a measurement"
                                                         if res["tiny"] else ""), "",
             f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, flax {v.get('flax')}, torch "
             f"{v.get('torch')}, transformers {v.get('transformers')}, Python "
             f"{env.get('python')}; commit {res.get('commit', 'unknown')}; "
             f"`benchmarks/gpu/run.sh` in {res['total_wall_s']:.0f} s.", ""]
    if env.get("nvidia_smi"):
        lines += ["```", env["nvidia_smi"], "```", ""]
    if env:
        lines += [f"Ceilings measured in this run: copy bandwidth {env['copy_GBps']:.0f} GB/s "
                  f"(read + write bytes of x + 1 over a {env['copy_array_bytes'] / 1e9:.2f} GB "
                  f"fp32 array); bf16 matmul {env['matmul_bf16_TFLOPs']:.0f} TFLOP/s "
                  f"({env['matmul_shape']}^3, random inputs).", ""]
    decode_section(res, lines)
    profile_section(res, lines)
    arms_section(res, lines)
    init_section(res, lines)
    train_section(res, lines)
    lines += ["## Stages", "", "| stage | wall s | outcome |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['wall_s']:.1f} | {s['note']} |" for s in res["stages"]]
    return "\n".join(lines) + "\n"


def write(out: str, res: dict) -> None:
    """OUT/gpu_results.json and OUT/gpu_results.md."""
    from bench_common import git_commit

    res.setdefault("commit", os.environ.get("GPU_BENCH_COMMIT") or git_commit())
    with open(os.path.join(out, "gpu_results.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "gpu_results.md"), "w") as f:
        f.write(render(res))
