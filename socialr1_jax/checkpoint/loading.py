"""Loading a model from a checkpoint: an HF directory (safetensors) or our Orbax checkpoint.

Parameters never pass through one device whole: each is assembled with
`jax.make_array_from_callback`, which asks the host only for the slices its own devices hold (on
a pod, each host reads just its part of every tensor).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from socialr1_jax.checkpoint import finite, hf_layout, lora_io, orbax_io
from socialr1_jax.model import build
from socialr1_jax.model.config import preset
from socialr1_jax.model.config import from_hf_config, ModelConfig
from socialr1_jax.model.build import abstract_state
from socialr1_jax.model.qwen3 import Qwen3
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir
from socialr1_jax.parallel.sharding import path_str


def assemble_state(cfg: ModelConfig, mesh: Mesh | None,
                   read: Callable[[hf_layout.Entry], np.ndarray], *, where: str) -> Qwen3:
    """Build a model whose parameters hold `read(entry)` (a host array in our layout) for every
    HF tensor, each at its place (`entry.index`: a layer slice of a stacked parameter, or whole).

    `read` may return a memory map: only the slices this process's devices own are touched (of a
    stacked parameter, only the layers and the part of each layer a device holds). Every tensor
    is checked (presence, shape) before any array is built, so a bad checkpoint never yields a
    half-loaded model.
    """
    graphdef, abstract = abstract_state(cfg, mesh)
    table = hf_layout.params(cfg)
    hosts = {}
    for param in table.values():
        for e in param.entries:
            host = read(e)
            if tuple(host.shape) != e.shape:
                raise CheckpointError(f"{where}: tensor {e.hf_name} has shape "
                                      f"{list(host.shape)}, the config needs {list(e.hf_shape)}")
            hosts[e.hf_name] = host
    device = jax.local_devices()[0]

    def build(path, leaf):
        param = table[path_str(path)]
        sources = [hosts[e.hf_name] for e in param.entries]
        dtype = leaf.dtype
        sharding = getattr(leaf, "sharding", None) or SingleDeviceSharding(device)

        def cb(index):
            if not param.stacked:
                return np.asarray(sources[0][index]).astype(dtype, copy=False)
            layers = range(*index[0].indices(len(sources)))
            return np.stack([np.asarray(sources[i][index[1:]]) for i in layers]).astype(
                dtype, copy=False)

        return jax.make_array_from_callback(leaf.shape, sharding, cb)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(build, abstract))


def load_hf(path: str, *, dtype: str | None = None, mesh: Mesh | None = None,
            param_dtype: str | None = None) -> Qwen3:
    """Load an HF Qwen3 directory (config.json + safetensors, sharded or not), torch-free."""
    cfg = from_hf_config(path, param_dtype=param_dtype or dtype, dtype=dtype)
    st = SafetensorsDir(path)
    table = hf_layout.by_hf_name(cfg)
    names = set(st.keys())
    missing = [n for n in table if n not in names]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks tensor(s) {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} needed by its config.json")
    extra = sorted(names - set(table) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if extra:
        raise CheckpointError(f"{path}: tensor(s) {extra[:5]} in {st.file_of(extra[0])} are not "
                              "part of a dense Qwen3 with this config.json")
    for name, e in table.items():
        shape, _ = st.info(name)
        if tuple(shape) != e.hf_shape:
            raise CheckpointError(f"{st.file_of(name)}: tensor {name} has shape {list(shape)}, "
                                  f"config.json needs {list(e.hf_shape)}")

    def read(entry):
        return st.get(entry.hf_name).reshape(entry.shape)

    try:
        return assemble_state(cfg, mesh, read, where=path)
    finally:
        st.close()


def load_model(path: str, *, dtype: str | None = None, mesh: Mesh | None = None,
               allow_nonfinite: bool = False, step: int | None = None) -> Qwen3:
    """Load a Qwen3 model from an HF directory, an Orbax checkpoint written by our converter or
    a training job, or a training run's folder (RUN, whose RUN/checkpoints is loaded).

    dtype: 'bf16' / 'fp32' for both parameters and compute (default: the checkpoint's own).
    mesh: a `make_mesh(...)` mesh; parameters come back already sharded on it.
    A parameter holding a NaN or Inf is refused (finite.NonFiniteError naming the tensor and the
    element) unless allow_nonfinite (for debugging).
    step: which step of an Orbax checkpoint root (a training run's checkpoints/) to load
    (default the latest); refused for an HF directory.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    from socialr1_jax.checkpoint import orbax_io as checkpoint  # orbax is heavy to import; only when needed

    path = checkpoint.run_checkpoints(path)
    if lora_io.is_lora_root(path):  # a LoRA run: its base (lora.json) with the adapters
        model = load_lora_model(path, dtype=dtype, mesh=mesh, step=step)
    elif checkpoint.is_orbax_checkpoint(path):
        model = checkpoint.load_model_from_orbax(path, dtype=dtype, mesh=mesh, step=step)
    elif step is not None:
        raise CheckpointError(f"{path}: step {step} asked for, but this is no Orbax checkpoint "
                              "with steps")
    elif os.path.exists(os.path.join(path, "config.json")):
        model = load_hf(path, dtype=dtype, mesh=mesh)
    else:
        raise FileNotFoundError(f"{path}: neither an HF checkpoint (config.json) nor an Orbax "
                                "checkpoint")
    if not allow_nonfinite:
        finite.check_model(model, where=path)
    return model


def load_base(root: str, *, dtype=None, mesh=None):
    """The base model lora.json names, its hash checked against the record."""
    rec = lora_io.read_lora_json(root)["base"]
    if rec.get("path"):
        return load_model(lora_io.base_dir(root), dtype=dtype, mesh=mesh)
    cfg = preset(rec["preset"], vocab_size=rec["vocab_size"], param_dtype=rec["param_dtype"],
                 dtype=rec["dtype"])
    model = build.create_model(cfg, mesh=mesh, seed=int(rec["seed"]))
    lora_io.check_base(root, {"preset": rec["preset"], "hash": lora_io.params_hash(nnx.state(model))})
    return model


def load_lora_model(path: str, *, dtype=None, mesh=None, step: Optional[int] = None):
    """The adapted model of a LoRA run's checkpoint (root or step directory): the base from
    lora.json with the step's adapters."""
    import orbax.checkpoint as ocp

    root = lora_io._root_of(path)
    if lora_io.is_reward_lora(root):
        raise CheckpointError(f"{root}: a LoRA reward model (train_rm; lora.json saves the score "
                              "head), not a causal LM; load it with rm_io.load_reward_model or "
                              "the `model` judge")
    root, step = orbax_io.resolve(root, step if step is not None or path == root
                                  else int(os.path.basename(os.path.abspath(path))))
    base = load_base(root, dtype=dtype, mesh=mesh)
    model = build.with_lora(base, lora_io.spec_of(root), mesh=mesh)
    graphdef, base_state, adapters = build.split_lora(model)
    target = nnx.to_pure_dict(adapters)
    mgr = orbax_io.manager(root)
    try:
        out = mgr.restore(step, args=ocp.args.Composite(**{orbax_io.PARAMS: ocp.args.PyTreeRestore(
            item=target, restore_args=orbax_io._restore_args_for(target, mesh, orbax_io.PARAMS))}))
    finally:
        mgr.close()
    nnx.replace_by_pure_dict(adapters, out[orbax_io.PARAMS])
    adapters = jax.tree.map(lambda x: x.astype(model.cfg.jnp_param_dtype), adapters)
    return build.merge_lora(graphdef, base_state, adapters)
