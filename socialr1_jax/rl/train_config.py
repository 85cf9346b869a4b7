"""Typed configuration of a GRPO run: model, optimizer, GRPO, rollout, mesh, run, toy task.

`load_train_config(path, overrides)` reads a YAML file (configs/*.yaml) with `key=value`
overrides (`optim.lr=1e-6`, `model.path=/ckpt/Qwen3-4B`) through `config.load_yaml`, which refuses
unknown keys and ill-typed values; `TrainConfig.__post_init__` then checks the values that only
make sense together (group size vs normalisation, batch divisibility, ...).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from socialr1_jax.rl import grpo
from socialr1_jax.model.config import MATMUL_PRECISIONS, ModelConfig, parse_dtype, preset
from socialr1_jax.yaml_config import load_yaml

TASKS = ("toy", "social-r1")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to train. `path` (an HF Qwen3 directory or our Orbax checkpoint) wins over
    `preset` (a named random-initialised config, for demos and benchmarks).

    param_dtype / dtype: '' keeps the checkpoint's or preset's. remat: per-layer
    rematerialisation in the train step ('none', 'full', 'dots'). matmul_precision: of every
    matmul of the model ('default', 'high', 'highest'; '' = by dtype: 'highest' for fp32,
    'default' for bf16). vocab_size: a preset override (0 keeps it), used by the toy task's
    small vocabulary.
    """

    preset: str = "tiny"
    path: str = ""
    param_dtype: str = ""
    dtype: str = ""
    remat: str = "none"
    matmul_precision: str = ""
    vocab_size: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"model.matmul_precision={self.matmul_precision!r}; expected one of "
                             f"{MATMUL_PRECISIONS[1:]} or '' (by dtype)")

    def preset_config(self) -> ModelConfig:
        """The ModelConfig of the preset with this section's changes (no checkpoint involved)."""
        changes = {"remat": self.remat, "matmul_precision": self.matmul_precision}
        if self.param_dtype:
            changes["param_dtype"] = self.param_dtype
        if self.dtype:
            changes["dtype"] = self.dtype
        if self.vocab_size:
            changes["vocab_size"] = self.vocab_size
        return preset(self.preset, **changes)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping (verl's defaults: betas 0.9/0.999, wd 0.01, clip 1.0).

    schedule: 'constant' or 'cosine' (to min_lr_ratio * lr at decay_steps, 0 = the run's last
    update), after `warmup_steps` linear warm-up from 0. Steps count optimizer updates.
    master_dtype: dtype of the optimizer moments and of the master copy of the weights kept when
    the parameters are stored in a lower precision (bf16 weights cannot absorb updates of 5e-7).
    """

    lr: float = 5e-7
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    master_dtype: str = "float32"

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule={self.schedule!r}; expected 'constant' or 'cosine'")
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("optim.warmup_steps and optim.decay_steps must be >= 0")
        parse_dtype(self.master_dtype)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The GRPO objective and how a rollout batch is consumed.

    group_size: completions per prompt. normalize_adv: std-normalised advantages (False =
    Dr.GRPO). dual_clip: 0 turns it off. loss_scale_factor: K of seq-mean-token-sum-norm
    (0 = the completion length). mini_batch_size: sequences per optimizer update (0 = the whole
    rollout: one update per step); epochs: passes over the rollout; micro_batch_size: sequences
    per forward/backward inside one update (0 = the mini-batch). recompute_old_logp: recompute
    the old log-probs with the policy instead of taking the sampler's. max_consecutive_skips:
    stop the run after this many non-finite updates in a row. head_remat: recompute the LM
    head's logits in the backward pass ('always'), keep them ('never'), or 'auto': keep them when
    one micro-batch's fp32 logits take at most 1 GiB per device (saves one head matmul).
    """

    group_size: int = 5
    beta: float = 0.04
    kl: str = "k3"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float = 3.0
    agg: str = "token-mean"
    loss_scale_factor: int = 0
    normalize_adv: bool = True
    epochs: int = 1
    mini_batch_size: int = 0
    micro_batch_size: int = 0
    shuffle: bool = True
    recompute_old_logp: bool = False
    compute_entropy: bool = True
    logprob_chunk: int = 256
    head_remat: str = "auto"
    max_consecutive_skips: int = 3

    def __post_init__(self):
        if self.kl not in grpo.KL_TYPES:
            raise ValueError(f"grpo.kl={self.kl!r}; expected one of {grpo.KL_TYPES}")
        if self.agg not in grpo.AGG_MODES:
            raise ValueError(f"grpo.agg={self.agg!r}; expected one of {grpo.AGG_MODES}")
        if self.group_size < 1:
            raise ValueError(f"grpo.group_size={self.group_size} must be >= 1")
        if self.normalize_adv and self.group_size == 1:
            raise ValueError("grpo.group_size=1 with grpo.normalize_adv=true: the std of a group "
                             "of one is undefined; use group_size >= 2 or normalize_adv=false")
        if self.head_remat not in ("auto", "always", "never"):
            raise ValueError(f"grpo.head_remat={self.head_remat!r}; expected 'auto', 'always' "
                             "or 'never'")
        if self.dual_clip and self.dual_clip <= 1.0:
            raise ValueError(f"grpo.dual_clip={self.dual_clip} must be > 1 (or 0 = off)")
        for key in ("epochs", "max_consecutive_skips", "logprob_chunk"):
            if getattr(self, key) < 1:
                raise ValueError(f"grpo.{key}={getattr(self, key)} must be >= 1")
        for key in ("mini_batch_size", "micro_batch_size", "loss_scale_factor"):
            if getattr(self, key) < 0:
                raise ValueError(f"grpo.{key}={getattr(self, key)} must be >= 0")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling: prompts per step (each sampled grpo.group_size times), lengths, sampler knobs."""

    prompts_per_step: int = 8
    max_prompt_len: int = 512
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.prompts_per_step < 1 or self.max_prompt_len < 1 or self.max_new_tokens < 1:
            raise ValueError("rollout.prompts_per_step, max_prompt_len, max_new_tokens must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"rollout.temperature={self.temperature}: GRPO needs sampling (> 0)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor); fsdp=0 takes every device the other two leave."""

    data: int = 1
    fsdp: int = 0
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """task: 'toy' (toy_task.py) or 'social-r1' (not implemented yet). out_dir: metrics.jsonl and
    checkpoints (empty = write nothing). save_every: checkpoint period in steps (0 = only at the
    end). resume: continue from the latest checkpoint in out_dir/checkpoints (params, master
    weights, optimizer state, counters; the reference stays the initial model). progress: a tqdm
    bar alongside the per-step lines."""

    task: str = "toy"
    steps: int = 600
    seed: int = 0
    out_dir: str = ""
    save_every: int = 0
    log_every: int = 1
    progress: bool = True
    resume: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"run.task={self.task!r}; expected one of {TASKS}")
        if self.steps < 1:
            raise ValueError(f"run.steps={self.steps} must be >= 1")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The toy task: reward 1 when the completion starts with `target_token`."""

    target_token: int = 7
    prompt_len: int = 6
    eos_id: int = 1
    num_prompts: int = 64


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; see configs/*.yaml."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)

    @property
    def rollout_size(self) -> int:
        """Sequences per step: prompts x group size."""
        return self.rollout.prompts_per_step * self.grpo.group_size

    @property
    def mini_batch(self) -> int:
        return self.grpo.mini_batch_size or self.rollout_size

    @property
    def micro_batch(self) -> int:
        return self.grpo.micro_batch_size or self.mini_batch

    @property
    def updates_per_step(self) -> int:
        return self.grpo.epochs * (self.rollout_size // self.mini_batch)

    @property
    def total_updates(self) -> int:
        return self.run.steps * self.updates_per_step

    def __post_init__(self):
        n, mb, mu = self.rollout_size, self.mini_batch, self.micro_batch
        if n % mb:
            raise ValueError(f"grpo.mini_batch_size={mb} does not divide the rollout of {n} "
                             f"sequences (rollout.prompts_per_step x grpo.group_size)")
        if mb % mu:
            raise ValueError(f"grpo.micro_batch_size={mu} does not divide the mini-batch of {mb}")


def load_train_config(path: Optional[str | os.PathLike] = None, overrides=(), *,
                      defaults: Optional[dict] = None) -> TrainConfig:
    """A TrainConfig from YAML `path` (or `defaults`) with `key=value` overrides on top."""
    return load_yaml(TrainConfig, path, list(overrides), defaults=defaults)
