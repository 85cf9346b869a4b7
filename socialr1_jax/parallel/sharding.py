"""Device mesh and the one table of partition rules for parameters, activations and the KV cache.

Axes: `data` (pure data parallel: parameters replicated), `fsdp` (data parallel with parameters,
gradients and optimizer state split), `tensor` (attention heads and MLP columns split). The batch
is split over `data` x `fsdp`.

All axes are `AxisType.Auto`: we place arrays with NamedSharding and let XLA's partitioner
propagate through the model, pinning only layer boundaries with `constrain`. Explicit axes would
make every op's output sharding part of its type, which the model code does not need.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes

# One rule per parameter, matched on the parameter's path ("layers/q_lnhd"). Our weights keep
# HF's [out, in] layout (see hf_layout.py): `_vd` = [vocab, hidden] etc. Every layer's weights
# are stacked on a leading layer axis `l` (the model scans over it): never split, so each step of
# the scan slices one layer locally and FSDP gathers just that layer.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_vd$", P("tensor", "fsdp")),
    (r"score_cd$", P(None, "fsdp")),  # the reward model's scalar head [1, hidden]
    (r"lm_head_vd$", P("tensor", "fsdp")),
    (r"layers/q_lnhd$", P(None, "tensor", None, "fsdp")),
    (r"layers/[kv]_lkhd$", P(None, "tensor", None, "fsdp")),
    (r"layers/o_ldnh$", P(None, "fsdp", "tensor", None)),
    (r"layers/(gate|up)_lfd$", P(None, "tensor", "fsdp")),
    (r"layers/down_ldf$", P(None, "fsdp", "tensor")),
    (r"norm_l?[dh]$", P()),  # small vectors: replicated
    # LoRA adapters (model/lora.py): A [l, r, in] split along `in` and B [l, out, r] along `out`
    # exactly as their base weight's dims are; the rank axis replicated.
    (r"lora/(q|k|v|gate|up)_a_lrd$", P(None, None, "fsdp")),
    (r"lora/(o_a_lrj|down_a_lrf)$", P(None, None, "tensor")),
    (r"lora/([qkv]_b_ljr|(gate|up)_b_lfr)$", P(None, "tensor", None)),
    (r"lora/(o|down)_b_ldr$", P(None, "fsdp", None)),
)

# Activations at layer boundaries and the KV cache.
ACT_BTD = P(BATCH, None, None)        # residual stream [batch, time, hidden]
ACT_BTNH = P(BATCH, None, "tensor", None)   # per-head q / k / v
ACT_BTF = P(BATCH, None, "tensor")    # MLP hidden
LOGITS_BTV = P(BATCH, None, "tensor")
TOKENS_BT = P(BATCH, None)
CACHE_LBKSH = P(None, BATCH, "tensor", None, None)  # every layer's (KVCache.k_lbksh)
CACHE_BKSH = P(BATCH, "tensor", None, None)  # one layer's (KVCache.unstacked())


def make_mesh(data: int = 1, fsdp: int | None = None, tensor: int = 1, *,
              devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over every process's devices.

    `fsdp=None` takes whatever the other two leave. The product must equal the device count;
    otherwise ValueError names the three sizes and the count.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if fsdp is None:
        if n % (data * tensor):
            raise ValueError(f"mesh data={data} x tensor={tensor} does not divide {n} devices")
        fsdp = n // (data * tensor)
    for name, size in (("data", data), ("fsdp", fsdp), ("tensor", tensor)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {name}={size!r} must be a positive integer")
    if data * fsdp * tensor != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = "
                         f"{data * fsdp * tensor} does not equal the {n} available devices")
    # Keep tensor-parallel peers on one host/ICI ring: tensor varies fastest, then fsdp.
    arr = np.array(sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(data, fsdp, tensor)
    return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * 3)


def parse_mesh(spec: str) -> dict:
    """'2x4x1' or 'data=2,fsdp=4,tensor=1' -> {'data': 2, 'fsdp': 4, 'tensor': 1}.

    ValueError (without the spec: callers name the flag or key it came from) for another form,
    an unknown axis, a size that is not an integer or one below 1.
    """
    form = "expected DATAxFSDPxTENSOR such as 1x8x1, or data=1,fsdp=8,tensor=1"
    spec = spec.strip()
    if "=" in spec:
        pairs = [part.split("=") for part in spec.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(form)
        unknown = [k.strip() for k, _ in pairs if k.strip() not in AXES]
        if unknown:
            raise ValueError(f"unknown axis {unknown[0]!r}; axes are {AXES}")
        items = [(k.strip(), v) for k, v in pairs]
    else:
        parts = spec.lower().split("x")
        if len(parts) != 3:
            raise ValueError(form)
        items = list(zip(AXES, parts))
    out = {}
    for k, v in items:
        try:
            out[k] = int(v)
        except ValueError:
            raise ValueError(form) from None
        if out[k] < 1:
            raise ValueError(f"{k}={out[k]} must be a positive integer")
    return out


def check_model_fits_mesh(cfg, mesh) -> None:
    """Refuse, before anything compiles, a tensor size that does not divide the heads.

    mesh: a Mesh, or its sizes {axis: size} (to check a mesh before its devices exist)."""
    t = (mesh.shape if isinstance(mesh, Mesh) else mesh)["tensor"]
    for what, n in (("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads),
                    ("intermediate_size", cfg.intermediate_size)):
        if n % t:
            raise ValueError(f"mesh tensor={t} does not divide {what}={n}; "
                             f"choose a tensor size that divides {what}")


def path_str(path) -> str:
    """'layers/q_lnhd' from a jax/nnx key path (nnx's trailing `.value` dropped)."""
    if path and getattr(path[-1], "name", None) == "value":
        path = path[:-1]
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(path: str, ndim: int) -> P:
    """The PartitionSpec of a parameter from the rule table; unknown parameters are an error."""
    for pattern, spec in PARAM_RULES:
        if re.search(pattern, path):
            if len(spec) not in (0, ndim):
                raise ValueError(f"rule {pattern!r} has {len(spec)} axes, parameter {path} has {ndim}")
            return spec
    raise KeyError(f"no partition rule for parameter {path!r}; add one to PARAM_RULES")


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, *, drop_unknown: bool = False) -> P:
    """Drop mesh axes from dims they do not divide (e.g. a vocab of 151,936 over tensor=3).

    Only dims that cannot be split evenly lose their axis; the caller sees it in the shard shapes.
    drop_unknown: also drop axes the mesh does not have (activation constraints under a user's
    mesh) instead of raising KeyError. Works for concrete and abstract meshes.
    """
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
        if not names or (drop_unknown and any(a not in mesh.axis_names for a in names)):
            out.append(None)
            continue
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if dim % size == 0 else None)
    return P(*out)


