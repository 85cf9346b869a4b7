"""Building models without a checkpoint: abstract (nothing allocated) or random and sharded.

Fresh parameters are created under `jax.jit` with `out_shardings`, so none passes through one
device whole (the compiled init program's largest buffer is one shard).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model.config import ModelConfig
from socialr1_jax.model.qwen3 import Qwen3
from socialr1_jax.parallel.sharding import check_model_fits_mesh, param_shardings


def abstract_model(cfg: ModelConfig) -> Qwen3:
    """The model with ShapeDtypeStruct leaves: nothing is allocated."""
    return nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))


def param_count(model_or_state) -> int:
    """Number of parameters of a model or state (abstract or concrete)."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state))


def shardings_for(cfg: ModelConfig, mesh: Mesh | None):
    """(graphdef, abstract state, tree of shardings or None) for a config on a mesh."""
    graphdef, abstract = nnx.split(abstract_model(cfg))
    if mesh is None:
        return graphdef, abstract, None
    check_model_fits_mesh(cfg, mesh)
    return graphdef, abstract, param_shardings(abstract, mesh)


def create_model(cfg: ModelConfig, *, mesh: Mesh | None = None, seed: int = 0) -> Qwen3:
    """A randomly initialised model, its parameters created directly in their shardings."""
    graphdef, _, shardings = shardings_for(cfg, mesh)

    @jax.jit
    def init():
        return nnx.state(Qwen3(cfg, rngs=nnx.Rngs(seed)))

    if shardings is not None:
        init = jax.jit(init, out_shardings=shardings)
    return nnx.merge(graphdef, init())
