"""Reward-model checkpoints: HF `Qwen3ForSequenceClassification` directories and our Orbax ones.

The HF layout is `hf_layout`'s table for the backbone (tensors `model.*`, no `lm_head`) plus one
entry, `score.weight` [1, D] <-> our `score_cd` (`layout` below extends the table; it does not
change it). Our parameter paths are those of `RewardModel`: `backbone/<hf_layout path>` and
`score_cd`.

    load_reward_model(path, ...)    an HF directory or an Orbax checkpoint of a reward model
    init_reward_model(path, ...)    the same, or a causal LM (HF or Orbax) with a new random head
                                    (how a reward model's training starts from Qwen3)
    save_hf(rm, out, ...)           an HF directory transformers loads as
                                    Qwen3ForSequenceClassification (same scores)
    save_reward_model(root, step, rm, ...), restore_reward_model(root, ...)
                                    Orbax: CKPT/config.json (the sequence-classification config,
                                    with pad_token_id), tokenizer files, CKPT/<step>/params
                                    {"backbone": {...}, "score_cd": ...} (+ meta). A training
                                    checkpoint of train_rm (train_checkpoint.py: params +
                                    train_state + meta) has this layout too and loads the same.
                                    A LoRA train_rm run's root (lora.json, params = adapters +
                                    head) loads as its base with them (not merged); save_hf
                                    writes it merged.

Every tensor is checked (presence, shape) before any is used; errors name the file and tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from socialr1_jax.checkpoint import hf_layout, lora_io, orbax_io
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.loading import assemble_state, load_model
from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir, write_file
from socialr1_jax.model.config import ModelConfig, dtype_name, from_hf_config, parse_dtype
from socialr1_jax.model.reward_model import (RewardModel, backbone_config, from_parts,
                                             reward_model_shardings)
from socialr1_jax.parallel.sharding import path_str

log = logging.getLogger(__name__)

SEQ_CLS_ARCH = "Qwen3ForSequenceClassification"
SCORE_NAME = "score.weight"
SCORE_PATH = "score_cd"
BACKBONE = "backbone"


# ----------------------------------------------------------------------------- layout
def layout(cfg: ModelConfig) -> list[hf_layout.Entry]:
    """Every HF tensor of a Qwen3ForSequenceClassification of this config, in checkpoint
    order, with its path inside `RewardModel`: the backbone's table (tied, so no lm_head) under
    `backbone/`, then `score.weight`."""
    base = hf_layout.layout(backbone_config(cfg))
    out = [dataclasses.replace(e, path=f"{BACKBONE}/{e.path}") for e in base]
    norm = base[-1]
    assert norm.hf_name == "model.norm.weight", norm  # a whole tensor: the head's template
    d = cfg.hidden_size
    out.append(dataclasses.replace(norm, hf_name=SCORE_NAME, path=SCORE_PATH, shape=(1, d),
                                   hf_shape=(1, d)))
    return out


def _slice(array, entry: hf_layout.Entry):
    """The HF tensor `entry` inside our parameter `array` (a layer slice when stacked)."""
    index = getattr(entry, "index", ())
    return array[index] if index else array


# ----------------------------------------------------------------------------- configs
def read_hf_config(path: str) -> dict:
    """config.json of a checkpoint directory (HF or Orbax root) as a dict."""
    f = os.path.join(path, "config.json")
    try:
        with open(f) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None


def is_reward_checkpoint(path: str) -> bool:
    """True when `path` holds a reward model (its config.json names Qwen3ForSequenceClassification,
    or its safetensors hold score.weight), False for a causal LM."""
    path = os.fspath(path)
    root = path
    if orbax_io.is_orbax_checkpoint(path):
        root, _ = orbax_io.resolve(path)
    if SEQ_CLS_ARCH in (read_hf_config(root).get("architectures") or []):
        return True
    if root == path and not orbax_io.is_orbax_checkpoint(path):
        return SCORE_NAME in SafetensorsDir(path).keys()
    return False


def resolve_pad_id(path: str, override: int = -1, tokenizer=None) -> int:
    """The pad id a reward model pools with: `override` when >= 0, else config.json's
    pad_token_id, else the tokenizer's (what transformers' trainers copy into the config)."""
    if override is not None and override >= 0:
        return int(override)
    root = orbax_io.resolve(path)[0] if orbax_io.is_orbax_checkpoint(path) else path
    pad = read_hf_config(root).get("pad_token_id")
    if pad is not None:
        return int(pad)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        log.info("%s: config.json has no pad_token_id; using the tokenizer's (%d)", path,
                 tokenizer.pad_token_id)
        return int(tokenizer.pad_token_id)
    raise CheckpointError(f"{path}: config.json has no pad_token_id and no tokenizer names one; "
                          "set pad_token_id in the config")


def hf_config(rm: RewardModel, dtype=None) -> dict:
    """config.json of a reward model as transformers' Qwen3ForSequenceClassification reads it."""
    cfg = rm.cfg if dtype is None else rm.cfg.replace(param_dtype=dtype_name(parse_dtype(dtype)))
    out = cfg.to_hf_config()
    out.update(architectures=[SEQ_CLS_ARCH], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
               pad_token_id=rm.pad_token_id,
               tie_word_embeddings=False)  # no LM head at all: nothing to tie
    return out