# A parameter this large that loses a mesh axis (its dim not divisible) is worth a warning: it
# is then replicated along that axis, which costs memory on every device.
_WARN_REPLICATED_BYTES = 1 << 20


def _param_sharding(path: str, leaf, mesh: Mesh) -> NamedSharding:
    rule = spec_for(path, len(leaf.shape))
    spec = fit_spec(rule, leaf.shape, mesh)
    if spec != rule and len(rule):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        if nbytes >= _WARN_REPLICATED_BYTES:
            log.warning("parameter %s %s: rule %s does not divide on mesh %s; placed as %s",
                        path, list(leaf.shape), rule, dict(mesh.shape), spec)
    return NamedSharding(mesh, spec)


def param_shardings(state, mesh: Mesh):
    """A tree of NamedSharding matching a parameter state (abstract or concrete) by the rules."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _param_sharding(path_str(path), leaf, mesh), state)


def tree_shardings(tree, mesh: Mesh):
    """Shardings for a tree holding parameter-shaped leaves, e.g. an optax/nnx optimizer state.

    A leaf whose path ends in a parameter path (".../mu/layers/q_lnhd") gets that
    parameter's rule, so AdamW's moments are split exactly like the weights they follow. Scalars
    (step counts) are replicated. Any other non-scalar leaf is an error: a silently replicated
    4B-sized moment would not fit.
    """
    def one(path, leaf):
        if len(getattr(leaf, "shape", ())) == 0:
            return NamedSharding(mesh, P())
        return _param_sharding(path_str(path), leaf, mesh)
    return jax.tree_util.tree_map_with_path(one, tree)


def cache_shardings(cache, mesh: Mesh):
    """Shardings of a `model.KVCache`: rows over data x fsdp, KV heads over tensor.

    Refuses a batch that the data-parallel axes do not divide (the cache is the largest buffer
    of sampling; replicating it instead would multiply its size by data x fsdp).
    """
    batch = cache.valid_bs.shape[0]
    if batch % batch_shards(mesh):
        raise ValueError(f"KV cache batch {batch} is not divisible by mesh data x fsdp = "
                         f"{batch_shards(mesh)}; choose a batch that is")

    def one(path, leaf):
        field = path_str(path).split("/")[0]
        spec = {"k_lbksh": CACHE_LBKSH, "v_lbksh": CACHE_LBKSH, "valid_bs": P(BATCH, None),
                "next_pos_b": P(BATCH), "index": P()}[field]
        return NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh))
    return jax.tree_util.tree_map_with_path(one, cache)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """with_sharding_constraint under a mesh context (jax.set_mesh); a no-op without one.

    The model calls this at layer boundaries, so the same code runs unsharded in tests and on a
    single device, and pinned on a pod.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh, drop_unknown=True))


def describe(x: Any) -> str:
    """'[4096, 2560] bfloat16 P(tensor, fsdp) shard [512, 2560]' for logs and errors."""
    shard = x.sharding.shard_shape(x.shape) if hasattr(x, "sharding") else x.shape
    spec = getattr(getattr(x, "sharding", None), "spec", None)
    return f"{list(x.shape)} {x.dtype} {spec} shard {list(shard)}"
