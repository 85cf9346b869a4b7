"""Per-device memory of a GRPO run, from XLA's own compiled programs, with nothing allocated.

    python -m socialr1_jax.memory_plan --preset qwen3-4b --mesh 1x8x1 --prompts 8 --group 5 \\
        --prompt-len 512 --completion-len 2048 --remat full --micro-batch 8

compiles, for simulated devices (8 by default), the two programs of a GRPO update on abstract
inputs (`jax.ShapeDtypeStruct` carrying shardings; `.lower(...).compile()`), and prints XLA's
`memory_analysis()` of each, per device:

* the train step (train_step.make_train_step): policy forward + backward over every
  micro-batch, gradient accumulation, AdamW update; its state (bf16 params, fp32 master copy,
  fp32 moments) is donated, so outputs alias arguments;
* the log-prob forward (train_step.make_logprob_fn) that the frozen reference runs (and the
  policy, when old log-probs are recomputed).

A program's footprint is arguments + outputs - aliased + temporaries. Both programs run while the
other model's weights stay resident (the reference's bf16 weights during the train step, the
whole train state during the reference forward), so the peak of a step is
max(train step + reference weights, reference forward + train state).

`--sweep` runs the paper's recipe over several settings and writes a JSON + Markdown table.

The numbers come from XLA's CPU compiler (with its memory-optimised scheduler, see
MEMORY_SCHEDULER_FLAG), whose choices differ from the TPU/GPU compilers': it keeps fp32 copies
of bf16 matmul operands (of a device's whole stacked weight shard, converted before the layer
scan) and reduces gradients with full-size all-reduces (no reduce-scatter). Its temporaries are
therefore upper estimates for an accelerator; arguments (the sharded state) are exact. The
layers are one scan (docs/model.md), so a plan compiles in seconds to tens of seconds whatever
the depth; `compile_s` is lowering plus compiling (0 for a forward program that an earlier
setting of the same sweep compiled already: remat does not change it, see `_measure_once`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

from tqdm import tqdm

# The report's half (tables, results files) is plan_report's; re-exported as the tool's API.
from socialr1_jax.jobs.plan_report import (format_plan, GIB, provenance,  # noqa: F401
                                           sweep_markdown, write_results)

# XLA:CPU's default scheduler orders for concurrency, not memory: it computes rematerialised
# layers early, so remat saves nothing (measured: a checkpointed 8-layer chain needs 808 MiB of
# temporaries with or without remat; 776 vs 336 MiB with this flag). Accelerator compilers
# schedule under a memory limit, so the plan uses XLA:CPU's memory-optimised scheduler.
MEMORY_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"

# The paper's recipe and the settings `--sweep` compares (mesh, remat, train micro-batch,
# reference micro-batch). Micro-batches must divide 40 and be multiples of the 8 batch shards.
RECIPE = dict(preset="qwen3-4b", prompts=8, group=5, prompt_len=512, completion_len=2048,
              param_dtype="bfloat16", master_dtype="float32")
SWEEP = [
    ("1x8x1", "none", 40, 40),
    ("1x8x1", "none", 8, 8),
    ("1x8x1", "full", 40, 40),
    ("1x8x1", "full", 8, 8),
    ("2x4x1", "full", 8, 8),
    ("1x4x2", "full", 8, 8),
]


@dataclasses.dataclass
class ProgramMemory:
    """XLA's per-device memory of one compiled program, in bytes."""

    name: str
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    resident_besides: int   # other buffers alive while it runs (the other model's weights)
    compile_s: float

    @property
    def program_total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @property
    def peak(self) -> int:
        return self.program_total + self.resident_besides


def tree_bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of (abstract) sharded arrays: its shard of each leaf."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def _measure(name, lowered_fn, resident_besides: int) -> ProgramMemory:
    t0 = time.perf_counter()
    try:
        compiled = lowered_fn().compile()
    except Exception as e:  # which program the TPU compiler refused, for the plan's table
        if "RESOURCE_EXHAUSTED:" not in str(e):
            raise
        why = str(e).split("RESOURCE_EXHAUSTED:")[-1].strip()
        raise RuntimeError(f"RESOURCE_EXHAUSTED: {name}: {why}") from None
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError(f"{name}: this JAX backend gives no memory analysis")
    return ProgramMemory(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                         int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), resident_besides,
                         round(seconds, 1))


