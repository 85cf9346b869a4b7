"""The algorithm's config sections: `optim` (AdamW with clipping and a schedule) and `grpo`
(the objective and how a rollout batch is consumed). The jobs' configs (jobs/train_config.py,
jobs/rm_data.py) embed them; docs/training.md is the reference of every key."""

from __future__ import annotations

import dataclasses
import math

from socialr1_jax.model.config import parse_dtype
from socialr1_jax.rl import grpo
from socialr1_jax.yaml_config import check_at_least, ConfigError


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
        for key in ("lr", "min_lr_ratio", "weight_decay", "b1", "b2", "eps", "max_grad_norm"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be finite")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule={self.schedule!r}; expected 'constant' or 'cosine'")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError("optim.warmup_steps and optim.decay_steps must be >= 0")
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
    packed: run the update and the reference / old-policy log-prob forwards on the rollout's
    sequences packed into rows of `packed_row_len` tokens (0 = prompt + completion length) with
    segment ids instead of padded rows (rl/packing.py): the same loss, less padding computed.
    async_rollout: one-step off-policy rollout (rl/async_rollout.py): step t+1's rollout is
    dispatched with the weights before step t's update, so the devices generate it while the
    host scores step t; off by default (every rollout on-policy).
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
    packed: bool = False
    packed_row_len: int = 0
    async_rollout: bool = False

    def __post_init__(self):
        if self.kl not in grpo.KL_TYPES:
            raise ConfigError(f"grpo.kl={self.kl!r}; expected one of {grpo.KL_TYPES}")
        if self.agg not in grpo.AGG_MODES:
            raise ConfigError(f"grpo.agg={self.agg!r}; expected one of {grpo.AGG_MODES}")
        if self.group_size < 1:
            raise ConfigError(f"grpo.group_size={self.group_size} must be >= 1")
        if self.normalize_adv and self.group_size == 1:
            raise ConfigError("grpo.group_size=1 with grpo.normalize_adv=true: the std of a group "
                             "of one is undefined; use group_size >= 2 or normalize_adv=false")
        if self.head_remat not in ("auto", "always", "never"):
            raise ConfigError(f"grpo.head_remat={self.head_remat!r}; expected 'auto', 'always' "
                             "or 'never'")
        if self.dual_clip and self.dual_clip <= 1.0:
            raise ConfigError(f"grpo.dual_clip={self.dual_clip} must be > 1 (or 0 = off)")
        check_at_least(self, "grpo", 1, "epochs", "max_consecutive_skips", "logprob_chunk")
        check_at_least(self, "grpo", 0, "mini_batch_size", "micro_batch_size", "loss_scale_factor",
                        "packed_row_len")
