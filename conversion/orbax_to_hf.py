"""Orbax checkpoint (converted or training) -> HF safetensors directory, one tensor at a time.

    python -m conversion.orbax_to_hf --ckpt CKPT [--step N] --out DIR [--max-shard-size 5GB]
                                     [--dtype bf16|fp32] [--overwrite] [--fsync]
                                     [--allow-nonfinite] [--no-progress]
                                     [--merge-lora | --adapter-only]

A LoRA run's checkpoint (adapters over a recorded base) exports with `--merge-lora` (full HF
weights, the adapters folded in) or `--adapter-only` (a PEFT adapter directory); see
conversion/lora_export.py.

Only the `params` item of the step is read (a training checkpoint's optimizer state is left on
disk). Arrays stored as raw zarr chunks in the exported dtype (what hf_to_orbax writes) are
copied file to file by the kernel; others (OCDBT training checkpoints, --dtype casts) are read
through TensorStore one tensor at a time, the next read overlapping the current write.
Tensors are renamed and reshaped by `hf_layout.layout(cfg)` and split into shards as
transformers' save_pretrained does: a new shard when the next tensor would pass --max-shard-size,
a tensor larger than that alone in its own, `model-0000K-of-0000N.safetensors` with
`model.safetensors.index.json` when there is more than one, `model.safetensors` otherwise.
Inside a file the data starts page-aligned and whole-page tensors come before the small norm
vectors (any order is valid safetensors), which keeps the kernel's copies page-aligned.
config.json (torch_dtype = the exported dtype), generation_config.json and the tokenizer files
are copied from the checkpoint root. Every tensor is checked for NaN/Inf as it is written (the
kernel-copied ones by a background thread reading the same chunk files).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from conversion import (DATA_ALIGN, FiniteChecker, Summary, add_output_args, check_out,
                        parse_size, run_cli, staged_dir, write_safetensors)
from conversion import lora_export
from socialr1_jax import cli
from socialr1_jax.checkpoint import finite, hf_layout, lora_io
from socialr1_jax.checkpoint.errors import damaged_chunk
from socialr1_jax.checkpoint.orbax_io import (check_params, copy_side_files, PARAMS, read_config,
                                              resolve, write_json_atomic)
from socialr1_jax.model.config import parse_dtype
from socialr1_jax.checkpoint.safetensors_io import INDEX_NAME, shard_names, split_shards  # noqa: F401
from socialr1_jax.checkpoint.errors import CheckpointError




def _sources(stores, raw, entries, target, check: bool = True, where: str = ""):
    """Yield each tensor's source: its raw chunk files, or the array read through TensorStore
    (the next such read already under way), checked for NaN/Inf when `check`."""
    reads = [i for i, e in enumerate(entries) if raw[e.hf_name] is None]
    pending = {}

    def start(k):
        if k < len(reads):
            e = entries[reads[k]]
            store = stores[e.path][0]
            pending[reads[k]] = (store[e.index] if e.index else store).read()

    start(0)
    k = 0
    for i, e in enumerate(entries):
        if raw[e.hf_name] is not None:
            yield raw[e.hf_name]
            continue
        k += 1
        start(k)
        try:
            arr = np.asarray(pending.pop(i).result()).reshape(e.hf_shape)
        except ValueError as err:
            bad = damaged_chunk(err, where or "--ckpt")
            if bad is None:
                raise
            raise bad from None
        arr = arr if arr.dtype == target else arr.astype(target)
        if check:
            finite.check_array(arr, e.hf_name, where)
        yield arr


def export(ckpt: str, out: str, *, step: int | None = None, max_shard_size: str | int = "5GB",
           dtype: str | None = None, overwrite: bool = False, progress: bool = True,
           fsync: bool = False, allow_nonfinite: bool = False) -> Summary:
    """Write the params of `ckpt` (step None = latest) as an HF directory `out`; returns the summary.

    A tensor with a NaN or Inf is refused (finite.NonFiniteError naming it) unless allow_nonfinite.
    """
    from socialr1_jax.checkpoint.stream import byte_ranges, open_param_stores, raw_chunk_files

    t0 = time.perf_counter()
    try:
        limit = parse_size(max_shard_size)
    except ValueError as e:
        raise cli.UsageError(f"--max-shard-size: {e}") from None
    if not os.path.exists(ckpt):
        raise CheckpointError(f"--ckpt {ckpt}: no such checkpoint directory")
    root, step = resolve(ckpt, step)
    if lora_io.is_lora_root(root):
        raise cli.UsageError(f"--ckpt {ckpt} is a LoRA run's checkpoint (adapters only): export "
                             "it with --merge-lora (full HF weights) or --adapter-only (PEFT)")
    out = check_out(out, {"--ckpt": root}, overwrite=overwrite)
    cfg = read_config(root)
    item_dir = os.path.join(root, str(step), PARAMS)
    stores = open_param_stores(item_dir)
    check_params(cfg, item_dir, {p: m for p, (_, m) in stores.items()})
    table = hf_layout.layout(cfg)
    stored = {np.dtype(stores[e.path][1].dtype) for e in table}
    if dtype is None and len(stored) > 1:
        raise CheckpointError(f"{item_dir}: parameters are stored in several dtypes "
                              f"{sorted(map(str, stored))}; pass --dtype to export one")
    target = np.dtype(parse_dtype(dtype)) if dtype is not None else stored.pop()
    sizes = [(e.hf_name, int(np.prod(e.hf_shape)) * target.itemsize) for e in table]
    # Within a file, tensors whose sizes are whole pages first and the small norm vectors last:
    # with the page-aligned data section every large tensor then lands page-aligned.
    size_of = dict(sizes)
    groups = [sorted(g, key=lambda n: size_of[n] % DATA_ALIGN != 0)
              for g in split_shards(sizes, limit)]
    files = shard_names(len(groups))
    by_name = {e.hf_name: e for e in table}
    total = sum(s for _, s in sizes)

    bar = tqdm(total=total, unit="B", unit_scale=True, desc="orbax->hf", disable=not progress,
               file=sys.stderr)
    count = [0]

    def on_tensor(name, nbytes):
        count[0] += 1
        bar.set_postfix_str(f"{count[0]}/{len(table)} tensors", refresh=False)
        bar.update(nbytes)

    ordered = [by_name[n] for g in groups for n in g]
    raw = {}  # HF name -> [(file, offset, nbytes)] holding its bytes, or None
    for path, param in hf_layout.params(cfg).items():
        chunks = raw_chunk_files(item_dir, stores[path][1].name, param.shape, target)
        part = int(np.prod(param.entries[0].shape)) * target.itemsize
        for k, e in enumerate(param.entries):
            raw[e.hf_name] = None if chunks is None else byte_ranges(chunks, k * part, part)
    tensors = _sources(stores, raw, ordered, target, check=not allow_nonfinite, where=item_dir)
    checker = FiniteChecker(enabled=not allow_nonfinite)
    for e in ordered:  # the kernel-copied ones never pass through here: read them alongside
        if raw[e.hf_name] is not None:
            checker.add(finite.check_files, raw[e.hf_name], e.hf_shape, target, e.hf_name,
                        where=os.path.join(item_dir, stores[e.path][1].name))
    try:
        with checker, staged_dir(out, fsync=fsync) as tmp:
            for fname, group in zip(files, groups):
                specs = [(n, by_name[n].hf_shape, target) for n in group]
                write_safetensors(os.path.join(tmp, fname), specs, tensors,
                                  metadata={"format": "pt"}, on_tensor=on_tensor)
            if len(files) > 1:
                write_json_atomic(os.path.join(tmp, INDEX_NAME), {
                    "metadata": {"total_size": total, "total_parameters": cfg.num_params()},
                    "weight_map": {n: f for f, g in zip(files, groups) for n in g},
                })
            checker.wait()
            copy_side_files(root, tmp, dtype=target)
    finally:
        tensors.close()
        bar.close()
    return Summary("orbax_to_hf", len(table), total, time.perf_counter() - t0, out)


def export_merged(ckpt: str, out: str, *, step: int | None = None, overwrite: bool = False,
                  **kwargs) -> Summary:
    """Full HF weights of a LoRA run's adapted model, its adapters merged into the base weights
    (conversion/lora_export.py), at `out`; keyword arguments as `export`'s."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".merge-lora-", dir=parent)
    try:
        _, src = lora_export.merged_checkpoint(ckpt, out, tmp, step=step, overwrite=overwrite)
        return export(src, out, step=0, overwrite=overwrite, **kwargs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    """The command line (see the module docstring); errors as one `error:` line via cli.run."""
    p = cli.ArgumentParser(prog="python -m conversion.orbax_to_hf",
                           description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="Orbax checkpoint root (or one step directory)")
    p.add_argument("--step", type=int, default=None, help="step to export (default: the latest)")
    p.add_argument("--out", required=True, help="HF directory to create")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB, 2GiB")
    add_output_args(p, "export in this dtype (default: as stored)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--merge-lora", action="store_true",
                     help="a LoRA run: full HF weights with the adapters merged in")
    how.add_argument("--adapter-only", action="store_true",
                     help="a LoRA run: a PEFT adapter directory (adapter_config.json + "
                          "adapter_model.safetensors)")
    a = p.parse_args(argv)
    if a.merge_lora:
        return run_cli(lambda: export_merged(
            a.ckpt, a.out, step=a.step, dtype=a.dtype, overwrite=a.overwrite,
            max_shard_size=a.max_shard_size, progress=not a.no_progress,
            allow_nonfinite=a.allow_nonfinite), a.out)
    if a.adapter_only:
        return run_cli(lambda: lora_export.export_adapter(
            a.ckpt, a.out, step=a.step, dtype=a.dtype, overwrite=a.overwrite), a.out)
    return run_cli(lambda: export(a.ckpt, a.out, step=a.step, max_shard_size=a.max_shard_size,
                                  dtype=a.dtype, overwrite=a.overwrite,
                                  progress=not a.no_progress, fsync=a.fsync,
                                  allow_nonfinite=a.allow_nonfinite), a.out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