# Compiled forwards of this process, by everything but `remat` (and, for the rollout, the
# micro-batch): neither program differentiates, so remat does not change them (checked: equal
# bytes under none / full / dots), and a sweep over remat and micro-batches compiles each once.
_FORWARDS: dict = {}


def _measure_once(key, name, lowered_fn, resident_besides: int) -> ProgramMemory:
    """`_measure` of a forward program, compiled once per `key` in this process (None: always)."""
    if key is None:
        return _measure(name, lowered_fn, resident_besides)
    if key not in _FORWARDS:
        _FORWARDS[key] = _measure(name, lowered_fn, resident_besides)
        return _FORWARDS[key]
    return dataclasses.replace(_FORWARDS[key], resident_besides=resident_besides, compile_s=0.0)


def model_and_mesh(preset: str, changes: dict, mesh: str, topology: str | None):
    """(ModelConfig, Mesh, devices) of a plan: the preset with `changes` on the --mesh of the
    simulated CPU devices or of a TPU slice; errors name the flag."""
    import jax

    from socialr1_jax.model.config import preset as get_preset
    from socialr1_jax.parallel.sharding import check_model_fits_mesh, make_mesh, parse_mesh

    cfg = get_preset(preset, **changes)
    try:
        sizes = parse_mesh(mesh)
    except ValueError as e:
        raise ValueError(f"--mesh {mesh}: {e}") from None
    devices = topology_devices(topology) if topology else jax.devices()
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"--mesh {mesh} needs {math.prod(sizes.values())} devices; there are "
                         f"{len(devices)} ({topology or 'set --devices'})")
    m = make_mesh(**sizes, devices=devices)
    check_model_fits_mesh(cfg, m)
    return cfg, m, devices


