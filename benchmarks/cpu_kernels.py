"""Micro-benchmarks behind the README's statements about XLA:CPU on this machine.

    python benchmarks/cpu_kernels.py [--repeats 20] [--quiet-load 1.5]
                                     [--results benchmarks/results/cpu_kernels]

One CPU device (both cores), fp32, the bench-100m shapes (hidden 512, vocabulary 151,936,
8 layers, 4 KV heads of 64, MLP 1536). Each number is the median of --repeats calls of a jitted
function after one warm-up call (compilation excluded), with its output blocked on; the variants of one
comparison are timed round-robin (one call of each in turn), so load changes on this shared
machine hit them alike.

1. The LM head, [B, 512] x [151936, 512]^T as the sampler writes it (fp32 accumulate), at B = 1
   and 8 (a decode step) and 512 (the GRPO update's 8 rows x 64 positions), and the variants
   tried to speed it up: the weight stored transposed ([512, V]); the vocabulary split into 2
   and 4 matmuls; the vocabulary split over 2 CPU devices (a child process with 2 host
   devices); XLA:CPU's other GEMM back ends (child processes with XLA_FLAGS: YNNPACK's dot
   fusions off, then XNNPACK's or oneDNN's on). Each variant's time is against the default in
   its own process, so every row is a same-process ratio.
2. Exponentials: `exp` over [512, 151936] fp32 logits, and a one-pass log-sum-exp (max, exp,
   sum), in G elements per second.
3. Decode attention per layer at B = 8 and 192 cache slots (64 prompt + 128 new tokens): the KV
   cache stored [B, S, K, H] and transposed to [B, K, S, H] every step (the old layout) vs
   stored [B, K, S, H]; and attention as batched einsums vs as fused multiply-reduces (the
   model's formulation). The saving over 8 layers is also given against the B=8 step time in
   benchmarks/results/sampler_bench.json, when that file is there.
4. The SwiGLU MLP's backward (8 x 128 tokens): autodiff of the plain formula vs the model's
   `swiglu_mlp` with its hand-written backward.

Results: a printed table, and <results>.md / .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--child" not in sys.argv:  # one CPU device: XLA then runs each op on both cores
    os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                     os.environ.get("XLA_FLAGS", "")).strip()

D, V, LAYERS, K, G, H, F = 512, 151936, 8, 4, 2, 64, 1536
HEAD_ROWS = (1, 8, 512)

# XLA:CPU options tried on the head matmul; each runs in its own child process.
XLA_VARIANTS = {
    "YNNPACK dot fusions off (Eigen)": "--xla_cpu_experimental_ynn_fusion_type=",
    "YNNPACK off, XNNPACK dots": "--xla_cpu_experimental_ynn_fusion_type= "
                                 "--xla_cpu_experimental_xnn_fusion_type="
                                 "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "YNNPACK off, oneDNN dots": "--xla_cpu_experimental_ynn_fusion_type= "
                                "--xla_cpu_use_onednn=true "
                                "--xla_cpu_experimental_onednn_fusion_type="
                                "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "2 CPU devices, vocabulary split over them": "--xla_force_host_platform_device_count=2",
}


def interleaved(cases: dict, repeats: int) -> dict:
    """Median seconds of each case's call, {name: (fn, args)}, timed round-robin.

    One warm-up call each, then `repeats` rounds that call every case once in turn, so a change
    of load on this shared machine hits all of them alike; each result is blocked on.
    """
    import jax

    for fn, args in cases.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def head_times(repeats: int, *, variants: bool) -> dict:
    """Milliseconds of the head matmul per row count (and of its in-process variants)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    w_vd = jnp.asarray(0.02 * rng.standard_normal((V, D), np.float32))
    f32 = jnp.float32
    fns = {"default": jax.jit(lambda h, w: jnp.einsum("bd,vd->bv", h, w,
                                                      preferred_element_type=f32))}
    args = {"default": w_vd}
    if variants:
        w_dv = jnp.asarray(np.asarray(w_vd).T.copy())
        fns["weight stored transposed [D, V]"] = jax.jit(
            lambda h, w: jnp.einsum("bd,dv->bv", h, w, preferred_element_type=f32))
        args["weight stored transposed [D, V]"] = w_dv
        for n in (2, 4):
            fns[f"vocabulary split into {n} matmuls"] = jax.jit(
                lambda h, w, n=n: jnp.concatenate(
                    [jnp.einsum("bd,vd->bv", h, part, preferred_element_type=f32)
                     for part in jnp.split(w, n, axis=0)], axis=1))
            args[f"vocabulary split into {n} matmuls"] = w_vd
    if jax.device_count() == 2:  # child: the vocabulary over 2 devices
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.array(jax.devices()), ("v",))
        w_sharded = jax.device_put(w_vd, NamedSharding(mesh, P("v", None)))
        fns = {"default": fns["default"],
               "2 CPU devices, vocabulary split over them": jax.jit(
                   lambda h, w: jnp.einsum("bd,vd->bv", h, w, preferred_element_type=f32),
                   out_shardings=NamedSharding(mesh, P(None, "v")))}
        args = {"default": jax.device_put(w_vd, jax.devices()[0]),
                "2 CPU devices, vocabulary split over them": w_sharded}
    out = {name: {} for name in fns}
    for b in HEAD_ROWS:
        h = jnp.asarray(rng.standard_normal((b, D), np.float32))
        got = interleaved({name: (fn, (h, args[name])) for name, fn in fns.items()}, repeats)
        for name, t in got.items():
            out[name][str(b)] = 1e3 * t  # str keys: the same after a JSON round trip
    return out


