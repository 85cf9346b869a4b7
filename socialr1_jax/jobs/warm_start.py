"""The GRPO job's cold start: the `sft` section run in-process on the policy before the first
GRPO step (`jobs/sft.py`'s updates), saved to RUN/warm_start and loaded from there on resume, so
a resumed run keeps the same reference model."""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.jobs.run_dir import WARM_START_DIR
from socialr1_jax.jobs.sft import SFTResult, train_sft
from socialr1_jax.jobs.sft_data import encode_pairs, warm_start_pairs
from socialr1_jax.jobs.train_config import SFTSection


def save_sft(out_dir: str, model, tokenizer, *, step: int, meta: Optional[dict] = None) -> str:
    """Write `model` as a checkpoint `load_model` reads (Orbax params + config.json) with the
    tokenizer files and generation_config.json beside it. Returns the step directory."""
    from socialr1_jax.checkpoint.orbax_io import save_checkpoint
    from socialr1_jax.rollout import tokenizer as tk

    path = save_checkpoint(out_dir, step, nnx.state(model), meta=meta, cfg=model.cfg)
    if jax.process_index() == 0:
        tk.save_tokenizer_files(out_dir, tokenizer)
    return path


def warm_start(model, tokenizer, cfg: SFTSection, *, mesh=None, prompt_cfg=None,
               log: Callable[[str], None] = print, progress: bool = False,
               stop=None, lora=None, seed: int = 0) -> SFTResult:
    """Run the `sft` section on `model` (the GRPO job's cold start): read or generate the pairs,
    encode them, `cfg.steps` updates. Errors in the data are UsageErrors naming the key.
    lora: a LoraSpec (the run's model.lora): the warm start trains adapters of that spec (drawn
    from `seed`) over the frozen model and returns the model with them merged in."""
    from socialr1_jax.rollout import tokenizer as tk

    pairs, what = warm_start_pairs(cfg.data, prompt_cfg)
    examples, dropped = encode_pairs(tokenizer, pairs, chat=cfg.data.chat,
                                     max_prompt_len=cfg.max_prompt_len,
                                     max_response_len=cfg.max_response_len,
                                     on_too_long=cfg.on_too_long)
    log(f"warm start: {len(examples)} pairs from {what}"
        + (f" ({dropped} too long, dropped)" if dropped else ""))
    if not examples:
        raise cli.UsageError(f"sft.data.path={cfg.data.path}: every pair is longer than "
                             f"sft.max_prompt_len / sft.max_response_len")
    return train_sft(model, examples, cfg, cfg.optim,
                     pad_id=tk.pad_id(tokenizer, tk.stop_tokens(tokenizer)), mesh=mesh, log=log,
                     progress=progress, stop=stop, lora=lora, seed=seed)




def warm_start_stage(model, tokenizer, cfg: SFTSection, *, mesh=None, prompt_cfg=None,
                     out_dir: str = "", log: Callable[[str], None] = print,
                     progress: bool = False, meta: Optional[dict] = None, stop=None,
                     lora=None, seed: int = 0):
    """The GRPO job's cold start: `warm_start` on `model`, saved to OUT/warm_start, or, when that
    checkpoint exists (a resumed run), loaded from it so that the resumed GRPO keeps the same
    reference model. Returns (model, SFTResult or None when loaded).

    A stop signal (`stop`) ends the warm start early: the steps done are saved as
    OUT/warm_start/<steps done>, and a resume, finding fewer than cfg.steps there, runs the
    warm start again from the start (its data order and initialisation are seeded, so the
    result is the uninterrupted one's).

    lora / seed: `warm_start`'s (a LoRA run with sft.lora=true). Such a warm start trains
    adapters and saves the model with them merged; GRPO's fresh adapters then adapt that
    checkpoint, which is also the KL reference (as a full warm start's result is), so no stage
    holds full-model optimizer state."""
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.checkpoint.orbax_io import list_steps

    root = os.path.join(out_dir, WARM_START_DIR) if out_dir else ""
    steps = list_steps(root) if root and os.path.isdir(root) else []
    if steps and steps[-1] >= cfg.steps:
        loaded = load_model(root, mesh=mesh)
        log(f"warm start: loaded {root} (step {steps[-1]})")
        return nnx.merge(nnx.graphdef(model), nnx.state(loaded)), None
    if steps:
        log(f"warm start: {root} holds {steps[-1]} of {cfg.steps} steps (stopped); running it "
            "again from the start")
    res = warm_start(model, tokenizer, cfg, mesh=mesh, prompt_cfg=prompt_cfg, log=log,
                     progress=progress, stop=stop, lora=lora, seed=seed)
    if root and res.history:
        done = len(res.history)
        save_sft(root, res.model, tokenizer, step=done,
                 meta={"loss_first": res.first_loss, "loss_last": res.last_loss,
                       "steps_done": done, "complete": done == cfg.steps, **(meta or {})})
    return res.model, res