def plan(*, preset: str = "qwen3-4b", mesh: str = "1x8x1", prompts: int = 8, group: int = 5,
         prompt_len: int = 512, completion_len: int = 2048, micro_batch: int = 0,
         ref_micro_batch: int | None = None, remat: str = "none", param_dtype: str = "bfloat16",
         master_dtype: str = "float32", logprob_chunk: int = 256, layers: int = 0,
         compute_entropy: bool = True, topology: str | None = None, lora=None,
         slots: int | None = None, rollout: bool = True, packed: bool = False,
         packed_row_len: int = 0, packed_rows: int = 0) -> dict:
    """Compile the train step, the log-prob forward and the rollout abstractly; return the
    memory plan.

    micro_batch: sequences per forward/backward (0 = the whole batch); ref_micro_batch: the
    same for the reference forward (None = micro_batch). layers: override the layer count
    (0 = the preset's), for quick looks. topology: compile for a TPU slice (e.g. 'v5e:2x4')
    through libtpu's ahead-of-time compiler instead of the simulated CPU devices.
    lora: a model.lora.LoraSpec: plan a LoRA run (rl/lora_train.py: the state holds the
    adapters and their moments; the frozen base is an argument of the train step and the
    reference forward's weights).
    slots: the rollout's decode slots (`rollout.slots`: None = every row at once, K = refill
    through K slots, rollout/refill.py); rollout=False leaves the rollout program out.
    packed: plan grpo.packed's update and reference forward on rows of `packed_row_len` tokens
    (jobs/plan_packed.py: `packed_rows` rows, or the full-length worst case when 0).
    """
    from socialr1_jax.rl import train_step as ts
    from socialr1_jax.model.build import abstract_state
    from socialr1_jax.rl.config import GRPOConfig, OptimConfig

    changes = dict(param_dtype=param_dtype, dtype=param_dtype, remat=remat)
    if layers:
        changes["num_layers"] = layers
    cfg, m, devices = model_and_mesh(preset, changes, mesh, topology)
    batch = prompts * group
    ref_micro = micro_batch if ref_micro_batch is None else ref_micro_batch
    optim = OptimConfig(master_dtype=master_dtype)
    grpo_cfg = GRPOConfig(group_size=group, micro_batch_size=micro_batch,
                          logprob_chunk=logprob_chunk, compute_entropy=compute_entropy)

    abatch = ts.abstract_batch(batch, prompt_len, completion_len, m)
    _, ref_params = abstract_state(cfg, m)
    ref_bytes = tree_bytes_per_device(ref_params)
    state, step = _train_step(cfg, m, optim, grpo_cfg, lora, micro_batch, ref_params)
    # A LoRA step takes the base as its argument (counted there), not beside it.
    beside_step = ref_bytes if lora is None else 0
    state_bytes = tree_bytes_per_device(state)
    logp = ts.make_logprob_fn(cfg, m, chunk=logprob_chunk,
                              micro_batch_size=ref_micro)
    key = (preset, mesh, topology, layers, param_dtype, prompts, group, prompt_len,
           completion_len)
    lower_step = lambda: step.lower(state, abatch)  # noqa: E731
    lower_logp = lambda: logp.lower(ref_params, abatch.prompt_ids,  # noqa: E731
                                    abatch.prompt_mask, abatch.completion_ids,
                                    abatch.completion_mask)
    packed_setting = {}
    if packed:
        from socialr1_jax.jobs import plan_packed

        lower_step, lower_logp, packed_setting = plan_packed.lowerers(
            cfg, m, optim, grpo_cfg, lora=lora, state=state, ref_params=ref_params, batch=batch,
            prompt_len=prompt_len, completion_len=completion_len,
            micro_batch=micro_batch or batch, ref_micro_batch=ref_micro or batch,
            row_len=packed_row_len, rows=packed_rows, logprob_chunk=logprob_chunk)
        key += tuple(sorted(packed_setting.items()))
    programs = [
        _measure("train step", lower_step, beside_step),
        _measure_once(("logp", ref_micro, logprob_chunk) + key, "log-prob forward", lower_logp,
                      state_bytes),
    ]
    if rollout:
        programs.append(_rollout_memory(cfg if lora is None else cfg.replace(lora=lora), m, state,
                                        ref_bytes if lora is None else 0, prompts=prompts,
                                        group=group, prompt_len=prompt_len,
                                        completion_len=completion_len, slots=slots,
                                        key=("rollout", slots, lora) + key))
    setting = dict(preset=preset, mesh=mesh, devices=len(devices), prompts=prompts, group=group,
                   batch=batch, prompt_len=prompt_len, completion_len=completion_len,
                   micro_batch=micro_batch or batch, ref_micro_batch=ref_micro or batch,
                   remat=remat, param_dtype=param_dtype, master_dtype=master_dtype,
                   logprob_chunk=logprob_chunk, layers=cfg.num_layers, params=cfg.num_params(),
                   slots=slots if rollout else "not planned", lora=_lora_setting(lora),
                   packed=packed, **packed_setting)
    return {"setting": setting, **_totals(state, state_bytes, ref_bytes, programs, topology)}


def _train_step(cfg, m, optim, grpo_cfg, lora, micro_batch: int, ref_params):
    """(abstract train state, the train step to lower): full, or LoRA's adapters over the
    frozen base `ref_params` (rl/lora_train.py)."""
    from socialr1_jax.rl import lora_train
    from socialr1_jax.rl import train_step as ts

    if lora is None:
        return (ts.abstract_train_state(cfg, optim, m),
                ts.make_train_step(cfg, optim, grpo_cfg, m, micro_batch_size=micro_batch))
    cfg_lora = cfg.replace(lora=lora)
    return (lora_train.abstract_train_state(cfg_lora, optim, m),
            lora_train.LoraStep(lora_train.make_train_step(
                cfg_lora, optim, grpo_cfg, m, micro_batch_size=micro_batch), ref_params))


def _lora_setting(lora):
    """The plan's record of the LoRA spec (None for full fine-tuning)."""
    if lora is None:
        return None
    return dict(rank=lora.rank, alpha=lora.alpha, targets=list(lora.targets))


