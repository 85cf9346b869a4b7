"""Exports of a LoRA run's checkpoint (adapters over a recorded base, see checkpoint/lora_io.py):

- `--merge-lora`: full HF weights, every adapter folded into its base weight
  (W + (alpha / r) B A, Hu et al. 2021, computed in fp32), written by `orbax_to_hf.export`;
- `--adapter-only`: a Hugging Face PEFT adapter directory (adapter_config.json +
  adapter_model.safetensors) that `peft.PeftModel.from_pretrained` loads over the base.
"""

from __future__ import annotations

import os
import time

from conversion import Summary, check_out
from socialr1_jax import cli
from socialr1_jax.checkpoint import lora_io, orbax_io
from socialr1_jax.checkpoint.loading import load_lora_model
from socialr1_jax.model.config import parse_dtype


def _adapted(ckpt: str, step, flag: str):
    if not os.path.exists(ckpt):
        raise cli.UsageError(f"--ckpt {ckpt}: no such checkpoint directory")
    ckpt = orbax_io.run_checkpoints(ckpt)  # a run folder: its checkpoints/
    if not lora_io.is_lora_root(ckpt):
        raise cli.UsageError(f"{flag}: --ckpt {ckpt} has no LoRA adapters (no "
                             f"{lora_io.LORA_JSON}); export it without {flag}")
    root = lora_io._root_of(ckpt)
    return root, load_lora_model(ckpt, step=step)


def merged_checkpoint(ckpt: str, out: str, tmp: str, *, step=None, overwrite: bool = False):
    """(the LoRA run's root, an Orbax root under `tmp` holding the adapted model with its
    adapters merged, plus the run's side files) for `orbax_to_hf.export` to write as HF."""
    root, model = _adapted(ckpt, step, "--merge-lora")
    check_out(out, {"--ckpt": root}, overwrite=overwrite)
    merged = lora_io.merged_model(model)
    src = orbax_io.save_checkpoint(os.path.join(tmp, "ckpt"), 0, _state(merged), cfg=merged.cfg)
    orbax_io.copy_side_files(root, os.path.dirname(src), only_missing=True)
    return root, os.path.dirname(src)


def _state(model):
    from flax import nnx
    return nnx.state(model)


def export_adapter(ckpt: str, out: str, *, step=None, dtype=None, overwrite: bool = False):
    """A PEFT adapter directory of the run's adapters at `out`."""
    t0 = time.perf_counter()
    root, model = _adapted(ckpt, step, "--adapter-only")
    out = check_out(out, {"--ckpt": root}, overwrite=overwrite)
    base = lora_io.read_lora_json(root)["base"]
    lora_io.save_adapter(model, out, base_path=base.get("path") or base.get("preset", ""),
                         dtype=None if dtype is None else parse_dtype(dtype))
    size = os.path.getsize(os.path.join(out, lora_io.PEFT_WEIGHTS))
    n = 2 * len(model.cfg.lora.targets) * model.cfg.num_layers
    return Summary("orbax_to_peft", n, size, time.perf_counter() - t0, out)
