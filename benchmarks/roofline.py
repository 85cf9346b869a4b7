"""A roofline of the 4B recipe's programs on TPU, from XLA's TPU compiler run ahead of time.

    python benchmarks/roofline.py [--topology v5e:2x4,v5p:2x2x1]
        [--programs decode,decode_b1,prefill,train] [--config configs/socialr1_qwen3_4b.yaml]
        [--preset tiny --prompt-len 64 --completion-len 192] [--out benchmarks/results/roofline]

No TPU is needed: libtpu's compiler runs here for a described slice (`jax.experimental.
topologies`, as `memory_plan --topology`), on abstract inputs (`jax.ShapeDtypeStruct`s with
shardings), so nothing of 4B size is allocated. For each topology it compiles

* decode: one decode step of the sampler's loop for the whole rollout (prompts x group rows,
  a KV cache of prompt + completion slots): embedding, the 36 layers as straight-line code over
  per-layer weights (`Qwen3.unstacked_layers`, what the sampler's loop reads) writing one slot of
  the per-layer cache in place (donated), the LM head and the draw, on the recipe's mesh;
* decode_b1: the same step for one row, on a tensor-parallel mesh (the latency case);
* prefill: the sampler's prefill of the rollout's prompts (one scan over the stacked layers,
  each prompt run once and its cache copied group times) and the first draw;
* train: the GRPO train step (`train_step.make_train_step`) of the recipe's batch.

and reads, per device, `compiled.cost_analysis()` (flops, bytes accessed),
`compiled.memory_analysis()` and the optimized HLO (fusions and other kernels of the entry
computation). The table gives the time those bytes take at the chip's published HBM bandwidth
and those flops at its peak bf16 rate, and the ratio of the bytes to a floor:

* decode: every weight and the whole KV cache read once (each device's shard);
* prefill: every weight read once and the cache it returns written once;
* train: every argument read once and every output written once (memory_analysis).

What it cannot show: launch and host overhead, collectives' wire time, and how HBM really
behaves (the bytes are the cost model's, a count, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402
from hlo_text import heaviest, kernel_counts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CONFIG = os.path.join(ROOT, "configs", "socialr1_qwen3_4b.yaml")
PROGRAMS = ("decode", "decode_tp", "decode_b1", "prefill", "train")


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures: HBM bandwidth (bytes/s) and peak dense bf16 FLOP/s."""

    hbm_bytes_s: float
    bf16_flops: float
    source: str


