"""The optimizer every trainer uses (GRPO, SFT, the reward model): AdamW after global-norm
clipping, on a linear warm-up then constant or cosine learning-rate schedule.

Every value (lr, schedule, warm-up, betas, eps, weight decay, clipping norm) is a field of
`OptimConfig`. The moments are kept in `OptimConfig.master_dtype` (fp32 by default), like the
master copy of the weights.
"""

from __future__ import annotations

import optax

from socialr1_jax.model.config import parse_dtype
from socialr1_jax.rl.config import OptimConfig


def make_schedule(cfg: OptimConfig, total_updates: int):
    """lr(step): linear warm-up from 0 over warmup_steps, then constant or cosine decay."""
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    else:
        decay = max((cfg.decay_steps or total_updates) - cfg.warmup_steps, 1)
        main = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.min_lr_ratio)
    if cfg.warmup_steps <= 0:
        return main
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, main], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, total_updates: int):
    """(optax AdamW with global-norm clipping, its lr schedule)."""
    schedule = make_schedule(cfg, total_updates)
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay,
                             mu_dtype=parse_dtype(cfg.master_dtype)))
    return optax.chain(*parts), schedule
