"""Building models without a checkpoint: abstract (nothing allocated) or random and sharded.

Fresh parameters are created under `jax.jit` with `out_shardings`, so none passes through one
device whole (the compiled init program's largest buffer is one shard). The layers' weights are
stacked (see qwen3.py), so the init program is one random draw per stacked weight whatever the
depth: it compiles in about the same time for 2 layers as for 36.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model.config import ModelConfig
from socialr1_jax.model.lora import Adapters
from socialr1_jax.model.qwen3 import Qwen3
from socialr1_jax.parallel.sharding import check_model_fits_mesh, param_shardings


def abstract_model(cfg: ModelConfig) -> Qwen3:
    """The model with ShapeDtypeStruct leaves: nothing is allocated."""
    return nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))


def param_count(model_or_state) -> int:
    """Number of parameters of a model or state (abstract or concrete)."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state))


def abstract_state(cfg: ModelConfig, mesh: Mesh | None = None):
    """(graphdef, parameter state of ShapeDtypeStructs) of a config, nothing allocated.

    With a mesh, every leaf carries its NamedSharding from the partition rules (the mesh is
    checked against the config first); `shardings_of(state)` takes them out as a tree.
    """
    graphdef, abstract = nnx.split(abstract_model(cfg))
    if mesh is None:
        return graphdef, abstract
    check_model_fits_mesh(cfg, mesh)
    return graphdef, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        param_shardings(abstract, mesh))


def shardings_of(abstract):
    """The tree of `.sharding`s of an abstract state from `abstract_state(cfg, mesh)`."""
    return jax.tree.map(lambda a: a.sharding, abstract)


def init_program(cfg: ModelConfig, mesh: Mesh | None = None, *, seed: int = 0):
    """The jitted random init: `init_program(cfg, mesh)()` -> parameter state, in its shardings.

    Exposed so its compile can be measured on its own (`init_program(...).lower().compile()`).
    """
    def init():
        return nnx.state(Qwen3(cfg, rngs=nnx.Rngs(seed)))

    if mesh is None:
        return jax.jit(init)
    _, abstract = abstract_state(cfg, mesh)
    return jax.jit(init, out_shardings=shardings_of(abstract))


def create_model(cfg: ModelConfig, *, mesh: Mesh | None = None, seed: int = 0) -> Qwen3:
    """A randomly initialised model, its parameters created directly in their shardings."""
    graphdef, _ = nnx.split(abstract_model(cfg))
    return nnx.merge(graphdef, init_program(cfg, mesh, seed=seed)())


def with_lora(model: Qwen3, spec, *, mesh: Mesh | None = None, seed: int = 0) -> Qwen3:
    """`model` with fresh LoRA adapters (`spec`: a model.lora.LoraSpec), created in their
    shardings; the base parameters are the same arrays (not copied). A is drawn from
    `seed` as PEFT draws it and B is zero, so the result computes exactly what `model` does."""
    if model.cfg.lora is not None:
        raise ValueError("the model already has LoRA adapters")
    cfg = model.cfg.replace(lora=spec)
    graphdef, abstract = abstract_state(cfg, mesh)

    def init():
        return nnx.state(Adapters(cfg, rngs=nnx.Rngs(seed)))

    _, _, abstract_adapters = abstract_lora_parts(cfg, mesh)
    out = None if mesh is None else shardings_of(abstract_adapters)["lora"]
    adapters = jax.jit(init, out_shardings=out)()
    return nnx.merge(graphdef, nnx.state(model), nnx.State({"lora": adapters}))


def abstract_lora_parts(cfg: ModelConfig, mesh: Mesh | None = None):
    """(graphdef, abstract base state, abstract adapter state) of an adapted model's config,
    split as `split_lora` splits a model (with shardings on a mesh)."""
    graphdef, abstract = abstract_state(cfg, mesh)
    adapters, base = nnx.split_state(abstract, nnx.PathContains("lora"), ...)
    return graphdef, base, adapters


def split_lora(model: Qwen3):
    """(graphdef, base parameter state, adapter state {'lora': ...}) of an adapted model."""
    graphdef, adapters, base = nnx.split(model, nnx.PathContains("lora"), ...)
    return graphdef, base, adapters


def merge_lora(graphdef, base, adapters) -> Qwen3:
    """The adapted model from `split_lora`'s parts (no array is copied)."""
    return nnx.merge(graphdef, base, adapters)