# Google Cloud's TPU documentation, "System architecture" tables, per chip.
CHIPS = {
    "v5e": Chip(819e9, 197e12, "cloud.google.com/tpu/docs/v5e: 819 GB/s HBM2, 197 TFLOP/s bf16"),
    "v5p": Chip(2765e9, 459e12, "cloud.google.com/tpu/docs/v5p: 2765 GB/s HBM2e, 459 TFLOP/s bf16"),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the programs are compiled for: the model and the rollout / update shapes."""

    cfg: object          # ModelConfig
    optim: object        # OptimConfig
    grpo: object         # GRPOConfig
    prompts: int
    group: int
    prompt_len: int
    completion_len: int
    micro_batch: int
    temperature: float

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @property
    def slots(self) -> int:
        return self.prompt_len + self.completion_len


def load_recipe(config: str, *, preset: str | None = None, prompt_len: int = 0,
                completion_len: int = 0, layers: int = 0) -> Recipe:
    """The recipe of a training YAML (its model preset, dtypes, remat, optimizer, GRPO and
    rollout settings); preset / lengths / layers override it (quick looks, tests)."""
    from socialr1_jax.jobs.train_config import load_train_config
    from socialr1_jax.model.config import preset as get_preset

    # No weights are loaded: random_init only lets a recipe without model.path load.
    tc = load_train_config(config, ["model.random_init=true"])
    m = tc.model
    changes = {k: v for k, v in dict(param_dtype=m.param_dtype, dtype=m.dtype,
                                     remat=m.remat).items() if v}
    # What a TPU host traces: decode_attention='auto' picks by the backend, and this host's
    # backend is the CPU, whose multiply-reduce form a TPU never runs.
    changes["decode_attention"] = "einsum"
    if layers:
        changes["num_layers"] = layers
    cfg = get_preset(preset or m.preset, **changes)
    return Recipe(cfg=cfg, optim=tc.optim, grpo=tc.grpo, prompts=tc.rollout.prompts_per_step,
                  group=tc.grpo.group_size, prompt_len=prompt_len or tc.rollout.max_prompt_len,
                  completion_len=completion_len or tc.rollout.max_new_tokens,
                  micro_batch=tc.micro_batch, temperature=tc.rollout.temperature)


def sds(shape, dtype, mesh, spec):
    import jax
    from jax.sharding import NamedSharding

    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def per_layer_weights(state, mesh) -> list[dict]:
    """Abstract per-layer weights (`Qwen3.unstacked_layers()`) of an abstract stacked state:
    each layer's slice keeps its stacked weight's sharding without the layer axis."""
    import jax
    from jax.sharding import PartitionSpec as P

    from socialr1_jax.model.qwen3 import LAYER_WEIGHTS

    stacked = {name: state["layers"][name] for name in LAYER_WEIGHTS}
    stacked = {n: jax.tree_util.tree_leaves(v)[0] for n, v in stacked.items()}
    n_l = next(iter(stacked.values())).shape[0]
    one = {n: sds(a.shape[1:], a.dtype, mesh, P(*a.sharding.spec[1:])) for n, a in stacked.items()}
    return [dict(one) for _ in range(n_l)]


def abstract_cache(cfg, rows: int, slots: int, mesh):
    """An abstract per-layer KV cache (`KVCache.unstacked()`), rows over the batch shards and
    KV heads over 'tensor', as the sampler pins it."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from socialr1_jax.model.qwen3 import KVCache
    from socialr1_jax.parallel.sharding import BATCH, CACHE_BKSH

    shape = (rows, cfg.num_kv_heads, slots, cfg.head_dim)
    kv = tuple(sds(shape, cfg.jnp_dtype, mesh, CACHE_BKSH) for _ in range(cfg.num_layers))
    return KVCache(k_lbksh=kv, v_lbksh=kv, valid_bs=sds((rows, slots), jnp.bool_, mesh,
                                                         P(BATCH, None)),
                   index=sds((), jnp.int32, mesh, P()),
                   next_pos_b=sds((rows,), jnp.int32, mesh, P(BATCH)))


def tree_bytes(tree) -> int:
    """Bytes one device holds of a tree of abstract sharded arrays."""
    from socialr1_jax.jobs.memory_plan import tree_bytes_per_device

    return tree_bytes_per_device(tree)


def _draw(r: Recipe, model, hidden_bd, i):
    """The sampler's head and draw (rollout.draw) for the recipe's temperature, no top-k/p."""
    import jax

    from socialr1_jax.rollout.draw import head, sample_step

    logits = head(hidden_bd, model.lm_head_weight(), model.cfg.precision)
    key = jax.random.fold_in(jax.random.key(0), i)
    return sample_step(key, logits, max(r.temperature, 1e-6), 1.0, greedy=r.temperature == 0,
                       top_k=0, use_top_p=False)


def decode_program(r: Recipe, mesh, rows: int):
    """(jitted step, abstract args, floor bytes): one decode step over `rows` rows."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from socialr1_jax.model.build import abstract_state
    from socialr1_jax.parallel.sharding import BATCH

    graphdef, state = abstract_state(r.cfg, mesh)
    layers = per_layer_weights(state, mesh)
    cache = abstract_cache(r.cfg, rows, r.slots, mesh)

    def step(state, layers, cache, prev_b, i):
        model = nnx.merge(graphdef, state)
        hidden, cache = model.hidden_states(prev_b[:, None], jnp.ones((rows, 1), jnp.int32),
                                            cache=cache, layer_weights=layers)
        tok, logp = _draw(r, model, hidden[:, 0], i)
        return tok, logp, cache

    args = (state, layers, cache, sds((rows,), jnp.int32, mesh, P(BATCH)),
            sds((), jnp.int32, mesh, P()))
    # Weights read once: the per-layer ones, the final norm and the (tied) head; not the
    # stacked layers, which this step does not read.
    weights = tree_bytes(layers) + tree_bytes(state) - tree_bytes(state["layers"])
    floor = weights + tree_bytes((cache.k_lbksh, cache.v_lbksh))
    return jax.jit(step, donate_argnums=(2,)), args, floor


def prefill_program(r: Recipe, mesh):
    """(jitted prefill + first draw, abstract args, floor bytes) of the rollout's prompts."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from socialr1_jax.model.build import abstract_state
    from socialr1_jax.parallel.sharding import batch_shards, TOKENS_BT
    from socialr1_jax.rollout.prefill import prefill_prompts

    graphdef, state = abstract_state(r.cfg, mesh)
    # As the sampler: one prefill per prompt when the prompts split evenly over the mesh.
    group = r.group if r.group > 1 and r.prompts % batch_shards(mesh) == 0 else 1

    def step(state, ids, mask, i):
        model = nnx.merge(graphdef, state)
        last_bd, cache = prefill_prompts(model, ids, mask, slots=r.slots, chunk=r.prompt_len,
                                         layers=model.unstacked_layers(), group=group)
        tok, logp = _draw(r, model, last_bd, i)
        return tok, logp, cache

    tokens = sds((r.rows, r.prompt_len), jnp.int32, mesh, TOKENS_BT)
    args = (state, tokens, tokens, sds((), jnp.int32, mesh, jax.sharding.PartitionSpec()))
    out_cache = abstract_cache(r.cfg, r.rows, r.slots, mesh)
    floor = tree_bytes(state) + tree_bytes((out_cache.k_lbksh, out_cache.v_lbksh))
    return jax.jit(step), args, floor


def train_program(r: Recipe, mesh):
    """(train step, abstract (state, batch), None): the floor comes from memory_analysis."""
    from socialr1_jax.rl import train_step as ts

    state = ts.abstract_train_state(r.cfg, r.optim, mesh)
    batch = ts.abstract_batch(r.rows, r.prompt_len, r.completion_len, mesh)
    step = ts.make_train_step(r.cfg, r.optim, r.grpo, mesh, temperature=r.temperature or 1.0,
                              micro_batch_size=r.micro_batch)
    return step, (state, batch), None


def meshes(r: Recipe, devices: list) -> dict:
    """{program: (mesh, rows)}: the recipe's mesh (FSDP over every device) for the rollout and
    the update; for one row, the widest tensor-parallel mesh the heads allow, its batch shards
    (if any) padded with dummy rows as the sampler pads them."""
    from socialr1_jax.parallel.sharding import make_mesh

    n, cfg = len(devices), r.cfg
    t = max(d for d in range(1, n + 1) if n % d == 0 and not (
        cfg.num_heads % d or cfg.num_kv_heads % d or cfg.intermediate_size % d))
    recipe = make_mesh(1, n, 1, devices=devices)
    tp = make_mesh(1, n // t, t, devices=devices)
    return {"decode": (recipe, r.rows), "decode_tp": (tp, r.rows), "decode_b1": (tp, n // t),
            "prefill": (recipe, r.rows), "train": (recipe, r.rows)}


def build(program: str, r: Recipe, mesh, rows: int):
    """(jitted, abstract args, floor bytes or None) of one program."""
    if program.startswith("decode"):
        return decode_program(r, mesh, rows)
    if program == "prefill":
        return prefill_program(r, mesh)
    return train_program(r, mesh)


def measure(program: str, topology: str, r: Recipe, devices: list) -> dict:
    """Compile one program for the topology; its row of the table (numbers per device)."""
    import jax

    mesh, rows = meshes(r, devices)[program]
    t0 = time.perf_counter()
    fn, args, floor = build(program, r, mesh, rows)
    with jax.set_mesh(mesh):
        compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    memory = {k: int(getattr(mem, k + "_size_in_bytes")) for k in
              ("argument", "output", "alias", "temp", "generated_code")}
    if floor is None:  # every argument read once, every output written once
        floor = memory["argument"] + memory["output"]
    try:
        text, text_error = compiled.as_text(), ""
    except Exception as e:  # noqa: BLE001  libtpu can fail to print a program it compiled
        text, text_error = "", str(e).splitlines()[0][:200]
    kernels = kernel_counts(text)
    chip = CHIPS[topology.split(":")[0]]
    flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    t_hbm, t_flops = nbytes / chip.hbm_bytes_s, flops / chip.bf16_flops
    return {"program": program, "topology": topology, "devices": len(devices),
            "mesh": "x".join(str(mesh.shape[a]) for a in ("data", "fsdp", "tensor")),
            "batch": rows, "flops": flops, "bytes_accessed": nbytes, "floor_bytes": floor,
            "ratio_to_floor": round(nbytes / floor, 3), "fusions": kernels["fusions"],
            "kernels": kernels["kernels"], "custom_calls": kernels["custom_calls"],
            "kernels_by_opcode": kernels["by_opcode"],
            "t_hbm_ms": t_hbm * 1e3, "t_flops_ms": t_flops * 1e3,
            "t_floor_ms": floor / chip.hbm_bytes_s * 1e3,
            "bound": "HBM" if t_hbm >= t_flops else "compute",
            "xla_optimal_seconds": cost.get("optimal_seconds"),
            "memory": memory, "heaviest": heaviest(text), "compile_s": round(seconds, 1),
            "hlo_text_error": text_error}


def topology_devices(topology: str) -> list:
    """The devices of a TPU slice ('v5e:2x4') for ahead-of-time compilation (needs libtpu)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM metadata here
    from socialr1_jax.jobs.memory_plan import topology_devices as devices

    return devices(topology)


def libtpu_version() -> str | None:
    """The installed libtpu package's version, or None."""
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f}" if n < 1e10 else f"{n / 1e9:.1f}"


def markdown(rows: list[dict], r: Recipe, command: str, libtpu: str | None) -> str:
    """The table (per device; GB = 1e9 bytes), the chips' figures and each decode step's
    heaviest kernels."""
    c = r.cfg
    lines = [
        "# Roofline: the recipe's programs on TPU, from XLA's TPU compiler (ahead of time)\n",
        f"`{command}`, libtpu {libtpu}. Model: {c.num_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_params() / 1e9:.3f}B params, {c.param_dtype}; rollout {r.prompts} prompts x "
        f"{r.group}, prompt {r.prompt_len} + completion {r.completion_len} slots; update "
        f"micro-batch {r.micro_batch}, remat {c.remat}. Every number is per device (one chip); "
        "times are implied by the chip's published figures, not measured.\n",
        "| program | topology | mesh | batch | GFLOP | GB accessed | floor GB | ratio | "
        "t(HBM) ms | t(FLOP) ms | bound | fusions | kernels | temps GB | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        lines.append(
            f"| {w['program']} | {w['topology']} | {w['mesh']} | {w['batch']} | "
            f"{w['flops'] / 1e9:.1f} | {_gb(w['bytes_accessed'])} | {_gb(w['floor_bytes'])} | "
            f"**{w['ratio_to_floor']:.2f}** | {w['t_hbm_ms']:.3g} | {w['t_flops_ms']:.3g} | "
            f"{w['bound']} | {w['fusions'] if not w['hlo_text_error'] else 'n/a'} | "
            f"{w['kernels'] if not w['hlo_text_error'] else 'n/a'} | {_gb(w['memory']['temp'])} | "
            f"{w['compile_s']:.0f} |")
    lines += [f"\n{w['program']} on {w['topology']}: compiled, but libtpu could not print its "
              f"HLO ({w['hlo_text_error']}), so its kernels are not counted." for w in rows
              if w["hlo_text_error"]]
    lines += ["", "Chips (per chip): " + "; ".join(
        f"{k}: {v.source}" for k, v in CHIPS.items()), ""]
    for w in rows:
        if w["program"].startswith("decode"):
            lines.append(f"Heaviest kernels of {w['program']} on {w['topology']} (operand + "
                         "result bytes from their HLO types): " + ", ".join(
                             f"{h['name']} ({h['opcode']}, {h['metadata'] or '-'}) "
                             f"{_gb(h['operand_bytes'])} + {_gb(h['result_bytes'])} GB"
                             for h in w["heaviest"][:5]) + ".\n")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default="v5e:2x4,v5p:2x2x1",
                    help="TPU slices, comma-separated (CHIP:SHAPE; chips: " + ", ".join(CHIPS) + ")")
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--config", default=RECIPE_CONFIG, help="the training YAML of the recipe")
    ap.add_argument("--preset", default=None, help="another model preset (e.g. tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="= --preset tiny --prompt-len 64 --completion-len 192 (seconds)")
    ap.add_argument("--prompt-len", type=int, default=0, help="0 = the config's")
    ap.add_argument("--completion-len", type=int, default=0, help="0 = the config's")
    ap.add_argument("--layers", type=int, default=0, help="override the layer count")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md "
                    "(e.g. benchmarks/results/roofline)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.preset = args.preset or "tiny"
        args.prompt_len, args.completion_len = args.prompt_len or 64, args.completion_len or 192
    args.programs = args.programs.split(",")
    args.topologies = args.topology.split(",")
    bad = [p for p in args.programs if p not in PROGRAMS] + [
        t for t in args.topologies if t.split(":")[0] not in CHIPS or ":" not in t]
    if bad:
        ap.error(f"unknown program or topology {bad[0]!r} (programs: {', '.join(PROGRAMS)}; "
                 f"topologies CHIP:SHAPE with CHIP in {', '.join(CHIPS)})")
    return args


def main(argv=None) -> dict:
    """Compile every program for every topology; print the table, write OUT.json / OUT.md."""
    args = parse_args(argv)
    libtpu = libtpu_version()
    if libtpu is None:
        sys.exit("roofline: libtpu is not installed (pip install libtpu): XLA's TPU compiler "
                 "is what this benchmark runs")
    r = load_recipe(args.config, preset=args.preset, prompt_len=args.prompt_len,
                    completion_len=args.completion_len, layers=args.layers)
    command = "python benchmarks/roofline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load = bench_common.wait_for_quiet(None)
    rows = []
    for topology in args.topologies:
        devices = topology_devices(topology)
        for program in args.programs:
            rows.append(measure(program, topology, r, devices))
            w = rows[-1]
            print(f"{program:>10} {topology:<10} batch {w['batch']:>3}: {w['flops'] / 1e9:10.1f} "
                  f"GFLOP {w['bytes_accessed'] / 1e9:9.3f} GB, floor {w['floor_bytes'] / 1e9:8.3f} "
                  f"GB, ratio {w['ratio_to_floor']:.2f}, {w['fusions']} fusions, "
                  f"compile {w['compile_s']:.0f} s", flush=True)
    text = markdown(rows, r, command, libtpu)
    print(text)
    result = {"rows": rows, "libtpu": libtpu, **{k: v for k, v in bench_common.provenance()
                                                 .items() if k in ("commit", "date")},
              "load": load, "command": command, "chips": {k: dataclasses.asdict(v)
                                                          for k, v in CHIPS.items()}}
    if args.out:
        bench_common.write_results(args.out + ".json", result)
        bench_common.write_results(args.out + ".md", text)
        print(f"wrote {args.out}.json and {args.out}.md")
    return result


if __name__ == "__main__":
    main()
