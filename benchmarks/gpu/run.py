"""The issue-13 GPU benchmark: one command, stages in fresh processes, under a time budget.

    python3 benchmarks/gpu/run.py OUTDIR [--tiny] [--budget-s 465] [--work DIR] [--keep-work]

(`benchmarks/gpu/run.sh OUTDIR [--tiny]` sets the environment and calls this.) Stages, in order:

  env        device, versions, device copy bandwidth, bf16 matmul rate
  ckpt       a random bf16 HF checkpoint of Qwen3-4B (N(0, 0.02), norms 1) in the work dir
  init       `create_model` of the 4B preset, bf16: wall time (target < 30 s)
  decode     the sampler on that checkpoint, default XLA flags: first call (compile included),
             8 prompts x 5 samples tok/s, B=1 step vs the bandwidth floor, greedy agreement with
             transformers on the same weights (same process: XLA_PYTHON_CLIENT_PREALLOCATE=false),
             a profile summary (kernels per decode step, time in kernels vs gaps)
  train      one GRPO step after a warm-up step through `python -m socialr1_jax.train` (the 4B
             recipe's config on 1 device, the toy task's reward, the checkpoint as the policy):
             rollout, reference log-probs and update timed; the update's model FLOP utilisation
  torch      the same update in transformers + torch on the same checkpoint and shapes
  decode.*   the XLA command-buffer A/B: the sampler again with the while loop / conditionals
             recorded as CUDA graphs, and with command buffers off; and the sampler scanning
             the stacked layers (unstack_layers=False) instead of per-layer weights and cache

Each stage has a time cap and the whole run a budget (--budget-s); a stage that fails or runs
out of time is reported as such and the next one runs. The GRPO step's completion length is the
recipe's 2048 when the measured decode speed says two steps fit the time left, else the largest
of 1536 / 1024 / 512 / 256 that does (GPU_BENCH_COMPLETION_LEN=N forces it); the report states
it. Output: OUTDIR/gpu_results.md, OUTDIR/gpu_results.json, OUTDIR/gpu_logs.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.dirname(HERE), HERE]

import report  # noqa: E402

ARMS = {  # name: XLA_FLAGS added for the decode A/B
    "default": "",
    "cmdbuf_while": "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL "
                    "--xla_enable_command_buffers_during_profiling=true",
    "cmdbuf_off": "--xla_gpu_enable_command_buffer=",
    "scan_layers": "",
}
# Arms that change the sampler rather than XLA: scan_layers decodes with sample(...,
# unstack_layers=False), a scan over the stacked weights and cache (no per-layer copy of the
# weights held while sampling; on CPU it slices every weight each step).
ARM_OPTIONS = {"scan_layers": ["--scan-layers"]}
COMPLETION_CHOICES = (2048, 1536, 1024, 512, 256)
TRAIN_LINE = re.compile(r"^PHASES (\{.*\})$", re.M)


class Runner:
    """Runs stage commands under the run's deadline and appends their output to one log."""

    def __init__(self, out: str, budget_s: float):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.log = open(os.path.join(out, "gpu_logs.txt"), "w")
        self.status = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], env: dict, cap_s: float, reserve_s: float = 0.0,
            min_s: float = 20.0, poll_gpu: bool = False) -> tuple[int | None, str]:
        """Run cmd with timeout min(cap_s, time left - reserve_s); (rc or None, its output)."""
        timeout = min(cap_s, self.left() - reserve_s)
        if timeout < min_s:
            self.status.append({"stage": name, "rc": None, "wall_s": 0.0,
                                "note": f"skipped: {max(timeout, 0):.0f} s left for it"})
            return None, ""
        self.log.write(f"\n===== {name} (timeout {timeout:.0f} s): {' '.join(cmd)}\n")
        self.log.flush()
        peak = {"mib": None}
        stop = threading.Event()
        if poll_gpu and shutil.which("nvidia-smi"):
            threading.Thread(target=_poll_gpu_memory, args=(peak, stop), daemon=True).start()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=ROOT, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=timeout)
            rc, note = proc.returncode, "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            rc, note = None, f"did not finish within {timeout:.0f} s (killed)"
        stop.set()
        wall = time.monotonic() - t0
        self.log.write(text + f"\n===== {name}: {note}, {wall:.1f} s\n")
        self.log.flush()
        if rc not in (0, None):
            tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
            note += f": {tail[0][:300]}"
        entry = {"stage": name, "rc": rc, "wall_s": wall, "note": note}
        if peak["mib"] is not None:
            entry["peak_gpu_mib_nvidia_smi"] = peak["mib"]
        self.status.append(entry)
        return rc, text


def _poll_gpu_memory(peak: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                   "--format=csv,noheader,nounits"], capture_output=True,
                                  text=True, timeout=10).stdout.split()
            if used:
                peak["mib"] = max(peak["mib"] or 0, int(used[0]))
        except (OSError, subprocess.SubprocessError, ValueError):
            return
        stop.wait(1.0)