def exp_rates(repeats: int) -> dict:
    """G elements per second of exp and of a one-pass log-sum-exp over [512, V] fp32."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.asarray(np.random.default_rng(1).standard_normal((512, V), np.float32))

    def lse(z):
        m = jnp.max(z, axis=-1, keepdims=True)
        return m[:, 0] + jnp.log(jnp.sum(jnp.exp(z - m), axis=-1))

    n = x.size / 1e9
    t = interleaved({"exp": (jax.jit(jnp.exp), (x,)), "lse": (jax.jit(lse), (x,))}, repeats)
    return {"exp_G_per_s": n / t["exp"], "logsumexp_G_per_s": n / t["lse"]}


def attention_times(repeats: int) -> dict:
    """Milliseconds per layer of one decode step's attention at B=8, S=192, both ways."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    b, s = 8, 192
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((b, K, G, H), np.float32))
    k_bksh = jnp.asarray(rng.standard_normal((b, K, s, H), np.float32))
    v_bksh = jnp.asarray(rng.standard_normal((b, K, s, H), np.float32))
    k_bskh, v_bskh = (jnp.asarray(np.asarray(a).swapaxes(1, 2).copy()) for a in (k_bksh, v_bksh))
    mask = jnp.asarray(rng.random((b, s)) < 0.9)
    scale = H ** -0.5

    def einsum_attn(q, k, v, mask):  # batched dots, [B, K, S, H] operands
        scores = jnp.einsum("bkgh,bksh->bkgs", q, k) * scale
        probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, -1e30), axis=-1)
        return jnp.einsum("bkgs,bksh->bkgh", probs, v)

    def reduce_attn(q, k, v, mask):  # fused multiply-reduces, as the model writes it
        scores = jnp.sum(q[:, :, :, None, :] * k[:, :, None], axis=-1) * scale
        probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, -1e30), axis=-1)
        return jnp.sum(probs[..., None] * v[:, :, None], axis=-2)

    def old_layout(attn):  # the cache kept [B, S, K, H]: each step transposes both
        return lambda q, k, v, mask: attn(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)

    cases = {
        "cache [B,S,K,H] + transpose, einsum attention": (old_layout(einsum_attn), k_bskh, v_bskh),
        "cache [B,K,S,H], einsum attention": (einsum_attn, k_bksh, v_bksh),
        "cache [B,S,K,H] + transpose, fused-reduce attention": (old_layout(reduce_attn), k_bskh,
                                                                 v_bskh),
        "cache [B,K,S,H], fused-reduce attention (the model's)": (reduce_attn, k_bksh, v_bksh),
    }
    ref = np.asarray(reduce_attn(q, k_bksh, v_bksh, mask))
    timed = {}
    for name, (fn, k, v) in cases.items():
        fn = jax.jit(fn)
        np.testing.assert_allclose(np.asarray(fn(q, k, v, mask)), ref, rtol=1e-4, atol=1e-5)
        timed[name] = (fn, (q, k, v, mask))
    return {name: 1e3 * t for name, t in interleaved(timed, repeats).items()}


