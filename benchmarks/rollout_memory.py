"""The rollout program's memory with and without the per-layer weight copy, from XLA's compiler.

    python benchmarks/rollout_memory.py [--topology v6e:1x1] [--mesh 1x1x1] [--preset qwen3-4b]
        [--prompts 8 --group 5 --prompt-len 512 --completion-len 2048] [--slots 16]
        [--out benchmarks/results/rollout_memory]

The sampler decodes over per-layer copies of the stacked weights taken once before the loop
(`unstack_layers=True`, `Qwen3.unstacked_layers`) because a scan over the stacked weights inside
the loop made XLA:CPU copy each layer's slice on every step. The copy costs one more set of the
layers' weights for the whole rollout. This compiles the rollout program (`sampler.lower`, the
program `sample` runs) both ways on abstract weights (nothing allocated) for the simulated CPU
devices or, with --topology, for a TPU slice through libtpu's ahead-of-time compiler, and
prints XLA's memory analysis of each and the bytes of the weights and of the KV cache, per
device. With --slots, the refill program (which always decodes over the per-layer copy) is
compiled too.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default=None, help="a TPU slice, e.g. v6e:1x1 (needs libtpu)")
    ap.add_argument("--mesh", default="1x1x1")
    ap.add_argument("--devices", type=int, default=1, help="simulated CPU devices")
    bench_common.add_options(ap, preset="qwen3-4b", dtype="bfloat16", prompts=8, group=5,
                             prompt_len=512, completion_len=2048)
    ap.add_argument("--slots", type=int, default=None)
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    return ap.parse_args(argv)


def cases(args):
    """(name, slots, unstack_layers) of the programs to compile."""
    out = [("static, per-layer weight copy", None, True), ("static, stacked weights", None, False)]
    if args.slots:
        out.append((f"refill {args.slots} slots, per-layer weight copy", args.slots, True))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.topology:
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    else:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax

    from socialr1_jax.jobs.memory_plan import model_and_mesh, tree_bytes_per_device
    from socialr1_jax.model.build import abstract_state
    from socialr1_jax.rollout import sampler

    cfg, mesh, _ = model_and_mesh(args.preset, dict(param_dtype=args.dtype, dtype=args.dtype),
                                   args.mesh, args.topology)
    graphdef, state = abstract_state(cfg, mesh)
    weights = tree_bytes_per_device(state)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    positions = sampler.bucket(args.prompt_len) + sampler.bucket(args.completion_len)
    kv_heads = cfg.num_kv_heads // min(mesh.shape["tensor"], cfg.num_kv_heads)
    per_row = 2 * cfg.num_layers * kv_heads * positions * cfg.head_dim * jax.numpy.dtype(
        cfg.jnp_dtype).itemsize
    rows = []
    for name, slots, unstack in cases(args):
        lowered = sampler.lower(graphdef, state, prompts=args.prompts, num_samples=args.group,
                                prompt_len=args.prompt_len, max_new_tokens=args.completion_len,
                                slots=slots, mesh=mesh, unstack_layers=unstack)
        m = lowered.compile().memory_analysis()
        cache_rows = -(-(slots or args.prompts * args.group) // shards)
        rows.append(dict(program=name, slots=slots, unstack_layers=unstack,
                         arguments=int(m.argument_size_in_bytes),
                         temporaries=int(m.temp_size_in_bytes),
                         outputs=int(m.output_size_in_bytes), weights=weights,
                         kv_cache=cache_rows * per_row))
        print(f"{name}: args {rows[-1]['arguments'] / 1e9:.2f} GB, temps "
              f"{rows[-1]['temporaries'] / 1e9:.2f} GB (KV cache {rows[-1]['kv_cache'] / 1e9:.2f}"
              f" GB, weights {weights / 1e9:.2f} GB)", flush=True)
    result = dict(rows=rows, setting=vars(args), backend=args.topology or jax.default_backend(),
                  **bench_common.provenance())
    if args.out:
        bench_common.write_results(args.out + ".json", result)
        bench_common.write_results(args.out + ".md", markdown(result))
    return result


def markdown(r: dict) -> str:
    s = r["setting"]
    head = (f"# Rollout program memory: per-layer weight copy or stacked weights\n\n"
            f"{s['preset']} {s['dtype']}, {s['prompts']} prompts x {s['group']}, prompt "
            f"{s['prompt_len']} + {s['completion_len']} new tokens, mesh {s['mesh']}, backend "
            f"{r['backend']}; XLA's memory analysis per device (GB = 1e9 bytes).\n\n"
            "| program | arguments | temporaries | of which KV cache (counted) | weights |\n"
            "|---|---|---|---|---|\n")
    gb = lambda n: f"{n / 1e9:.2f}"  # noqa: E731
    return head + "\n".join(f"| {x['program']} | {gb(x['arguments'])} | {gb(x['temporaries'])} "
                            f"| {gb(x['kv_cache'])} | {gb(x['weights'])} |"
                            for x in r["rows"]) + "\n"


if __name__ == "__main__":
    main()
