"""Orbax checkpoints: one layout for converted HF weights and for training checkpoints.

Layout of a checkpoint root `CKPT` (an Orbax CheckpointManager directory):

    CKPT/config.json                HF config of the stored weights (torch_dtype = stored dtype)
    CKPT/generation_config.json, tokenizer.json, tokenizer_config.json, ... (copied when present)
    CKPT/<step>/params/             the model's nnx state as a nested dict of arrays:
                                    {"embed_vd", "final_norm": {"scale_d"},
                                     "layers": {0: {"attn": {"q_nhd", ...}, ...}, ...}}
    CKPT/<step>/opt_state/          training checkpoints only: the optimizer state pytree
    CKPT/<step>/meta/               training checkpoints only: JSON {"step": ..., ...}

Inside `params/` Orbax stores each array as zarr: training saves use Orbax's default OCDBT
store; `hf_to_orbax` writes one plain directory per parameter (no OCDBT, uncompressed, chunks
along axis 0), so its chunk files are byte ranges of the safetensors tensors, copied by the kernel
both ways. Every restore below reads either kind (Orbax detects which).

Steps are numbered directories finalized atomically by Orbax (written as `<step>.orbax-checkpoint-
tmp-*` and renamed when complete), so a directory named by a number is always whole.
`conversion.hf_to_orbax` writes step 0 with params only; `conversion.orbax_to_hf` exports the params
of any step. Parameter paths are `sharding.path_str` of nnx state paths ("layers/3/attn/q_nhd") and
`hf_layout.layout(cfg)` maps them to HF names, in both directions.

API for the trainer:

    save_checkpoint(root, step, params_state, opt_state=None, meta=None, *, cfg=None,
                    side_files_from=None, max_to_keep=None) -> step directory
        params_state: an nnx.Module, nnx.State or pure dict of (sharded) jax.Arrays.
        opt_state: any pytree of arrays (optax state, or an nnx.State), saved as item "opt_state".
        meta: JSON-serializable dict (config, data position, ...); "step" is added.
        cfg: written as CKPT/config.json if the root has none (so the root loads with load_model);
        side_files_from: an HF directory whose tokenizer/generation files are copied if missing.
        Synchronous: the step is complete on disk when it returns.

    restore_checkpoint(root, step=None, *, cfg=None, mesh=None, dtype=None,
                       abstract_opt_state=None) -> Restored(step, cfg, model, opt_state, meta)
        step None = the latest. Params are read straight into their shardings on `mesh` (from
        build.abstract_state), whatever mesh wrote them; mesh None = one device. cfg defaults to
        CKPT/config.json. opt_state is restored only if `abstract_opt_state` is given: a pytree of
        jax.ShapeDtypeStruct (with .sharding, e.g. from jax.eval_shape + the param shardings) or of
        arrays whose shardings are the targets.

    load_model_from_orbax(path, *, dtype=None, mesh=None, step=None) -> Qwen3   (used by load_model)
    list_steps(root), latest_step(root), is_orbax_checkpoint(path), read_config(root)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
from flax import nnx
from jax.sharding import SingleDeviceSharding

from socialr1_jax.checkpoint import hf_layout
from socialr1_jax.model.config import dtype_name, from_hf_config, ModelConfig, parse_dtype
from socialr1_jax.checkpoint.errors import CheckpointError, damaged_chunk

PARAMS, OPT_STATE, META = "params", "opt_state", "meta"

# Files kept beside the steps (and copied back on export) when the source has them.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
              "tokenizer.model", "chat_template.json", "chat_template.jinja")


# ----------------------------------------------------------------------------------------------
# Steps and side files.

def _is_step_dir(path: str) -> bool:
    return (os.path.basename(os.path.normpath(path)).isdigit()
            and os.path.isdir(os.path.join(path, PARAMS)))


def list_steps(root: str) -> list[int]:
    """The finalized steps under a checkpoint root, ascending (unfinished tmp dirs are ignored)."""
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root) if _is_step_dir(os.path.join(root, n)))


def latest_step(root: str) -> int | None:
    """The highest finalized step, or None."""
    steps = list_steps(root)
    return steps[-1] if steps else None


def is_orbax_checkpoint(path: str) -> bool:
    """True for a checkpoint root with at least one finalized step, or for a step directory."""
    path = os.fspath(path)
    return os.path.isdir(path) and (bool(list_steps(path)) or _is_step_dir(path))


def run_checkpoints(path: str) -> str:
    """A training run's folder (RUN, not itself a checkpoint) -> its checkpoint root
    RUN/checkpoints; any other path unchanged. Every command that takes a checkpoint takes a
    run folder through this."""
    ckpts = os.path.join(os.fspath(path), "checkpoints")
    return ckpts if not is_orbax_checkpoint(path) and is_orbax_checkpoint(ckpts) else path


def resolve(path: str, step: int | None = None) -> tuple[str, int]:
    """(root, step) from a root (step None = latest) or a step directory; clear errors otherwise."""
    path = os.path.abspath(os.fspath(path))
    if _is_step_dir(path) and not list_steps(path):
        named = int(os.path.basename(path))
        if step is not None and step != named:
            raise CheckpointError(f"{path} is step {named} but step {step} was asked for")
        return os.path.dirname(path), named
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    steps = list_steps(path)
    if not steps:
        raise CheckpointError(f"{path}: no finalized checkpoint step (a numbered directory with "
                              f"{PARAMS}/) is there")
    if step is None:
        return path, steps[-1]
    if step not in steps:
        raise CheckpointError(f"{path}: step {step} does not exist; steps present: {steps}")
    return path, step


def set_config_dtype(hf_config: dict, dtype) -> dict:
    """A copy of an HF config dict whose weight dtype field(s) name `dtype`."""
    out = dict(hf_config)
    name = dtype_name(parse_dtype(dtype))
    keys = [k for k in ("torch_dtype", "dtype") if k in out] or ["torch_dtype"]
    for k in keys:
        out[k] = name
    return out


def write_json_atomic(path: str, data: dict) -> None:
    """Write JSON through a temporary file renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def copy_side_files(src: str, dst: str, *, dtype=None, only_missing: bool = False) -> list[str]:
    """Copy config.json (dtype fields set to `dtype` if given), generation and tokenizer files.

    Returns the names copied. Any `*.jinja` chat template is copied too.
    """
    names = [n for n in SIDE_FILES if os.path.isfile(os.path.join(src, n))]
    names += sorted(n for n in os.listdir(src)
                    if n.endswith(".jinja") and n not in names and os.path.isfile(os.path.join(src, n)))
    copied = []
    for name in names:
        target = os.path.join(dst, name)
        if only_missing and os.path.exists(target):
            continue
        if name == "config.json" and dtype is not None:
            with open(os.path.join(src, name)) as f:
                write_json_atomic(target, set_config_dtype(json.load(f), dtype))
        else:
            shutil.copyfile(os.path.join(src, name), target + ".tmp")
            os.replace(target + ".tmp", target)
        copied.append(name)
    return copied