def _totals(state, state_bytes: int, ref_bytes: int, programs, topology) -> dict:
    """The plan's state bytes, programs, peak and backend, per device."""
    import jax

    peak = max(p.peak for p in programs)
    return {
        "state_bytes_per_device": {
            "params": tree_bytes_per_device(state.params),
            "master": tree_bytes_per_device(state.master) if state.master is not None else 0,
            "optimizer": tree_bytes_per_device(state.opt_state),
            "train_state_total": state_bytes,
            "reference_params": ref_bytes,
        },
        "programs": [dict(dataclasses.asdict(p), program_total=p.program_total, peak=p.peak)
                     for p in programs],
        "peak_bytes_per_device": peak,
        "fits_80GB": peak <= 80e9,
        "fits_24GB": peak <= 24e9,
        "fits_16GB": peak <= 16e9,
        "backend": f"tpu {topology} (libtpu AOT)" if topology else jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
    }


def _rollout_memory(policy_cfg, mesh, state, ref_bytes: int, *, prompts: int, group: int,
                    prompt_len: int, completion_len: int, slots, key=None) -> ProgramMemory:
    """The sampler's program (rollout/sampler.lower) over the policy's weights (with a LoRA
    config: base + adapters, the argument the sampler gets), with its KV cache (every row, or
    `slots` rows) and its per-layer weight copy; the rest of the train state and the reference
    weights stay resident while it runs."""
    from socialr1_jax.model.build import abstract_state
    from socialr1_jax.rollout import sampler

    graphdef, policy = abstract_state(policy_cfg, mesh)
    beside = tree_bytes_per_device(state) - tree_bytes_per_device(state.params) + ref_bytes
    return _measure_once(key, "rollout", lambda: sampler.lower(
        graphdef, policy, prompts=prompts, num_samples=group, prompt_len=prompt_len,
        max_new_tokens=completion_len, slots=slots, mesh=mesh), beside)


def topology_devices(topology: str) -> list:
    """The devices of a TPU slice description ('v5e:2x4'), for ahead-of-time compilation on a
    machine without TPUs. Needs the `libtpu` package (pip install 'libtpu==0.0.42.*' for jax
    0.10.2); nothing runs on them, XLA's TPU compiler only plans their memory."""
    from jax.experimental import topologies

    dims = [int(x) for x in topology.split(":")[-1].split("x") if x.isdigit()]
    # A slice smaller than one host (a single chip: 'v6e:1x1') needs its host bounds given.
    small = {"chips_per_host_bounds": tuple(dims + [1] * (3 - len(dims)))[:3]} \
        if dims and math.prod(dims) < 4 else {}
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                                 **small).devices)
    except Exception as e:  # libtpu missing or the name unknown: say which
        from socialr1_jax.cli import UsageError

        raise UsageError(f"--topology {topology!r}: cannot build the TPU topology ({e}); "
                         "install libtpu matching jax (jax[tpu]) to compile for TPU") from None


