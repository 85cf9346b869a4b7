"""The LoRA hook of the GRPO and SFT jobs (`model.lora.rank > 0`): adapters on the loaded (and,
in GRPO with an `sft` section, warm-started) model, the base recorded in
RUN/checkpoints/lora.json and checked on resume (`record_base`, which train_rm's LoRA reward
model shares, jobs/train_rm.py). The adapters, their optimizer and the frozen base are
rl/lora_train.py's; the record is checkpoint/lora_io.py's.
"""

from __future__ import annotations

import os
from typing import Optional

from socialr1_jax.checkpoint import lora_io
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.jobs import run_dir
from socialr1_jax.model import build
from socialr1_jax.rl import lora_train
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.lora_train import LoraParts
from socialr1_jax.yaml_config import ConfigError


def base_path(cfg, out_dir: str) -> str:
    """The checkpoint the adapters adapt: the warm start's (RUN/warm_start) when the run has an
    `sft` section, else model.path ('' = a random preset)."""
    if cfg.sft.steps and out_dir:
        return os.path.join(out_dir, run_dir.WARM_START_DIR)
    return cfg.model.path


def adapt(cfg, model, mesh, out_dir: str, resuming: bool, *, base_dir: Optional[str] = None):
    """(graphdef, base state, adapters, LoraParts) of `model` with fresh adapters (seed
    model.seed); the base (`base_dir`, default `base_path(cfg, out_dir)`: the GRPO job's) is
    recorded in lora.json of a new run and checked against it on a resumed one (ConfigError:
    one `error:` line, for a different base). `cfg`: any job's config with a `model` section."""
    spec = cfg.model.lora.spec()
    adapted = build.with_lora(model, spec, mesh=mesh, seed=cfg.model.seed)
    graphdef, base, adapters = build.split_lora(adapted)
    if out_dir:
        record_base(cfg, base, model.cfg, out_dir, resuming,
                    base_path(cfg, out_dir) if base_dir is None else base_dir)
    return graphdef, base, adapters, LoraParts(base, adapted.cfg)


def record_base(cfg, base_state, model_cfg, out_dir: str, resuming: bool, base_dir: str, *,
                modules_to_save: tuple = ()) -> None:
    """RUN/checkpoints/lora.json of model.lora's adapters over the base `base_dir` ('' = the
    random preset whose parameters are `base_state`): written for a new run, checked on a
    resumed one (ConfigError, one `error:` line, for a different base). modules_to_save: the
    modules trained whole beside the adapters (train_rm's ('score',))."""
    root = os.path.join(out_dir, run_dir.CHECKPOINTS)
    rec = lora_io.base_record(root, base_dir, base_state,
                              preset_name=getattr(cfg.model, "preset", ""), seed=cfg.model.seed,
                              model_cfg=model_cfg)
    if resuming and os.path.isfile(os.path.join(root, lora_io.LORA_JSON)):
        try:
            lora_io.check_base(root, rec)
        except CheckpointError as e:
            raise ConfigError(f"run.resume: {e}") from None
    lora_io.write_lora_json(root, cfg.model.lora.spec(), rec, modules_to_save=modules_to_save)


def start_fns(optim, mcfg, mesh, adapters, total_updates: int):
    """(abstract TrainState, fresh TrainState) builders of a LoRA run for `Run.start`."""
    kw = {"total_updates": total_updates}
    return (lambda: lora_train.abstract_train_state(mcfg, optim, mesh, **kw),
            lambda: ts.init_train_state(adapters, optim, mesh, **kw))