def stage_env(extra_flags: str = "", preallocate: bool = True) -> dict:
    """The environment of a stage process: the project on PYTHONPATH, offline, one CPU device
    when on CPU, `extra_flags` added to XLA_FLAGS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = " ".join((flags + " " + extra_flags).split())
    if not preallocate:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def _load(work: str, name: str) -> dict | None:
    path = os.path.join(work, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def choose_completion(decode: dict | None, env: dict | None, train_budget_s: float) -> int:
    """The largest completion length whose two GRPO steps (warm-up + timed) fit the budget,
    estimated from the measured 40-row decode step and matmul rate."""
    forced = os.environ.get("GPU_BENCH_COMPLETION_LEN")
    if forced:
        return int(forced)
    if not decode or "group" not in decode:
        return 512
    import flops
    from socialr1_jax.model.config import preset

    cfg = preset("qwen3-4b")
    # The rollout's caches hold 2560 slots, not the 384 measured: at 40 rows their reads come
    # near the weights' 8 GB per step, so allow twice the measured step.
    step_s = 2.0 * decode["group"]["step_ms"] / 1e3
    rate = 0.3 * 1e12 * (env or {}).get("matmul_bf16_TFLOPs", 300.0)
    for c in COMPLETION_CHOICES:
        compute = 4 * flops.forward_flops(cfg, 40, 512, c) / rate  # ref (1x) + update (3x)
        if 90 + 2 * (c * step_s + compute) <= train_budget_s:
            return c
    return COMPLETION_CHOICES[-1]


def parse_train(text: str) -> list[dict]:
    """The per-step phase times that train_phases.py prints."""
    return [json.loads(m.group(1)) for m in TRAIN_LINE.finditer(text)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true",
                    help="the tiny preset and shapes: the CPU check of this script")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="whole-run budget (default 465 s, --tiny 900 s)")
    ap.add_argument("--work", default=None, help="checkpoint and traces (default /tmp/...)")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--arms", default=",".join(ARMS), help="decode A/B arms to run, in order")
    ap.add_argument("--only", default="",
                    help="run only these stages (comma-separated: env, ckpt, init, "
                         "decode.ARM, train, torch_update); the checkpoint is made when needed")
    a = ap.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in ARMS]
    if unknown or not arms or arms[0] != "default":
        ap.error(f"--arms: the first must be 'default'; known: {sorted(ARMS)}; got {a.arms!r}")
    os.makedirs(a.out, exist_ok=True)
    work = a.work or ("/tmp/socialr1_gpu_bench" + ("_tiny" if a.tiny else ""))
    os.makedirs(work, exist_ok=True)
    budget = a.budget_s or (900.0 if a.tiny else 465.0)
    r = Runner(a.out, budget)
    py = sys.executable
    stages = os.path.join(HERE, "stages.py")
    tiny = ["--tiny"] if a.tiny else []
    base = [py, stages]

    only = {x for x in a.only.split(",") if x}
    needs_ckpt = not only or any(x.startswith(("decode", "train", "torch")) for x in only)

    def wanted(name):
        return not only or name in only or (name == "ckpt" and needs_ckpt)

    def stage(name, cap, reserve=0.0, extra=(), flags="", preallocate=True, poll=False):
        if not wanted(name):
            return None, ""
        stale = os.path.join(work, name + ".json")
        if os.path.exists(stale) and name != "ckpt":  # never report an older run's numbers
            os.remove(stale)
        cmd = base + [name.split(".")[0], "--work", work] + tiny + list(extra)
        return r.run(name, cmd, stage_env(flags, preallocate), cap, reserve, poll_gpu=poll)

    # Reserves keep time for what matters more later (the GRPO step, the torch update).
    stage("env", 90, reserve=300)
    stage("ckpt", 150, reserve=280)
    stage("init", 60, reserve=260)
    stage("decode.default", 200, reserve=180, preallocate=False,
          extra=["--arm", "default", "--profile", "--hf", "--repeats", "1" if a.tiny else "3"])
    prompt_len = 16 if a.tiny else 512
    train_budget = r.left() - 110
    completion = 16 if a.tiny else choose_completion(_load(work, "decode.default"),
                                                     _load(work, "env"), train_budget)
    config = os.path.join(ROOT, "configs", "socialr1_qwen3_4b.yaml")
    train_cmd = [py, os.path.join(HERE, "train_phases.py"), "--config", config,
                 f"model.path={os.path.join(work, 'ckpt')}", "mesh.fsdp=1", "run.task=toy",
                 "run.steps=2", "run.out_dir=", "run.progress=false", "run.save_every=0",
                 f"toy.prompt_len={prompt_len}", f"rollout.max_prompt_len={prompt_len}",
                 f"rollout.max_new_tokens={completion}", "grpo.micro_batch_size=8"]
    rc, text = (r.run("train", train_cmd, stage_env(preallocate=False), train_budget + 10,
                      reserve_s=100, poll_gpu=True) if wanted("train") else (None, ""))
    train = {"command": " ".join(train_cmd), "prompt_len": prompt_len,
             "completion_len": completion, "rows": 40, "micro_batch": 8,
             "steps": parse_train(text or "")}
    stage("torch_update", 150, extra=["--prompt-len", str(prompt_len), "--completion-len",
                                      str(completion), "--micro-batch", "8",
                                      "--repeats", "1" if a.tiny else "2"],
          poll=True)
    for arm in arms[1:]:
        stage(f"decode.{arm}", 120, flags=ARMS[arm], preallocate=False,
              extra=["--arm", arm, "--profile", "--repeats", "1", *ARM_OPTIONS.get(arm, [])])

    results = {"stages": r.status, "tiny": a.tiny, "budget_s": budget,
               "env": _load(work, "env"), "ckpt": _load(work, "ckpt"),
               "init": _load(work, "init"), "train": train,
               "torch_update": _load(work, "torch_update"),
               "decode": {arm: _load(work, f"decode.{arm}") for arm in arms},
               "arms_flags": {arm: ARMS[arm] for arm in arms},
               "arms_options": {arm: " ".join(ARM_OPTIONS.get(arm, [])) for arm in arms}}
    results["total_wall_s"] = time.monotonic() - r.t0
    report.write(a.out, results)
    if not a.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(open(os.path.join(a.out, "gpu_results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