def _setup_devices(n: int, extra_flags: str = "") -> None:
    """Simulate `n` CPU devices; must run before JAX initialises its backend."""
    flags = os.environ.get("XLA_FLAGS", "") + " " + extra_flags
    if "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={n}"
    if "xla_cpu_scheduler_type" not in flags and "concurrency_optimized_scheduler" not in flags:
        flags += f" {MEMORY_SCHEDULER_FLAG}"
    os.environ["XLA_FLAGS"] = flags.strip()
    import jax

    jax.config.update("jax_platforms", "cpu")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, every value checked before anything compiles (UsageError naming the
    flag). --mesh, --remat and --micro-batch take comma-separated lists."""
    from socialr1_jax import cli
    from socialr1_jax.model.config import parse_dtype, preset

    ap = cli.ArgumentParser(prog="python -m socialr1_jax.memory_plan",
                            description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None,
                    help="plan a training config as written (model, model.lora, group, "
                         "lengths, micro-batch, remat, mesh); the shape flags are ignored")
    ap.add_argument("--preset", default=RECIPE["preset"])
    ap.add_argument("--mesh", default=None, help="DATAxFSDPxTENSOR[,...] (default 1x8x1; "
                    "with --config, the config's mesh over --devices)")
    ap.add_argument("--devices", type=cli.positive_int, default=8, help="simulated CPU devices")
    ap.add_argument("--prompts", type=cli.positive_int, default=RECIPE["prompts"])
    ap.add_argument("--group", type=cli.positive_int, default=RECIPE["group"])
    ap.add_argument("--prompt-len", type=cli.positive_int, default=RECIPE["prompt_len"])
    ap.add_argument("--completion-len", type=cli.positive_int, default=RECIPE["completion_len"])
    ap.add_argument("--micro-batch", default="0", help="sequences per forward/backward[,...]; "
                    "0 = the whole batch")
    ap.add_argument("--ref-micro-batch", type=cli.nonnegative_int, default=None,
                    help="default: --micro-batch")
    ap.add_argument("--remat", default="none", help="none|full|dots[,...]")
    ap.add_argument("--param-dtype", default=RECIPE["param_dtype"])
    ap.add_argument("--master-dtype", default=RECIPE["master_dtype"])
    ap.add_argument("--logprob-chunk", type=cli.positive_int, default=256)
    ap.add_argument("--slots", type=cli.positive_int, default=None,
                    help="the rollout's decode slots (refill, rollout.slots); default: every "
                         "row at once (with --config: the config's rollout.slots)")
    ap.add_argument("--packed", action="store_true",
                    help="plan grpo.packed's update and reference forward (packed rows)")
    ap.add_argument("--packed-row-len", type=cli.nonnegative_int, default=0,
                    help="grpo.packed_row_len (0 = prompt + completion length)")
    ap.add_argument("--packed-rows", type=cli.nonnegative_int, default=0,
                    help="packed rows per update to plan (0 = every sequence at full length)")
    ap.add_argument("--layers", type=cli.nonnegative_int, default=0,
                    help="override the layer count (quick looks)")
    ap.add_argument("--topology", default=None,
                    help="compile for a TPU slice, e.g. v5e:2x4, with libtpu's AOT compiler")
    ap.add_argument("--xla-flags", default="",
                    help="extra XLA flags, e.g. --xla_disable_hlo_passes=cpu-all-reduce-combiner")
    ap.add_argument("--sweep", action="store_true",
                    help="the paper's recipe over the settings in SWEEP (ignores the shape flags)")
    ap.add_argument("--out", default=None,
                    help="write OUT.json and OUT.md, e.g. benchmarks/results/memory_plan")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing OUT.json / OUT.md (only memory plans)")
    args = ap.parse_args(argv)
    args.remats = args.remat.split(",")
    bad = [r for r in args.remats if r not in ("none", "full", "dots")]
    if bad:
        raise cli.UsageError(f"--remat {bad[0]!r}: expected none, full or dots")
    args.micro_batches = cli.int_list("--micro-batch", args.micro_batch, minimum=0)
    args.mesh_given, args.mesh = args.mesh is not None, args.mesh or "1x8x1"
    args.meshes = args.mesh.split(",")
    cfg = cli.checked("--preset", args.preset, preset)
    if args.layers:
        cfg = cfg.replace(num_layers=args.layers)
    cli.checked("--param-dtype", args.param_dtype, parse_dtype)
    cli.checked("--master-dtype", args.master_dtype, parse_dtype)
    if not args.sweep and not args.config:
        for m in args.meshes:
            _check_setting(cli, cfg, args, m)
        if args.packed:  # rows of the worst case, or --packed-rows: refused now, not at compile
            from socialr1_jax.jobs.plan_packed import packed_rows

            cli.checked("--packed-row-len", args.packed_row_len, lambda t: packed_rows(
                args.prompts * args.group, args.prompt_len + args.completion_len, t, 1,
                args.packed_rows))
    if args.topology and ":" not in args.topology:
        raise cli.UsageError(f"--topology {args.topology!r}: expected CHIP:SHAPE, e.g. v5e:2x4")
    if args.out:  # checked now, not after minutes of compiling
        for ext, ours in ((".json", cli.json_with("command", "plans")),
                          (".md", cli.text_starting("# Memory plan"))):
            cli.output_file("--out", args.out + ext, overwrite=args.overwrite, ours=ours,
                            kind=f"a memory plan ({ext})")
    return args


def _check_setting(cli, cfg, args, mesh: str) -> None:
    """One --mesh against --devices, the model's heads and every --micro-batch (the rules the
    train step and the log-prob forward enforce), before anything compiles."""
    from socialr1_jax.parallel.sharding import check_model_fits_mesh

    sizes = cli.mesh_sizes("--mesh", mesh)
    if not args.topology and math.prod(sizes.values()) != args.devices:
        raise cli.UsageError(f"--mesh {mesh} needs {math.prod(sizes.values())} devices; there "
                             f"are {args.devices} (--devices)")
    cli.checked("--mesh", mesh, lambda _: check_model_fits_mesh(cfg, sizes))
    batch, shards = args.prompts * args.group, sizes["data"] * sizes["fsdp"]
    for flag, mb in [("--micro-batch", m) for m in args.micro_batches] + [
            ("--ref-micro-batch", args.ref_micro_batch or 0)]:
        if mb and (batch % mb or mb % shards):
            raise cli.UsageError(f"{flag} {mb}: must divide the batch of {batch} sequences "
                                 f"(--prompts x --group) and be a multiple of the {shards} batch "
                                 f"shards of --mesh {mesh}")


def main(argv=None) -> int:
    """CLI entry point; see the module docstring. --mesh, --remat and --micro-batch take
    comma-separated lists: every combination is compiled."""
    args = parse_args(argv)
    if args.topology:
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM metadata here
    else:
        _setup_devices(args.devices, args.xla_flags)

    if args.config:
        from socialr1_jax.jobs.plan_config import settings_from_config

        settings = settings_from_config(args.config, args, topology=args.topology)
    elif args.sweep:
        settings = [dict(RECIPE, mesh=mesh, remat=remat, micro_batch=mb, ref_micro_batch=rmb,
                         layers=args.layers, topology=args.topology, slots=args.slots)
                    for mesh, remat, mb, rmb in SWEEP]
    else:
        settings = [dict(preset=args.preset, mesh=mesh, prompts=args.prompts, group=args.group,
                         prompt_len=args.prompt_len, completion_len=args.completion_len,
                         micro_batch=mb, ref_micro_batch=args.ref_micro_batch, remat=remat,
                         param_dtype=args.param_dtype, master_dtype=args.master_dtype,
                         logprob_chunk=args.logprob_chunk, layers=args.layers,
                         topology=args.topology, slots=args.slots, packed=args.packed,
                         packed_row_len=args.packed_row_len, packed_rows=args.packed_rows)
                    for mesh in args.meshes for remat in args.remats
                    for mb in args.micro_batches]
    plans = []
    bar = tqdm(settings, desc="compiling", file=sys.stderr, disable=len(settings) < 2)
    for s in bar:
        try:
            p = plan(**s)
        except Exception as e:
            # XLA's TPU compiler refuses a program larger than the chip's HBM; that is a result
            # of the plan (does not fit), not a failure of the tool.
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            reason = str(e).split("RESOURCE_EXHAUSTED:")[-1].strip().splitlines()[0]
            p = {"setting": dict(s, micro_batch=s.get("micro_batch") or "all",
                                 ref_micro_batch=s.get("ref_micro_batch") or s.get("micro_batch")
                                 or "all"),
                 "refused": reason, "fits_80GB": False, "fits_24GB": False, "fits_16GB": False}
            bar.write(f"{s.get('mesh')} remat {s.get('remat')}: does not fit ({reason})\n",
                      file=sys.stdout)
            plans.append(p)
            continue
        plans.append(p)
        bar.write(format_plan(p) + "\n", file=sys.stdout)
    print(sweep_markdown(plans))
    if args.out:
        command = "python -m socialr1_jax.memory_plan " + " ".join(
            sys.argv[1:] if argv is None else argv)
        write_results(plans, args.out, command)
        print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    from socialr1_jax import cli

    sys.exit(cli.run(main))
