"""`memory_plan --config FILE`: the settings of a training config as `memory_plan.plan` takes
them (model preset or model.path's config.json, LoRA, prompts x group, lengths, micro-batch,
remat, dtypes, mesh, rollout slots, grpo.packed). Nothing is loaded: a config whose model.path
is empty is planned on its preset (as if model.random_init were set)."""

from __future__ import annotations

import math

from socialr1_jax import cli
from socialr1_jax.jobs.train_config import load_train_config
from socialr1_jax.yaml_config import ConfigError


def _load(path: str):
    try:
        return load_train_config(path)
    except ConfigError as e:
        if "model.path is required" not in str(e):
            raise cli.UsageError(f"--config {path}: {e}") from None
        return load_train_config(path, ["model.random_init=true"])


def settings_from_config(path: str, args, *, topology=None) -> list[dict]:
    """One `plan(**setting)` per --mesh (default: the config's mesh over --devices devices,
    its fsdp 0 taking what data x tensor leave)."""
    cfg = _load(path)
    m, r, g = cfg.model, cfg.rollout, cfg.grpo
    if m.path:
        raise cli.UsageError(f"--config {path}: model.path={m.path}: plan on model.preset "
                             "(set model.path='' for the plan)")
    meshes = args.meshes if args.mesh_given else [
        f"{cfg.mesh.data}x{cfg.mesh.fsdp or args.devices // (cfg.mesh.data * cfg.mesh.tensor)}"
        f"x{cfg.mesh.tensor}"]
    pdt = m.param_dtype or "float32"
    base = dict(preset=m.preset, prompts=r.prompts_per_step, group=g.group_size,
                prompt_len=r.max_prompt_len, completion_len=r.max_new_tokens,
                micro_batch=cfg.micro_batch, ref_micro_batch=cfg.micro_batch, remat=m.remat,
                param_dtype=pdt, master_dtype=cfg.optim.master_dtype,
                logprob_chunk=g.logprob_chunk, layers=args.layers, topology=topology,
                compute_entropy=g.compute_entropy, lora=m.lora.spec(),
                slots=r.slots if getattr(args, "slots", None) is None else args.slots,
                packed=g.packed or getattr(args, "packed", False),
                packed_row_len=getattr(args, "packed_row_len", 0) or g.packed_row_len,
                packed_rows=getattr(args, "packed_rows", 0))
    for mesh in meshes:
        sizes = cli.mesh_sizes("--mesh", mesh)
        if not topology and math.prod(sizes.values()) != args.devices:
            raise cli.UsageError(f"--mesh {mesh} needs {math.prod(sizes.values())} devices; "
                                 f"there are {args.devices} (--devices)")
        shards = sizes["data"] * sizes["fsdp"]
        if cfg.micro_batch % shards:
            raise cli.UsageError(f"--config {path}: its micro-batch of {cfg.micro_batch} "
                                 f"sequences does not split over the {shards} batch shards of "
                                 f"mesh {mesh}")
    return [dict(base, mesh=mesh) for mesh in meshes]
