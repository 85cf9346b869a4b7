"""The stages of the GPU benchmark, each run in its own process by `run.py`.

    python3 benchmarks/gpu/stages.py STAGE --work DIR [--tiny] [stage options]

Each stage writes DIR/STAGE[.ARM].json. Stages: env (device, versions, copy bandwidth, bf16
matmul rate), ckpt (a random bf16 HF checkpoint of the model), init (random init time of the
preset), decode (sampler speed, first-call time, greedy agreement with transformers, profile),
torch_update (the GRPO update in transformers + torch). `--tiny` runs the same code with the
'tiny' preset and small shapes on whatever device is there (the CPU check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.dirname(HERE), HERE]

from bench_common import median_time  # noqa: E402

# The shapes of issue 13: Qwen3-4B, 8 prompts x 5 samples, 128-token prompts, 256 new tokens;
# the GRPO step 512 + 2048 tokens. --tiny: the same code on the 'tiny' preset.
SHAPES = {
    False: {"preset": "qwen3-4b", "prompt": 128, "new": 256, "profile_steps": 32,
            "bw_elems": 1 << 30, "mm": 8192},
    True: {"preset": "tiny", "prompt": 16, "new": 16, "profile_steps": 4,
           "bw_elems": 1 << 22, "mm": 256},
}
PROMPTS, GROUP = 8, 5
BETA, LR = 0.04, 5e-7


def _write(work: str, name: str, result: dict) -> None:
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result)[:2000], flush=True)


def stage_env(a) -> dict:
    """Device, versions, copy bandwidth (read + write bytes) and the bf16 matmul rate."""
    import jax
    import jax.numpy as jnp

    s = SHAPES[a.tiny]
    dev = jax.devices()[0]
    out = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(),
           "platform": dev.platform, "device_kind": dev.device_kind,
           "device_count": jax.device_count(), "versions": {}}
    for mod in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "torch",
                "transformers"):
        try:
            out["versions"][mod] = __import__(mod, fromlist=["_"]).__version__
        except Exception as e:  # noqa: BLE001  a missing package is recorded, not fatal
            out["versions"][mod] = f"missing ({type(e).__name__})"
    try:
        out["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
             "clocks.max.sm,power.limit", "--format=csv"], capture_output=True, text=True,
            timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = "not available"
    x = jax.random.normal(jax.random.key(0), (s["bw_elems"],), jnp.float32)
    add = jax.jit(lambda x: x + 1.0)  # reads and writes every element once
    add(x).block_until_ready()
    t, _ = median_time(lambda: add(x).block_until_ready(), 20)
    out["copy_GBps"] = 2 * x.nbytes / t / 1e9
    out["copy_array_bytes"] = x.nbytes
    n = s["mm"]
    k1, k2 = jax.random.split(jax.random.key(1))
    p, q = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in (k1, k2))
    mm = jax.jit(lambda p, q: p @ q)
    mm(p, q).block_until_ready()
    t, _ = median_time(lambda: mm(p, q).block_until_ready(), 20)
    out["matmul_bf16_TFLOPs"] = 2 * n ** 3 / t / 1e12
    out["matmul_shape"] = n
    return out


def stage_ckpt(a) -> dict:
    """A random bf16 HF checkpoint (two safetensors shards, config.json): N(0, 0.02) weights,
    RMSNorm scales 1, as transformers initialises them."""
    from convert_bench import make_source
    from socialr1_jax.model.config import preset

    cfg = preset(SHAPES[a.tiny]["preset"], param_dtype="bfloat16", dtype="bfloat16")
    path = os.path.join(a.work, "ckpt")
    if os.path.exists(os.path.join(path, "config.json")):
        return {"path": path, "reused": True, "params": cfg.num_params()}
    t0 = time.perf_counter()
    nbytes = make_source(cfg, path, norm_value=1.0)
    return {"path": path, "bytes": nbytes, "params": cfg.num_params(),
            "seconds": time.perf_counter() - t0}


def stage_init(a) -> dict:
    """Wall time of `create_model` for the preset in bf16 (compile + run), then a second call."""
    import jax
    from flax import nnx

    from socialr1_jax import create_model
    from socialr1_jax.model.config import preset

    cfg = preset(SHAPES[a.tiny]["preset"], param_dtype="bfloat16", dtype="bfloat16")
    times = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        model = create_model(cfg, seed=seed)
        jax.block_until_ready(nnx.state(model))
        times.append(time.perf_counter() - t0)
        del model
    return {"preset": SHAPES[a.tiny]["preset"], "params": cfg.num_params(),
            "first_s": times[0], "second_s": times[1]}


def _sample_fn(model, prompts, eos=(), unstack_layers=True):
    import numpy as np

    from socialr1_jax import sample

    def run(n_new, samples, temperature=1.0, seed=0, rows=None):
        out = sample(model, prompts[:rows], max_new_tokens=n_new, temperature=temperature,
                     num_samples=samples, eos_ids=eos, seed=seed, unstack_layers=unstack_layers)
        return np.asarray(out.tokens)  # waits for the device
    return run


def _profile(run, work: str, tag: str, steps: int, **kw) -> dict:
    """Trace a 1-token call and a (1 + steps)-token call; per-step kernels, busy time, gaps."""
    import jax

    import profile_summary as ps

    summaries = {}
    for n in (1, 1 + steps):
        d = os.path.join(work, "traces", f"{tag}_{n}")
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run(n, **kw)
        summaries[n] = ps.summarize(ps.load_events(ps.find_trace(d)))
    per = ps.per_step(summaries[1], summaries[1 + steps], steps)
    return {"steps_traced": steps, "source": summaries[1]["source"], **per,
            "top_kernels_long_call": summaries[1 + steps]["top"]}


def stage_decode(a) -> dict:
    """The sampler on the checkpoint: first call, 8 x 5 and B=1 speed, greedy agreement, profile."""
    import jax
    import numpy as np
    from flax import nnx

    from socialr1_jax import load_model

    s = SHAPES[a.tiny]
    new = s["new"]
    out = {"arm": a.arm, "xla_flags": os.environ.get("XLA_FLAGS", ""), "prompt_len": s["prompt"],
           "new_tokens": new, "prompts": PROMPTS, "group": GROUP, "temperature": 1.0,
           "eos": "none", "unstack_layers": not a.scan_layers}
    t0 = time.perf_counter()
    model = load_model(os.path.join(a.work, "ckpt"))
    jax.block_until_ready(nnx.state(model))
    out["load_s"] = time.perf_counter() - t0
    cfg = model.cfg
    out["weight_bytes"] = cfg.num_params() * jax.numpy.dtype(cfg.param_dtype).itemsize
    rng = np.random.default_rng(0)
    prompts = rng.integers(2, min(cfg.vocab_size, 151643), (PROMPTS, s["prompt"])).tolist()
    run = _sample_fn(model, prompts, unstack_layers=not a.scan_layers)

    save = lambda: _write(a.work, f"decode.{a.arm}", out)  # noqa: E731  after each part,
    # so a stage stopped at its time cap still leaves what it measured.
    t0 = time.perf_counter()
    run(new, GROUP)  # the first call in this process: compiles prefill + decode loop
    out["first_call_s"] = time.perf_counter() - t0
    reps = a.repeats
    g_new, g_runs = median_time(lambda: run(new, GROUP, seed=1), reps)
    run(1, GROUP)
    g_one, _ = median_time(lambda: run(1, GROUP, seed=2), reps)
    rows = PROMPTS * GROUP
    out["group"] = {"rows": rows, "s": g_new, "runs_s": g_runs, "prefill_plus_1_s": g_one,
                    "tok_s": rows * new / g_new, "step_ms": 1e3 * (g_new - g_one) / (new - 1)}
    save()
    t0 = time.perf_counter()
    run(new, 1, rows=1)
    out["b1_first_call_s"] = time.perf_counter() - t0
    b_new, b_runs = median_time(lambda: run(new, 1, seed=3, rows=1), reps)
    run(1, 1, rows=1)
    b_one, _ = median_time(lambda: run(1, 1, seed=4, rows=1), reps)
    out["b1"] = {"s": b_new, "runs_s": b_runs, "prefill_plus_1_s": b_one, "tok_s": new / b_new,
                 "step_ms": 1e3 * (b_new - b_one) / (new - 1)}
    save()
    if a.profile:
        steps = s["profile_steps"]
        for tag, kw in (("b1", {"samples": 1, "rows": 1}), ("group", {"samples": GROUP})):
            try:
                out[f"profile_{tag}"] = _profile(run, a.work, f"{a.arm}_{tag}", steps, **kw)
            except Exception as e:  # noqa: BLE001  the timings above stand without it
                out[f"profile_{tag}"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            save()
    if a.hf:
        out["greedy"] = _greedy_agreement(a, run, prompts, new)
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_device_bytes"] = stats.get("peak_bytes_in_use")
    return out


def _greedy_agreement(a, run, prompts, new: int) -> dict:
    """Ours greedy vs transformers' greedy `generate` on the same bf16 weights, 8 prompts."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    ours = run(new, 1, temperature=0.0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(a.work, "ckpt"),
                                               dtype=torch.bfloat16).to(dev).eval()
    ids = torch.tensor(prompts, device=dev)

    def gen(n):
        with torch.no_grad():
            o = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        if dev == "cuda":
            torch.cuda.synchronize()
        return o[:, ids.shape[1]:].cpu().numpy()

    gen(2)  # warm-up (kernels, caches)
    t0 = time.perf_counter()
    theirs = gen(new)
    hf_s = time.perf_counter() - t0
    same = (ours == theirs)
    prefix = [int(np.argmin(np.append(r, False))) for r in same]
    return {"rows": len(prompts), "new_tokens": new, "rows_identical": float(same.all(1).mean()),
            "mean_identical_prefix": float(np.mean(prefix)), "prefixes": prefix,
            "hf_generate_s": hf_s, "hf_tok_s": len(prompts) * new / hf_s,
            "hf_device": dev}