# ----------------------------------------------------------------------------- HF
def _new_head(cfg: ModelConfig, pad_token_id: int, mesh: Optional[Mesh],
              host: np.ndarray) -> jax.Array:
    """The head [1, D] from a host array, in its dtype and sharding on `mesh`."""
    _, abstract, shardings = reward_model_shardings(cfg, pad_token_id, mesh)
    leaf = nnx.to_pure_dict(abstract)[SCORE_PATH]
    sharding = (nnx.to_pure_dict(shardings)[SCORE_PATH] if shardings is not None
                else SingleDeviceSharding(jax.local_devices()[0]))
    return jax.make_array_from_callback(
        tuple(leaf.shape), sharding,
        lambda index: np.asarray(host[index]).astype(leaf.dtype, copy=False))


def load_hf_reward_model(path: str, *, dtype: Optional[str] = None, mesh: Optional[Mesh] = None,
                         pad_token_id: Optional[int] = None) -> RewardModel:
    """An HF Qwen3ForSequenceClassification directory (num_labels=1), torch-free, sharded."""
    cfg = from_hf_config(path, param_dtype=dtype, dtype=dtype)
    pad = resolve_pad_id(path, -1 if pad_token_id is None else pad_token_id)
    st = SafetensorsDir(path)
    try:
        table = {e.hf_name: e for e in layout(cfg)}
        names = set(st.keys())
        missing = [n for n in table if n not in names]
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks tensor(s) {missing[:5]}"
                                  f"{' ...' if len(missing) > 5 else ''} of a "
                                  f"{SEQ_CLS_ARCH} with its config.json")
        extra = sorted(names - set(table))
        if extra:
            raise CheckpointError(f"{path}: tensor(s) {extra[:5]} in {st.file_of(extra[0])} are "
                                  f"not part of a {SEQ_CLS_ARCH} with this config.json")
        for name, e in table.items():
            shape, _ = st.info(name)
            if tuple(shape) != e.hf_shape:
                hint = (f" (num_labels={shape[0]}; a scalar reward model has 1)"
                        if name == SCORE_NAME and len(shape) == 2 else "")
                raise CheckpointError(f"{st.file_of(name)}: tensor {name} has shape "
                                      f"{list(shape)}, config.json needs {list(e.hf_shape)}{hint}")
        backbone = assemble_state(backbone_config(cfg), mesh,
                                  lambda e: st.get(e.hf_name).reshape(e.shape), where=path)
        score = _new_head(cfg, pad, mesh, st.get(SCORE_NAME))
    finally:
        st.close()
    return from_parts(backbone, score, pad)


def merged_reward_model(rm: RewardModel) -> RewardModel:
    """`rm` with its backbone's adapters folded into the weights (W + s B A in fp32, stored in
    the parameter dtype; `lora_io.merged_model`) and the same head: a plain reward model. A
    model without adapters is returned as it is."""
    if rm.cfg.lora is None:
        return rm
    return from_parts(lora_io.merged_model(rm.backbone), rm.score_cd[...], rm.pad_token_id)


