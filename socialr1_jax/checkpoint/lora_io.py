"""Checkpoints of LoRA runs: the adapters beside a record of the base they adapt, and PEFT's
adapter format (Hugging Face PEFT's `adapter_config.json` + `adapter_model.safetensors`).

A LoRA run's root `RUN/checkpoints` is a training root (train_checkpoint.py) whose `params`
item holds the adapters only ({'lora': ...}), plus `lora.json`:

    {"rank", "alpha", "target_modules", "dropout" (training only; absent = 0),
     "base": {"path": the base checkpoint (relative to the root when inside the run directory),
              "preset", "seed", "param_dtype", "dtype" (a random preset base: no path),
              "hash": sha256 of the base checkpoint's files (or of a preset's parameters)},
     "modules_to_save": ["score"] (a LoRA reward model of train_rm only: its `params` item
              holds the adapters and the whole head, {'backbone': {'lora'}, 'score_cd'}, as
              PEFT's modules_to_save keeps a sequence classifier's head; rm_io loads it)}

`load_lora_model` rebuilds the adapted model from that record (`load_model` of such a root
calls it), so generate, evaluate and serve run the adapted model. The hash is checked on resume
and on load: a different base is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx

from socialr1_jax.checkpoint import orbax_io
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.model import build, lora


LORA_JSON = "lora.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def is_lora_root(path: str) -> bool:
    """Whether `path` (a checkpoint root or one of its step directories) is a LoRA run's."""
    return _root_of(path) is not None


def _root_of(path: str) -> Optional[str]:
    path = os.path.abspath(path)
    for root in (path, os.path.dirname(path)):
        if os.path.isfile(os.path.join(root, LORA_JSON)):
            return root
    return None


def content_hash(path: str) -> str:
    """sha256 over every file under `path` (relative names and bytes, in sorted order)."""
    h = hashlib.sha256()
    files = []
    for d, _, names in os.walk(path):
        files += [os.path.join(d, n) for n in names]
    for f in sorted(files):
        h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def params_hash(state) -> str:
    """sha256 of a parameter state's arrays (a random preset base, which has no files).
    On several processes a collective: every process must call it (each gets the whole)."""
    from socialr1_jax.parallel import distributed

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(state), key=lambda x: str(x[0])):
        h.update(str(path).encode())
        # A leaf sharded over other processes' devices cannot be fetched alone: gathered.
        whole = (distributed.gather(leaf) if isinstance(leaf, jax.Array)
                 and not leaf.is_fully_addressable else jax.device_get(leaf))
        h.update(np.ascontiguousarray(whole).tobytes())
    return "sha256:" + h.hexdigest()


def base_record(root: str, path: str, base_state=None, *, preset_name: str = "", seed: int = 0,
                model_cfg=None) -> dict:
    """The `base` entry of lora.json for a base at `path` ('' = a random preset: `base_state`
    is then hashed and the preset, seed and dtypes recorded to rebuild it)."""
    if path:
        p = os.path.abspath(path)
        rel = os.path.relpath(p, os.path.dirname(os.path.abspath(root)))
        return {"path": rel if not rel.startswith("..") else p, "hash": content_hash(p)}
    return {"preset": preset_name, "seed": seed, "vocab_size": model_cfg.vocab_size,
            "param_dtype": model_cfg.param_dtype, "dtype": model_cfg.dtype,
            "hash": params_hash(base_state)}


def write_lora_json(root: str, spec: lora.LoraSpec, base: dict, *,
                    modules_to_save: tuple = ()) -> None:
    """RUN/checkpoints/lora.json (process 0), kept when it exists (resume checks it instead).
    modules_to_save: modules trained whole beside the adapters (a reward model's ('score',))."""
    path = os.path.join(root, LORA_JSON)
    if jax.process_index() != 0 or os.path.exists(path):
        return
    os.makedirs(root, exist_ok=True)
    rec = {"rank": spec.rank, "alpha": spec.alpha, "target_modules": list(spec.targets),
           "dropout": spec.dropout, "base": base}
    if modules_to_save:
        rec["modules_to_save"] = list(modules_to_save)
    orbax_io.write_json_atomic(path, rec)


