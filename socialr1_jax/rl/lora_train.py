"""GRPO and SFT with LoRA adapters (Hu et al. 2021; initialised as PEFT does, see model/lora.py).

The TrainState holds the adapters only (`{'lora': ...}`), their fp32 master copy when the
model's dtype is lower, and AdamW's moments over them: the optimizer never sees a base weight.
The base parameters are one frozen set of arrays, passed to every program as an argument that
is never donated. They serve three uses without a second copy:

- the policy: base + adapters, merged as nnx states (no array is copied) for the sampler, the
  old-policy forward and the loss; the adapters are applied unmerged (x @ W + s (x @ A) @ B);
- the KL reference: the same base arrays under the model config without adapters, i.e. the
  policy with its adapters off;
- the train step: `step(state, batch)` closes over the base (`LoraStep`), so the GRPO loop
  (`rollout_updates.rollout_updates`) and the SFT job call it as they call a full fine-tuning step
  (`jit_update` jits either update, rl/sft_step.py the SFT one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from socialr1_jax.model import build, lora
from socialr1_jax.model.config import ModelConfig
from socialr1_jax.parallel.sharding import batch_sharding
from socialr1_jax.rl import packed_step
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.config import GRPOConfig, OptimConfig


def full_params(base, adapters):
    """The adapted model's parameter state from its two parts (no array copied)."""
    return nnx.merge_state(base, adapters)


def abstract_adapters(model_cfg: ModelConfig, mesh: Optional[Mesh]):
    """The adapter state {'lora': ...} of `model_cfg` as ShapeDtypeStructs (with shardings)."""
    return build.abstract_lora_parts(model_cfg, mesh)[2]


def abstract_train_state(model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Optional[Mesh],
                         *, total_updates: int = 1) -> ts.TrainState:
    """The LoRA TrainState (adapters, master, moments, counters) as ShapeDtypeStructs."""
    return ts.abstract_state_of(abstract_adapters(model_cfg, mesh), optim_cfg, mesh,
                                total_updates=total_updates)


class LoraStep:
    """`step(state, batch)` of a LoRA run: the jitted `fn(state, batch, base)` with the frozen
    base bound (never donated). `lower(state, batch, base=None)` lowers it (abstract args)."""

    def __init__(self, fn: ts.MeshFunction, base):
        self.fn, self.base = fn, base

    def __call__(self, state, batch):
        return self.fn(state, batch, self.base)

    def lower(self, state, batch, base=None):
        return self.fn.lower(state, batch, self.base if base is None else base)


def jit_update(step, model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Optional[Mesh],
               batch_sh, *, total_updates: int = 1) -> ts.MeshFunction:
    """`step(state, batch, base) -> (state, metrics)` of any LoRA update (GRPO, SFT) jitted:
    the state (adapters, master, moments) donated and sharded as its adapters are, the frozen
    base never donated, `batch_sh` the batch's shardings (on a mesh)."""
    if mesh is None:
        return jit_frozen(step, None, None, optim_cfg, None, batch_sh)
    _, base_abstract, adapters = build.abstract_lora_parts(model_cfg, mesh)
    return jit_frozen(step, adapters, base_abstract, optim_cfg, mesh, batch_sh,
                      total_updates=total_updates)


def jit_frozen(step, trainable, base, optim_cfg: OptimConfig, mesh: Optional[Mesh], batch_sh,
               *, total_updates: int = 1) -> ts.MeshFunction:
    """`step(state, batch, base) -> (state, metrics)` jitted for any split of a model into a
    trained part and a frozen one (the Qwen3's adapters, or a reward model's adapters + head):
    the TrainState around `trainable` donated and sharded by the parameter rules, the frozen
    `base` (arrays or ShapeDtypeStructs with shardings) never donated."""
    if mesh is None:
        return ts.MeshFunction(jax.jit(step, donate_argnums=0), None)
    st_sh = ts.train_state_shardings(trainable, optim_cfg, mesh, total_updates=total_updates)
    rep = NamedSharding(mesh, P())
    jitted = jax.jit(step, donate_argnums=0,
                     in_shardings=(st_sh, batch_sh, build.shardings_of(base)),
                     out_shardings=(st_sh, rep))
    return ts.MeshFunction(jitted, mesh)


def make_train_step(model_cfg: ModelConfig, optim_cfg: OptimConfig, grpo_cfg: GRPOConfig,
                    mesh: Optional[Mesh] = None, *, temperature: float = 1.0,
                    micro_batch_size: int = 0, total_updates: int = 1,
                    dropout_seed: int = 0) -> ts.MeshFunction:
    """The jitted LoRA update `fn(state, batch, base) -> (state, metrics)`: the GRPO loss of
    `train_step.policy_loss` under base + adapters, differentiated in the adapters only, with
    the update (`train_step.apply_update`: micro-batches, clipping, AdamW, NaN skip) applied
    to them. The state is donated; the base is not. model.lora.dropout > 0 drops the adapters'
    input in this step only (`lora.Dropout`, keys from `dropout_seed` and the update count)."""
    graphdef = build.abstract_lora_parts(model_cfg, mesh)[0]
    step = ts.grpo_update(graphdef, model_cfg, optim_cfg, grpo_cfg, mesh,
                          temperature=temperature, micro_batch_size=micro_batch_size,
                          total_updates=total_updates,
                          params_of=lambda adapters, base: full_params(base, adapters),
                          dropout=lora.dropout_of(model_cfg, dropout_seed))
    return jit_update(step, model_cfg, optim_cfg, mesh, ts.batch_shardings(mesh),
                      total_updates=total_updates)


def make_packed_train_step(model_cfg: ModelConfig, optim_cfg: OptimConfig,
                           grpo_cfg: GRPOConfig, mesh: Optional[Mesh] = None, *,
                           temperature: float = 1.0, micro_batches: int = 1,
                           total_updates: int = 1, dropout_seed: int = 0) -> ts.MeshFunction:
    """`make_train_step` on packed rows (grpo.packed): the jitted `fn(state, packed, base)`,
    the loss of `packed_step.packed_update` under base + adapters, differentiated in the
    adapters only; the state donated, the base not. With model.lora.dropout > 0 the masks are
    drawn per packed row (keys from the seed, the update count and the packed row)."""
    graphdef = build.abstract_lora_parts(model_cfg, mesh)[0]
    step = packed_step.packed_update(
        graphdef, model_cfg, optim_cfg, grpo_cfg, mesh, temperature=temperature,
        micro_batches=micro_batches, total_updates=total_updates,
        params_of=lambda adapters, base: full_params(base, adapters),
        dropout=lora.dropout_of(model_cfg, dropout_seed))
    # One sharding for the whole packed batch (a tree prefix: every field is [R, T]).
    rows = batch_sharding(mesh, 2) if mesh is not None else None
    return jit_update(step, model_cfg, optim_cfg, mesh, rows, total_updates=total_updates)


@dataclasses.dataclass
class LoraParts:
    """What a LoRA run's programs share: the frozen base state and the model configs of the
    policy (with adapters) and of the reference (without)."""

    base: Any
    policy_cfg: ModelConfig

    @property
    def reference_cfg(self) -> ModelConfig:
        return self.policy_cfg.replace(lora=None)

    def policy(self, adapters):
        """The adapted model's parameter state (for the sampler, evaluation, old log-probs)."""
        return full_params(self.base, adapters)