def read_config(root: str, *, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of a checkpoint root from its config.json (dtype overrides both dtypes)."""
    path = os.path.join(root, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{root}: no config.json beside the checkpoint steps")
    return from_hf_config(path, param_dtype=dtype, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The Orbax manager.

def manager(root: str, *, create: bool = False, params_handler=None, max_to_keep=None):
    """A synchronous CheckpointManager over `root` with our three items."""
    import orbax.checkpoint as ocp

    handlers = {
        PARAMS: params_handler or ocp.PyTreeCheckpointHandler(use_compression=False),
        OPT_STATE: ocp.PyTreeCheckpointHandler(use_compression=False),
        META: ocp.JsonCheckpointHandler(),
    }
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=create,
                                           max_to_keep=max_to_keep)
    return ocp.CheckpointManager(os.path.abspath(root), item_handlers=handlers, options=options)


def _pure(tree) -> Any:
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)
    if isinstance(tree, nnx.State):
        return nnx.to_pure_dict(tree)
    return tree


def save_checkpoint(root: str, step: int, params_state, opt_state=None, meta: dict | None = None,
                    *, cfg: ModelConfig | None = None, side_files_from: str | None = None,
                    max_to_keep: int | None = None) -> str:
    """Save one training step (params, and opt_state/meta when given); returns the step directory.

    See the module docstring. Arrays may be sharded over any mesh; each process writes its shards.
    """
    import orbax.checkpoint as ocp

    root = os.path.abspath(os.fspath(root))
    os.makedirs(root, exist_ok=True)
    if jax.process_index() == 0:
        if side_files_from is not None:
            copy_side_files(side_files_from, root, only_missing=True,
                            dtype=cfg.param_dtype if cfg is not None else None)
        if cfg is not None and not os.path.exists(os.path.join(root, "config.json")):
            write_json_atomic(os.path.join(root, "config.json"), cfg.to_hf_config())
    items = {PARAMS: ocp.args.PyTreeSave(_pure(params_state))}
    if opt_state is not None:
        items[OPT_STATE] = ocp.args.PyTreeSave(_pure(opt_state))
    if meta is not None or opt_state is not None:
        items[META] = ocp.args.JsonSave({**(meta or {}), "step": int(step)})
    mgr = manager(root, create=True, max_to_keep=max_to_keep)
    try:
        mgr.save(int(step), args=ocp.args.Composite(**items), force=True)
        mgr.wait_until_finished()
    finally:
        mgr.close()
    return os.path.join(root, str(int(step)))


def check_params(cfg: ModelConfig, item_dir: str, metas: dict, *, what: str = "config.json") -> None:
    """Every parameter of `cfg` present in a saved params item with its shape, nothing extra.

    metas: {path: anything with .shape}; `what` names where cfg came from in the errors.
    """
    table = hf_layout.params(cfg)
    missing = [p for p in table if p not in metas]
    if missing:
        raise CheckpointError(f"{item_dir}: lacks parameter(s) {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} needed by {what}")
    extra = sorted(set(metas) - set(table))
    if extra:
        raise CheckpointError(f"{item_dir}: parameter(s) {extra[:5]} are not part of a dense Qwen3 "
                              f"with {what}")
    for path, param in table.items():
        shape = tuple(metas[path].shape)
        if shape != param.shape:
            raise CheckpointError(f"{item_dir}: parameter {path} ({param.describe()}) has shape "
                                  f"{list(shape)}, {what} needs {list(param.shape)}")


@dataclasses.dataclass
class Restored:
    """What `restore_checkpoint` returns."""

    step: int
    cfg: ModelConfig
    model: Any            # Qwen3 with sharded parameters
    opt_state: Any        # None unless abstract_opt_state was given
    meta: dict | None


def _restore_args_for(abstract, mesh, what: str):
    import orbax.checkpoint as ocp

    device = jax.local_devices()[0]

    def one(path, leaf):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            if mesh is not None:
                raise ValueError(f"{what} leaf {jax.tree_util.keystr(path)} has no sharding; give "
                                 "ShapeDtypeStructs with .sharding for a mesh restore")
            sharding = SingleDeviceSharding(device)
        return ocp.ArrayRestoreArgs(sharding=sharding, dtype=leaf.dtype,
                                    global_shape=tuple(leaf.shape))

    return jax.tree_util.tree_map_with_path(one, abstract)


def restore_checkpoint(root: str, step: int | None = None, *, cfg: ModelConfig | None = None,
                       mesh=None, dtype: str | None = None, abstract_opt_state=None) -> Restored:
    """Restore a step's params (and opt_state/meta when asked) onto `mesh`; see module docstring."""
    import orbax.checkpoint as ocp

    from socialr1_jax.checkpoint.stream import item_metadata
    from socialr1_jax.model.build import abstract_state

    root, step = resolve(root, step)
    step_dir = os.path.join(root, str(step))
    what = "the given config" if cfg is not None else os.path.join(root, "config.json")
    if cfg is None:
        cfg = read_config(root, dtype=dtype)
    elif dtype is not None:
        cfg = cfg.replace(param_dtype=dtype_name(parse_dtype(dtype)),
                          dtype=dtype_name(parse_dtype(dtype)))
    metas, _ = item_metadata(os.path.join(step_dir, PARAMS))
    check_params(cfg, os.path.join(step_dir, PARAMS), metas, what=what)

    graphdef, abstract = abstract_state(cfg, mesh)
    target = nnx.to_pure_dict(abstract)
    items = {PARAMS: ocp.args.PyTreeRestore(
        item=target, restore_args=_restore_args_for(target, mesh, PARAMS))}
    opt_target = None
    if abstract_opt_state is not None:
        if not os.path.isdir(os.path.join(step_dir, OPT_STATE)):
            raise CheckpointError(f"{step_dir}: has no {OPT_STATE} (a converted checkpoint, not a "
                                  "training one); cannot restore the optimizer state")
        opt_target = _pure(abstract_opt_state)
        items[OPT_STATE] = ocp.args.PyTreeRestore(
            item=opt_target, restore_args=_restore_args_for(opt_target, mesh, OPT_STATE))
    if os.path.isdir(os.path.join(step_dir, META)):
        items[META] = ocp.args.JsonRestore()
    mgr = manager(root)
    try:
        out = mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax wraps TensorStore's error in a bare Exception
        bad = damaged_chunk(e, os.path.join(root, str(step)))
        if bad is None:
            raise
        raise bad from None
    finally:
        mgr.close()
    nnx.replace_by_pure_dict(abstract, out[PARAMS])
    opt_state = None
    if opt_target is not None:
        opt_state = out[OPT_STATE]
        if isinstance(abstract_opt_state, nnx.State):
            restored = jax.tree.map(lambda x: x, abstract_opt_state)
            nnx.replace_by_pure_dict(restored, opt_state)
            opt_state = restored
    meta = out[META] if META in items else None
    return Restored(step=step, cfg=cfg, model=nnx.merge(graphdef, abstract), opt_state=opt_state,
                    meta=meta)


def load_model_from_orbax(path: str, *, dtype: str | None = None, mesh=None,
                          step: int | None = None):
    """The Qwen3 model stored at a checkpoint root (or step directory), sharded onto `mesh`."""
    return restore_checkpoint(path, step, dtype=dtype, mesh=mesh).model