def read_lora_json(root: str) -> dict:
    path = os.path.join(root, LORA_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def check_base(root: str, base: dict) -> None:
    """CheckpointError unless `base` (a `base_record`) has the hash lora.json recorded."""
    rec = read_lora_json(root).get("base", {})
    if rec.get("hash") != base.get("hash"):
        raise CheckpointError(
            f"{os.path.join(root, LORA_JSON)}: the adapters were trained on base "
            f"{rec.get('path') or rec.get('preset')} ({rec.get('hash', '?')[:19]}), this run's "
            f"base {base.get('path') or base.get('preset')} has {base.get('hash', '?')[:19]}: "
            "a different base checkpoint")


def is_reward_lora(path: str) -> bool:
    """Whether `path` (a root or step directory) is a LoRA reward model's (train_rm): its
    lora.json saves the score head beside the adapters."""
    root = _root_of(path)
    return root is not None and "score" in (read_lora_json(root).get("modules_to_save") or [])


def base_dir(root: str) -> str:
    """The base checkpoint directory lora.json names (a path relative to the run directory is
    resolved), checked to exist and to have the recorded hash (CheckpointError)."""
    path = read_lora_json(root)["base"].get("path") or ""
    path = path if os.path.isabs(path) else os.path.join(os.path.dirname(root), path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{os.path.join(root, LORA_JSON)}: base checkpoint {path} "
                              "does not exist")
    check_base(root, {"path": path, "hash": content_hash(path)})
    return path


def spec_of(root: str) -> lora.LoraSpec:
    rec = read_lora_json(root)
    return lora.parse_spec(int(rec["rank"]), rec["alpha"], rec["target_modules"],
                           rec.get("dropout", 0.0), key=os.path.join(root, LORA_JSON))


# -- exports -------------------------------------------------------------------------------

def _module_path(target: str) -> str:
    return ("self_attn." if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + target


def peft_tensors(model) -> dict[str, np.ndarray]:
    """{PEFT tensor name: host array [r, in] (lora_A) / [out, r] (lora_B)} of an adapted model,
    named as `PeftModel.save_pretrained` names a Qwen3ForCausalLM's adapters."""
    spec, ad = model.cfg.lora, model.lora
    out = {}
    for t, a_name, b_name in zip(spec.targets, spec.names()[::2], spec.names()[1::2]):
        a, b = (np.asarray(jax.device_get(getattr(ad, n)[...])) for n in (a_name, b_name))
        for i in range(model.cfg.num_layers):
            name = f"base_model.model.model.layers.{i}.{_module_path(t)}"
            out[f"{name}.lora_A.weight"] = a[i]
            out[f"{name}.lora_B.weight"] = b[i]
    return out


def peft_config(spec: lora.LoraSpec, base_path: str = "") -> dict:
    """PEFT's adapter_config.json of a LoraSpec (plain LoRA: no bias, rsLoRA or DoRA; the
    training's lora_dropout, which PEFT applies in training mode only)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
            "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": list(spec.targets), "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "inference_mode": True, "modules_to_save": None}


def save_adapter(model, out: str, *, base_path: str = "", dtype=None) -> str:
    """Write an adapted model's adapters as a PEFT adapter directory `out`."""
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    tensors = peft_tensors(model)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, PEFT_WEIGHTS), metadata={"format": "pt"})
    orbax_io.write_json_atomic(os.path.join(out, PEFT_CONFIG),
                               peft_config(model.cfg.lora, base_path))
    return out


def merged_model(model):
    """The adapted model with every adapter folded into its base weight (W + s B A, computed in
    fp32 and stored in the parameter dtype): a plain Qwen3 without adapters."""
    spec, cfg = model.cfg.lora, model.cfg
    plain = cfg.replace(lora=None)
    graphdef, _ = nnx.split(build.abstract_model(plain))
    _, base, _ = build.split_lora(model)
    base = jax.tree.map(lambda x: x, base)
    for t, a_name, b_name in zip(spec.targets, spec.names()[::2], spec.names()[1::2]):
        w_name = lora.TARGETS[t][1]
        w = base["layers"][w_name]
        a, b = getattr(model.lora, a_name)[...], getattr(model.lora, b_name)[...]
        merged = jax.vmap(lambda w_, a_, b_: lora.merged_weight(cfg, t, w_, a_, b_))(w[...], a, b)
        base["layers"][w_name] = w.replace(merged.astype(w[...].dtype))
    return nnx.merge(graphdef, base)