def mlp_backward_times(repeats: int) -> dict:
    """Milliseconds of the SwiGLU MLP's value-and-gradient at 8 x 128 tokens, both ways."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from socialr1_jax.model.qwen3 import swiglu_mlp

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, 128, D), np.float32))
    wg, wu = (jnp.asarray(0.02 * rng.standard_normal((F, D), np.float32)) for _ in range(2))
    wd = jnp.asarray(0.02 * rng.standard_normal((D, F), np.float32))

    def plain(x, wg, wu, wd):
        return jnp.einsum("btf,df->btd", jax.nn.silu(jnp.einsum("btd,fd->btf", x, wg))
                          * jnp.einsum("btd,fd->btf", x, wu), wd)

    cases = {}
    for name, f in (("autodiff of the plain formula", plain),
                    ("swiglu_mlp, hand-written backward (the model's)", swiglu_mlp)):
        grad = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3)))
        cases[name] = (grad, (x, wg, wu, wd))
    return {name: 1e3 * t for name, t in interleaved(cases, repeats).items()}


def child_head(flags: str, repeats: int) -> dict:
    """Run head_times in a fresh process with XLA_FLAGS=flags; {} if XLA refused them."""
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           "--repeats", str(repeats)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "cpu_kernels"))
    ap.add_argument("--quiet-load", type=float, default=None,
                    help="first wait (up to --wait-s) until the 1-min load average is below this")
    ap.add_argument("--wait-s", type=float, default=1800)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(head_times(a.repeats, variants=False)))
        return 0

    from bench_common import git_commit, wait_for_quiet

    load_start = wait_for_quiet(a.quiet_load, a.wait_s)
    import jax

    res = {"commit": git_commit(), "jax": jax.__version__, "repeats": a.repeats,
           "cpus": os.cpu_count(), "load_avg_start": load_start}
    print("head matmul ...", flush=True)
    res["head_ms"] = head_times(a.repeats, variants=True)
    res["head_ms_xla_options"] = {}
    for name, flags in XLA_VARIANTS.items():
        print(f"head matmul, {name} (child process) ...", flush=True)
        res["head_ms_xla_options"][name] = {"flags": flags, **child_head(flags, a.repeats)}
    print("exp ...", flush=True)
    res["exp"] = exp_rates(a.repeats)
    print("decode attention ...", flush=True)
    res["attention_ms_per_layer"] = attention_times(a.repeats)
    print("MLP backward ...", flush=True)
    res["mlp_grad_ms"] = mlp_backward_times(a.repeats)
    sampler = os.path.join(ROOT, "benchmarks", "results", "sampler_bench.json")
    if os.path.exists(sampler):
        with open(sampler) as f:
            rows = {r["batch"]: r for r in json.load(f)["rows"]}
        if 8 in rows:
            res["sampler_b8_step_ms"] = rows[8]["ours_step_ms"]
    res["load_avg_end"] = os.getloadavg()[0]
    text = render(res)
    print(text)
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(a.results + ".md", "w") as f:
        f.write(text + "\n")
    return 0


def render(r: dict) -> str:
    """The results as Markdown tables, each variant as a ratio to the default measured beside
    it in the same process."""
    lines = [f"# XLA:CPU micro-benchmarks (bench-100m shapes, fp32, 1 CPU device of "
             f"{r['cpus']} cores; jax {r['jax']}, commit {r['commit']})", "",
             f"Median of {r['repeats']} calls after a warm-up call, variants timed round-robin. "
             "Load average (1 min) "
             f"{r['load_avg_start']:.2f} at start, {r['load_avg_end']:.2f} at end "
             "(a shared machine).", "",
             "## LM head: [B, 512] x [151936, 512]^T, ms (ratio to the default in the same "
             "process)", "",
             "| variant | B =" + " | B =".join(str(b) for b in HEAD_ROWS) + " |",
             "|---|" + "---|" * len(HEAD_ROWS)]
    base = r["head_ms"]["default"]
    for name, t in r["head_ms"].items():
        lines.append(f"| {name} |" + "".join(
            f" {t[str(b)]:.2f} ({t[str(b)] / base[str(b)]:.2f}x) |" for b in HEAD_ROWS))
    for name, t in r["head_ms_xla_options"].items():
        if "error" in t:
            lines.append(f"| {name} (`{t['flags']}`) | refused: {t['error']} |")
            continue
        d = t["default"] if "default" in t else None
        key = [k for k in t if k not in ("flags", "default")]
        own = t[key[0]] if key else d
        lines.append(f"| {name} (`{t['flags']}`) |" + "".join(
            f" {own[str(b)]:.2f} ({own[str(b)] / d[str(b)]:.2f}x) |" if key else
            f" {d[str(b)]:.2f} ({d[str(b)] / base[str(b)]:.2f}x of this process's default) |"
            for b in HEAD_ROWS))
    e = r["exp"]
    a = r["attention_ms_per_layer"]
    names = list(a)
    old, new = a[names[0]], a[names[3]]
    lines += ["", "In a child process with XLA flags the ratio is to the default matmul timed in "
              "that same child (for the 2-device row: the matmul on one of its devices), except "
              "where the flags apply to the whole process: then it is to this process's "
              "default.", "",
              "## Exponentials over [512, 151936] fp32", "",
              f"exp: {e['exp_G_per_s']:.2f} G/s; one-pass log-sum-exp (max, exp, sum): "
              f"{e['logsumexp_G_per_s']:.2f} G elements/s.", "",
              "## Decode attention per layer, B = 8, 192 cache slots, 4 KV heads x 2 queries "
              "x 64", "", "| formulation | ms per layer |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in a.items()]
    saving = LAYERS * (old - new)
    lines += ["", f"Transposing a [B,S,K,H] cache each step costs {a[names[0]] - a[names[1]]:.3f} ms "
              f"per layer with einsum attention and {a[names[2]] - a[names[3]]:.3f} ms with "
              f"fused reduces. On the [B,K,S,H] cache, fused reduces take "
              f"{a[names[3]] / a[names[1]]:.2f}x the einsums' time.", "",
              f"Old (cache [B,S,K,H] transposed each step, einsum attention) minus the model's: "
              f"{old - new:.3f} ms per layer, {saving:.2f} ms per decode step over {LAYERS} "
              "layers" + (f", {100 * saving / r['sampler_b8_step_ms']:.1f}% of the "
                          f"{r['sampler_b8_step_ms']:.1f} ms B=8 step in sampler_bench.json."
                          if "sampler_b8_step_ms" in r else "."), "",
              "## SwiGLU MLP value and gradient, 8 x 128 tokens, 512 -> 1536 -> 512", "",
              "| backward | ms |", "|---|---|"]
    m = r["mlp_grad_ms"]
    lines += [f"| {k} | {v:.2f} |" for k, v in m.items()]
    vals = list(m.values())
    lines += ["", f"Autodiff / hand-written: {vals[0] / vals[1]:.2f}x."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