def _host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_hf(rm: RewardModel, out: str, *, dtype: Optional[str] = None,
            side_files_from: Optional[str] = None, max_shard_size: str | int = "5GB",
            overwrite: bool = False) -> str:
    """Write `rm` as an HF Qwen3ForSequenceClassification directory `out` (built in a temporary
    directory renamed into place when whole), one tensor in host memory at a time.

    dtype: the stored dtype (default: the parameters'). side_files_from: a directory whose
    tokenizer and generation files are copied. A LoRA reward model is written merged
    (`merged_reward_model`). Returns `out`.
    """
    from socialr1_jax.checkpoint.safetensors_io import parse_size, shard_names, split_shards
    from socialr1_jax.checkpoint.staging import staged_dir

    rm = merged_reward_model(rm)

    flat = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(rm))}
    target = np.dtype(parse_dtype(dtype or rm.cfg.param_dtype))
    table = layout(rm.cfg)
    sizes = [(e.hf_name, int(np.prod(e.hf_shape)) * target.itemsize) for e in table]
    groups = split_shards(sizes, parse_size(max_shard_size))
    files = shard_names(len(groups))
    by_name = {e.hf_name: e for e in table}
    writer = jax.process_index() == 0

    def tensors(names):
        for name in names:
            e = by_name[name]
            host = _host(_slice(flat[e.path], e)).reshape(e.hf_shape)
            yield host.astype(target, copy=False)

    def write(tmp):
        for fname, names in zip(files, groups):
            specs = [(n, by_name[n].hf_shape, target) for n in names]
            if writer:
                write_file(os.path.join(tmp, fname), specs, tensors(names),
                           metadata={"format": "pt"})
            else:  # every process joins the gathers; only the first writes
                for _ in tensors(names):
                    pass
        if not writer:
            return
        if side_files_from:
            orbax_io.copy_side_files(side_files_from, tmp)
        if len(files) > 1:
            from socialr1_jax.checkpoint.safetensors_io import INDEX_NAME
            weight_map = {n: f for f, names in zip(files, groups) for n in names}
            orbax_io.write_json_atomic(os.path.join(tmp, INDEX_NAME), {
                "metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map})
        orbax_io.write_json_atomic(os.path.join(tmp, "config.json"), hf_config(rm, target))

    if not writer:
        write(None)
        return os.path.abspath(out)
    with staged_dir(out, overwrite=overwrite) as tmp:
        write(tmp)
    return os.path.abspath(out)


# ----------------------------------------------------------------------------- Orbax
def save_reward_model(root: str, step: int, rm: RewardModel, meta: Optional[dict] = None, *,
                      side_files_from: Optional[str] = None,
                      max_to_keep: Optional[int] = None) -> str:
    """One step of a reward model under an Orbax root (params, and meta when given).

    The root's config.json is the sequence-classification config (written if missing, before the
    tokenizer files of `side_files_from` are copied beside it). Returns the step directory.
    """
    root = os.path.abspath(os.fspath(root))
    if jax.process_index() == 0:
        os.makedirs(root, exist_ok=True)
        if not os.path.exists(os.path.join(root, "config.json")):
            orbax_io.write_json_atomic(os.path.join(root, "config.json"), hf_config(rm))
        if side_files_from:
            orbax_io.copy_side_files(side_files_from, root, only_missing=True)
    return orbax_io.save_checkpoint(root, step, nnx.state(rm), None, meta,
                                    max_to_keep=max_to_keep)


@dataclasses.dataclass
class RestoredRM:
    """What `restore_reward_model` returns."""

    model: RewardModel
    step: int
    meta: Optional[dict]


def _restore_args(abstract, shardings):
    import orbax.checkpoint as ocp

    device = jax.local_devices()[0]
    return jax.tree.map(
        lambda leaf, s: ocp.ArrayRestoreArgs(sharding=s or SingleDeviceSharding(device),
                                             dtype=leaf.dtype, global_shape=tuple(leaf.shape)),
        abstract, shardings)


def restore_reward_model(path: str, step: Optional[int] = None, *, dtype: Optional[str] = None,
                         mesh: Optional[Mesh] = None,
                         pad_token_id: Optional[int] = None) -> RestoredRM:
    """A reward model from our Orbax checkpoint (root: latest step, or a step directory), every
    array read straight into its sharding on `mesh` (a training checkpoint's other items are not
    read). A LoRA run's root (lora.json) is `restore_lora_reward_model`'s."""
    from socialr1_jax.checkpoint.stream import item_metadata

    root, step = orbax_io.resolve(path, step)
    hf = read_hf_config(root)
    if SEQ_CLS_ARCH not in (hf.get("architectures") or []):
        raise CheckpointError(f"{root}: config.json describes {hf.get('architectures')}, not a "
                              f"{SEQ_CLS_ARCH} (train one with python -m socialr1_jax.train_rm)")
    if lora_io.is_reward_lora(root):
        return restore_lora_reward_model(root, step, dtype=dtype, mesh=mesh,
                                         pad_token_id=pad_token_id)
    cfg = orbax_io.read_config(root, dtype=dtype)
    pad = resolve_pad_id(root, -1 if pad_token_id is None else pad_token_id)
    graphdef, abstract, shardings = reward_model_shardings(cfg, pad, mesh)
    item_dir = os.path.join(root, str(step), orbax_io.PARAMS)
    metas, _ = item_metadata(item_dir)
    want = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    missing = sorted(set(want) - set(metas))
    extra = sorted(set(metas) - set(want))
    if missing or extra:
        raise CheckpointError(f"{item_dir}: parameters do not match {root}/config.json (missing "
                              f"{missing[:5]}, unexpected {extra[:5]})")
    for p, shape in want.items():
        if tuple(metas[p].shape) != shape:
            raise CheckpointError(f"{item_dir}: parameter {p} has shape {list(metas[p].shape)}, "
                                  f"config.json needs {list(shape)}")
    target = nnx.to_pure_dict(abstract)
    shard_tree = (nnx.to_pure_dict(shardings) if shardings is not None
                  else jax.tree.map(lambda _: None, target))
    params, meta = _read_step(root, step, target, _restore_args(target, shard_tree))
    nnx.replace_by_pure_dict(abstract, params)
    return RestoredRM(nnx.merge(graphdef, abstract), step, meta)


def _read_step(root: str, step: int, target, restore_args):
    """(params item, meta item or None) of one step; a training checkpoint's other items (the
    optimizer state) are not read."""
    import orbax.checkpoint as ocp

    items = {orbax_io.PARAMS: ocp.args.PyTreeRestore(item=target, restore_args=restore_args)}
    if os.path.isdir(os.path.join(root, str(step), orbax_io.META)):
        items[orbax_io.META] = ocp.args.JsonRestore()
    mgr = orbax_io.manager(root)
    try:
        out = mgr.restore(step, args=ocp.args.Composite(**items))
    finally:
        mgr.close()
    return out[orbax_io.PARAMS], (out[orbax_io.META] if orbax_io.META in items else None)


def restore_lora_reward_model(root: str, step: int, *, dtype: Optional[str] = None,
                              mesh: Optional[Mesh] = None,
                              pad_token_id: Optional[int] = None) -> RestoredRM:
    """The adapted reward model of a LoRA train_rm run (its root's lora.json saves the score
    head): the base lora.json names (its hash checked; a causal LM or a reward model, loaded as
    `init_reward_model` loads it) with the step's adapters and head. Not merged: it scores
    exactly as the training's model did."""
    from socialr1_jax.model.reward_model import split_lora, with_lora

    base_path = lora_io.base_dir(root)
    pad = resolve_pad_id(root, -1 if pad_token_id is None else pad_token_id)
    base, _ = init_reward_model(base_path, pad_token_id=pad, dtype=dtype, mesh=mesh)
    graphdef, frozen, trainable = split_lora(with_lora(base, lora_io.spec_of(root), mesh=mesh))
    target = nnx.to_pure_dict(trainable)
    shard_tree = jax.tree.map(lambda x: x.sharding if mesh is not None else None, target)
    params, meta = _read_step(root, step, target, _restore_args(target, shard_tree))
    nnx.replace_by_pure_dict(trainable, params)
    return RestoredRM(nnx.merge(graphdef, frozen, trainable), step, meta)


# ----------------------------------------------------------------------------- entry points
def load_reward_model(path: str, *, dtype: Optional[str] = None, mesh: Optional[Mesh] = None,
                      pad_token_id: Optional[int] = None) -> RewardModel:
    """A trained reward model from an HF Qwen3ForSequenceClassification directory or our Orbax
    checkpoint. A causal LM (no reward head) is refused: its scores would be noise."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not is_reward_checkpoint(path):
        raise CheckpointError(f"{path}: a causal LM checkpoint without a reward head "
                              f"({SEQ_CLS_ARCH} / {SCORE_NAME}); train one with "
                              "python -m socialr1_jax.train_rm")
    if orbax_io.is_orbax_checkpoint(path):
        return restore_reward_model(path, dtype=dtype, mesh=mesh, pad_token_id=pad_token_id).model
    return load_hf_reward_model(path, dtype=dtype, mesh=mesh, pad_token_id=pad_token_id)


def init_reward_model(path: str, *, pad_token_id: int, dtype: Optional[str] = None,
                      mesh: Optional[Mesh] = None, seed: int = 0) -> tuple[RewardModel, bool]:
    """(model, True) for a reward-model checkpoint, or (a causal LM's backbone with a new head
    drawn from normal(init_std) as transformers initialises it, False)."""
    if is_reward_checkpoint(path):
        return load_reward_model(path, dtype=dtype, mesh=mesh, pad_token_id=pad_token_id), True
    backbone = load_model(path, dtype=dtype, mesh=mesh)
    cfg = backbone.cfg
    rng = np.random.default_rng(seed)
    head = (cfg.init_std * rng.standard_normal((1, cfg.hidden_size))).astype(np.float32)
    return from_parts(backbone, _new_head(cfg, pad_token_id, mesh, head), pad_token_id), False
