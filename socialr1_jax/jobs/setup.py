"""What the three training jobs set up alike: the mesh, the initial policy and the tokenizer.

Each check fails with one `error:` line naming the config key (`mesh.tensor=8: ...`,
`model.path=...: ...`, `model.tokenizer=...: ...`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.rollout.tokenizer import load_tokenizer
from socialr1_jax.yaml_config import ConfigError


def build_mesh(cfg):
    """The run's (data, fsdp, tensor) mesh over every visible device (`cfg.mesh`)."""
    from socialr1_jax.parallel.sharding import make_mesh

    m = cfg.mesh
    m.check_devices(jax.device_count())
    return make_mesh(m.data, m.fsdp or None, m.tensor)


def check_fits_mesh(model_cfg, mesh) -> None:
    """Refuse a tensor size that does not divide the model's heads, worded as evaluate's and
    generate's `--mesh` error but naming the config key."""
    from socialr1_jax.parallel.sharding import check_model_fits_mesh

    sizes = mesh if isinstance(mesh, dict) else mesh.shape
    try:
        check_model_fits_mesh(model_cfg, sizes)
    except ValueError as e:
        raise ConfigError(f"mesh.tensor={sizes['tensor']}: {e}") from None


def check_mesh_fits_model(cfg) -> None:
    """`check_fits_mesh` before anything is built or created (the run directory included): the
    preset's config, or model.path's config.json (one that cannot be read is left to
    `load_policy`, which names what is wrong with it)."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.model.config import from_hf_config

    sec = cfg.model
    if not sec.path:
        if not hasattr(sec, "preset_config"):
            return
        model_cfg = sec.preset_config()
    else:
        try:
            path = orbax_io.run_checkpoints(sec.path)
            root = orbax_io.resolve(path)[0] if orbax_io.is_orbax_checkpoint(path) else path
            model_cfg = from_hf_config(os.path.join(root, "config.json"))
        except (OSError, ValueError):
            return
    check_fits_mesh(model_cfg, {"tensor": cfg.mesh.tensor})


def load_policy(cfg, mesh):
    """The initial policy: a checkpoint (model.path) or a random preset, sharded on `mesh`."""
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.model.build import abstract_model, create_model

    sec = cfg.model
    if not sec.path:
        mcfg = sec.preset_config()
        check_fits_mesh(mcfg, mesh)
        return create_model(mcfg, mesh=mesh, seed=sec.seed)
    try:
        model = load_model(sec.path, dtype=sec.param_dtype or None, mesh=mesh)
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError
        raise cli.UsageError(f"model.path={sec.path}: {e}") from None
    mcfg = model.cfg.replace(remat=sec.remat, matmul_precision=sec.matmul_precision,
                             **({"dtype": sec.dtype} if sec.dtype else {}))
    if mcfg != model.cfg:  # same parameters, different static settings
        model = nnx.merge(nnx.graphdef(abstract_model(mcfg)), nnx.state(model))
    return model


def run_tokenizer(model_section):
    """The tokenizer of a run's `model` section: `model.tokenizer` = 'demo' (the offline demo
    tokenizer), a directory with tokenizer files, or '' for the checkpoint's own (model.path)."""
    from socialr1_jax.social.demo_tokenizer import demo_tokenizer

    name = getattr(model_section, "tokenizer", "") or ""
    if name == "demo":
        return demo_tokenizer()
    from socialr1_jax.checkpoint.orbax_io import run_checkpoints

    path = run_checkpoints(name or model_section.path)  # a run folder: its checkpoints/
    if not path:
        raise cli.UsageError("model.tokenizer is required when the model is a preset "
                             "(model.tokenizer=demo for the offline demo tokenizer, or a "
                             "directory with tokenizer.json)")
    try:
        return load_tokenizer(path)
    except (FileNotFoundError, OSError) as e:
        key = "model.tokenizer" if name else "model.path"
        raise cli.UsageError(f"{key}={path}: {e}") from None


def broadcast_str(text: str) -> str:
    """Process 0's `text` on every process."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    buf = np.zeros(4096, np.uint8)
    raw = text.encode()[:4096]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out[out != 0]).decode()
