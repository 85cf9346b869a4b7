"""Compile and init times of the model: Qwen3-4B's init and GRPO train step compiled abstractly on
8 simulated CPU devices, and the real random init of a smaller preset.

    python benchmarks/compile_bench.py [--skip init4b,train4b,sample4b,real]
        [--real-preset qwen3-0.6b]
        [--out benchmarks/results/compile_bench]
    python benchmarks/compile_bench.py --table BEFORE.json AFTER.json [AFTER2.json ...]
        [--out benchmarks/results/compile_bench]      # Markdown table of saved runs

- init4b: `create_model`'s jitted init of the qwen3-4b preset (fp32, as `create_model(preset(
  "qwen3-4b"))` builds it) with its out_shardings on a 1x8x1 mesh, lowered and compiled
  (nothing allocated). Lowering and compiling are timed separately.
- train4b: the memory plan's two programs for `--preset qwen3-4b --mesh 1x8x1 --remat full
  --micro-batch 8` (the train step and the reference log-prob forward), lowering + compile each,
  with the memory plan's XLA flags.
- sample4b: the sampler's program (`sampler._generate`) for the 4B recipe's rollout: qwen3-4b
  in bf16, 8 prompts x 5 samples sharing one prefill, 512 + 2048 tokens, T=1, on one device,
  lowered + compiled abstractly; XLA's temporaries (the KV cache, the per-layer weight copies,
  the prefill's activations) recorded.
- real: `create_model(preset(...))` wall time on one CPU device (trace + compile + run), then
  on the 1x8x1 mesh, and the wall time of one forward over 8 x 64 tokens.

Run it against another checkout by putting that checkout first on PYTHONPATH (the script only
uses public entry points: `create_model`, `memory_plan.plan`, and the model's own init).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

_FLAGS = ("--xla_force_host_platform_device_count=8 "
          "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _init_program(cfg, mesh):
    """The jitted init `create_model` compiles, with its out_shardings."""
    import jax
    from flax import nnx

    from socialr1_jax.model import build
    from socialr1_jax.model.qwen3 import Qwen3

    if hasattr(build, "init_program"):
        return build.init_program(cfg, mesh, seed=0)
    # The checkout before the stacked layers: rebuild what its create_model jits.
    _, _, shardings = build.shardings_for(cfg, mesh)
    return jax.jit(lambda: nnx.state(Qwen3(cfg, rngs=nnx.Rngs(0))), out_shardings=shardings)


def bench_init4b() -> dict:
    from socialr1_jax.model.config import preset
    from socialr1_jax.parallel.sharding import make_mesh

    cfg = preset("qwen3-4b")
    mesh = make_mesh(1, 8, 1)
    t0 = time.perf_counter()
    lowered = _init_program(cfg, mesh).lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo_ops = compiled.as_text().count("\n")
    return {"preset": "qwen3-4b", "param_dtype": cfg.param_dtype, "mesh": "1x8x1",
            "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2), "compiled_hlo_lines": hlo_ops}


def bench_train4b() -> dict:
    from socialr1_jax.jobs import memory_plan

    p = memory_plan.plan(preset="qwen3-4b", mesh="1x8x1", remat="full", micro_batch=8)
    return {"setting": "qwen3-4b 1x8x1 remat full micro-batch 8 (8 x 5 x (512 + 2048))",
            "programs": {q["name"]: {"lower_plus_compile_s": q["compile_s"],
                                     "temporaries_gb": round(q["temporaries"] / 1e9, 2),
                                     "peak_gb": round(q["peak"] / 1e9, 2)}
                         for q in p["programs"]},
            "peak_gb": round(p["peak_bytes_per_device"] / 1e9, 2)}


def bench_sample4b() -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from socialr1_jax.model.config import preset
    from socialr1_jax.model.qwen3 import Qwen3
    from socialr1_jax.rollout import sampler

    cfg = preset("qwen3-4b", dtype="bfloat16", param_dtype="bfloat16")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))))
    b, p, n, group = 40, 512, 2048, 5
    fields = {f.name for f in dataclasses.fields(sampler._Plan)}
    plan = sampler._Plan(**{k: v for k, v in dict(
        new_len=n, greedy=False, top_k=0, use_top_p=False, pad_id=0, prefill_chunk=p,
        shared_prefill=group).items() if k in fields})
    ids = jax.ShapeDtypeStruct((b, p), jnp.int32)
    t0 = time.perf_counter()
    lowered = sampler._generate.lower(
        graphdef, state, ids, ids, jax.ShapeDtypeStruct((b,), jnp.bool_), jax.random.key(0),
        jnp.float32(1), jnp.float32(1), jnp.asarray([-1], jnp.int32), jnp.int32(n), plan=plan)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    return {"setting": "qwen3-4b bf16, 8 x 5 rows (shared prefill), 512 + 2048 tokens, T=1",
            "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2),
            "temporaries_gb": round(mem.temp_size_in_bytes / 1e9, 2),
            "arguments_gb": round(mem.argument_size_in_bytes / 1e9, 2)}


def bench_real(name: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from socialr1_jax import create_model, preset
    from socialr1_jax.parallel.sharding import make_mesh

    cfg = preset(name)
    out = {"preset": name, "params": cfg.num_params(), "param_dtype": cfg.param_dtype}
    for where, mesh in (("1 device", None), ("mesh 1x8x1", make_mesh(1, 8, 1))):
        t0 = time.perf_counter()
        model = create_model(cfg, mesh=mesh, seed=0)
        jax.block_until_ready(nnx.state(model))
        out[f"create_model_s ({where})"] = round(time.perf_counter() - t0, 2)
        del model
    model = create_model(cfg, seed=0)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 64)), jnp.int32)
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(state, ids))
    out["first_forward_8x64_s (compile + run)"] = round(time.perf_counter() - t0, 2)
    return out


def table(paths: list[str]) -> str:
    """Saved runs (JSON files of this script) side by side as a Markdown table."""
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append((p, json.load(f)))
    rows = [
        ("4B init (fp32, 1x8x1): lower + compile s", lambda r: r["init4b"]["total_s"]),
        ("4B init: compiled HLO lines", lambda r: r["init4b"]["compiled_hlo_lines"]),
        ("4B train step: lower + compile s", lambda r: r["train4b"]["programs"]["train step"][
            "lower_plus_compile_s"]),
        ("4B log-prob forward: lower + compile s", lambda r: r["train4b"]["programs"][
            "log-prob forward"]["lower_plus_compile_s"]),
        ("4B train step temporaries GB", lambda r: r["train4b"]["programs"]["train step"][
            "temporaries_gb"]),
        ("4B log-prob forward temporaries GB", lambda r: r["train4b"]["programs"][
            "log-prob forward"]["temporaries_gb"]),
        ("4B step peak per device GB", lambda r: r["train4b"]["peak_gb"]),
        ("4B sampling program (bf16, 8 x 5, 512 + 2048): lower + compile s",
         lambda r: r["sample4b"]["total_s"]),
        ("4B sampling program temporaries GB", lambda r: r["sample4b"]["temporaries_gb"]),
        ("0.6B create_model s (1 device)", lambda r: r["real"]["create_model_s (1 device)"]),
        ("0.6B create_model s (mesh 1x8x1)", lambda r: r["real"]["create_model_s (mesh 1x8x1)"]),
        ("0.6B first forward 8x64 s", lambda r: r["real"]["first_forward_8x64_s (compile + run)"]),
        ("1-min load average at start / end", lambda r: f"{r['load_avg_start']:.1f} / "
                                                       f"{r['load_avg_end']:.1f}"),
    ]
    head = "| | " + " | ".join(os.path.basename(p) for p, _ in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for name, get in rows:
        cells = []
        for _, r in runs:
            try:
                cells.append(str(get(r)))
            except KeyError:
                cells.append("-")
        if any(c != "-" for c in cells):  # rows no run measured are left out
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", default="", help="comma-separated: init4b,train4b,sample4b,real")
    ap.add_argument("--real-preset", default="qwen3-0.6b")
    ap.add_argument("--out", default=None, help="write OUT.json (with --table: OUT.md)")
    ap.add_argument("--table", nargs="+", default=None, help="saved runs to tabulate, in order")
    args = ap.parse_args(argv)
    if args.table:
        text = table(args.table)
        print(text)
        if args.out:
            with open(args.out + ".md", "w") as f:
                f.write(f"# Compile and init times (`benchmarks/compile_bench.py`)\n\n{text}\n")
        return 0
    skip = set(filter(None, args.skip.split(",")))

    import jax

    import socialr1_jax

    result = {"checkout": os.path.dirname(os.path.dirname(os.path.abspath(socialr1_jax.__file__))),
              "jax": jax.__version__, "devices": jax.device_count(),
              "load_avg_start": os.getloadavg()[0], "machine": platform.processor() or "cpu",
              "cpus": os.cpu_count()}
    if "init4b" not in skip:
        result["init4b"] = bench_init4b()
        print("init4b", json.dumps(result["init4b"]), flush=True)
    if "train4b" not in skip:
        result["train4b"] = bench_train4b()
        print("train4b", json.dumps(result["train4b"]), flush=True)
    if "sample4b" not in skip:
        result["sample4b"] = bench_sample4b()
        print("sample4b", json.dumps(result["sample4b"]), flush=True)
    if "real" not in skip:
        result["real"] = bench_real(args.real_preset)
        print("real", json.dumps(result["real"]), flush=True)
    result["load_avg_end"] = os.getloadavg()[0]
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