def stage_torch_update(a) -> dict:
    """The GRPO update in transformers + torch on the checkpoint: same rows, lengths and
    micro-batches as ours, gradient checkpointing (our remat=full), bf16 weights, AdamW."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    import flops
    import torch_grpo
    from socialr1_jax.model.config import from_hf_config

    ckpt = os.path.join(a.work, "ckpt")
    cfg = from_hf_config(ckpt)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).to(dev)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    rows, p, c = PROMPTS * GROUP, a.prompt_len, a.completion_len
    rng = np.random.default_rng(0)
    vocab = min(cfg.vocab_size, 151643)
    batch = {"prompt_ids": rng.integers(2, vocab, (rows, p)), "prompt_mask": np.ones((rows, p)),
             "completion_ids": rng.integers(2, vocab, (rows, c)),
             "completion_mask": np.ones((rows, c), np.float32),
             "old_logp": (-12 + 0.1 * rng.standard_normal((rows, c))).astype(np.float32),
             "ref_logp": (-12 + 0.1 * rng.standard_normal((rows, c))).astype(np.float32),
             "advantages": rng.standard_normal(rows).astype(np.float32)}
    t = torch_grpo.as_tensors(batch, dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    mb, out = a.micro_batch, {"rows": rows, "prompt_len": p, "completion_len": c,
                              "gradient_checkpointing": True, "dtype": "bfloat16"}
    while True:
        try:
            times, loss = torch_grpo.time_updates(model, t, a.repeats, beta=BETA, lr=LR,
                                                  micro_batch=mb, sync=sync)
            break
        except torch.cuda.OutOfMemoryError:
            out.setdefault("out_of_memory_at_micro_batch", []).append(mb)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if mb == 1:
                raise
            mb //= 2
    med = statistics.median(times)
    f = flops.update_flops(cfg, rows, p, c)
    out.update({"micro_batch": mb, "update_s": med, "runs_s": times, "first_loss": loss,
                "model_flops": f, "model_TFLOPs_per_s": f / med / 1e12})
    if dev == "cuda":
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    return out


STAGES = {"env": stage_env, "ckpt": stage_ckpt, "init": stage_init, "decode": stage_decode,
          "torch_update": stage_torch_update}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--work", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--arm", default="default", help="decode: the name of this XLA_FLAGS arm")
    ap.add_argument("--scan-layers", action="store_true",
                    help="decode: sample(..., unstack_layers=False), a scan over stacked layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="decode: trace and summarise")
    ap.add_argument("--hf", action="store_true", help="decode: greedy agreement with transformers")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--completion-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=8)
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    name = a.stage + (f".{a.arm}" if a.stage == "decode" else "")
    t0 = time.perf_counter()
    result = STAGES[a.stage](a)
    result["stage_wall_s"] = time.perf_counter() - t0
    _write(a.work, name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
