"""HF safetensors directory -> Orbax checkpoint root (step 0, params only), one tensor at a time.

    python -m conversion.hf_to_orbax --hf-dir DIR --out CKPT [--dtype bf16|fp32] [--overwrite]
                                     [--fsync] [--allow-nonfinite] [--no-progress]

Every tensor is checked against config.json (present, shape, dtype) before anything is written,
and for NaN/Inf while it is written (a background thread reads the bytes the kernel copies).
Parameters are renamed and reshaped by `hf_layout.layout(cfg)` (never transposed, so the bytes
are the same): Orbax and TensorStore create each array, and its chunk files are copied from the
safetensors byte ranges by the kernel (see checkpoint_stream); with --dtype each tensor is read,
cast and written through TensorStore instead, at most ~1 GB of them in memory.
config.json (torch_dtype set to the stored dtype), generation_config.json and tokenizer files are
kept beside the step. The result loads with `load_model(CKPT, mesh=...)` and the trainer's restore.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import ml_dtypes
import numpy as np
from tqdm import tqdm

from conversion import (FiniteChecker, Summary, add_output_args, check_out, read_tensor, run_cli,
                        staged_dir)
from socialr1_jax import cli
from socialr1_jax.checkpoint import finite, hf_layout
from socialr1_jax.checkpoint.orbax_io import copy_side_files, list_steps, manager, PARAMS
from socialr1_jax.model.config import dtype_name, from_hf_config, parse_dtype
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16),
                np.dtype(np.float64))


def plan(hf_dir: str, dtype: str | None = None):
    """Validate an HF directory; returns (cfg, SafetensorsDir, layout entries, stored numpy dtype).

    Refuses, naming the file and tensor: missing or extra tensors, a shape that disagrees with
    config.json, tensors whose dtype differs from config.json's (unless `dtype` casts them all).
    """
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"--hf-dir {hf_dir}: no such directory")
    try:
        cfg_probe = from_hf_config(hf_dir)
    except (ValueError, FileNotFoundError) as e:  # config.json missing or not a Qwen3 we support
        raise CheckpointError(str(e)) from None
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_cfg = json.load(f)
    declared = hf_cfg.get("torch_dtype") or hf_cfg.get("dtype")
    st = SafetensorsDir(hf_dir)
    table = hf_layout.layout(cfg_probe)
    names = set(st.keys())
    missing = [e.hf_name for e in table if e.hf_name not in names]
    if missing:
        raise CheckpointError(f"{hf_dir}: checkpoint lacks tensor(s) {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} needed by its config.json")
    known = {e.hf_name for e in table}
    extra = sorted(names - known)
    if extra:
        raise CheckpointError(f"{hf_dir}: tensor {extra[0]} in {st.file_of(extra[0])} is not part "
                              f"of a dense Qwen3 with this config.json"
                              f"{' (tie_word_embeddings is true)' if extra[0] == 'lm_head.weight' else ''}")
    dtypes = {}
    for e in table:
        shape, dt = st.info(e.hf_name)
        if tuple(shape) != e.hf_shape:
            raise CheckpointError(f"{st.file_of(e.hf_name)}: tensor {e.hf_name} has shape "
                                  f"{list(shape)}, config.json needs {list(e.hf_shape)}")
        if dt not in FLOAT_DTYPES:
            raise CheckpointError(f"{st.file_of(e.hf_name)}: tensor {e.hf_name} has dtype {dt}, "
                                  "not a floating-point weight")
        dtypes[e.hf_name] = dt
    if dtype is None:
        want = np.dtype(parse_dtype(declared)) if declared else dtypes[table[0].hf_name]
        for e in table:
            if dtypes[e.hf_name] != want:
                raise CheckpointError(
                    f"{st.file_of(e.hf_name)}: tensor {e.hf_name} is {dtypes[e.hf_name]} but "
                    f"{'config.json declares ' + str(declared) if declared else 'others are ' + str(want)}"
                    "; pass --dtype to convert every tensor to one dtype")
        target = want
    else:
        target = np.dtype(parse_dtype(dtype))
    cfg = cfg_probe.replace(param_dtype=dtype_name(target), dtype=dtype_name(target))
    return cfg, st, table, target


def _no_ocdbt_merge_note(record) -> bool:
    """Drop Orbax's warning that a raw (non-OCDBT) item has no OCDBT files to merge, and its
    log of an error in its writer threads: the same error reaches `convert`, which reports it
    (one line for a bad input, a traceback for a bug)."""
    msg = record.getMessage()
    return ("Skipping merge of OCDBT checkpoints" not in msg
            and "_SignalingThread.run() raised an exception" not in msg)


def convert(hf_dir: str, out: str, *, dtype: str | None = None, overwrite: bool = False,
            progress: bool = True, fsync: bool = False, raw_copy: bool = True,
            max_inflight_bytes: int = 1 << 30, allow_nonfinite: bool = False) -> Summary:
    """Convert `hf_dir` into the Orbax checkpoint root `out`; returns the summary.

    raw_copy=False writes every tensor through TensorStore into Orbax's default OCDBT format
    (what training checkpoints use) instead of kernel-copied raw zarr chunks. A tensor with a
    NaN or Inf is refused (finite.NonFiniteError naming it) unless allow_nonfinite.
    """
    import orbax.checkpoint as ocp

    from socialr1_jax.checkpoint.stream import Part, StreamedTensor, nest, streaming_registry

    t0 = time.perf_counter()
    hf_dir = os.path.abspath(hf_dir)
    out = check_out(out, {"--hf-dir": hf_dir}, overwrite=overwrite)
    cfg, st, table, target = plan(hf_dir, dtype)
    total = sum(int(np.prod(e.shape)) * target.itemsize for e in table)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="hf->orbax", disable=not progress,
               file=sys.stderr)
    count = [0]

    def on_written(name, nbytes):
        count[0] += 1
        bar.set_postfix_str(f"{count[0]}/{len(table)} tensors", refresh=False)
        bar.update(nbytes)

    def produce(entry):
        arr = read_tensor(st, entry.hf_name).reshape(entry.shape)
        arr = arr if arr.dtype == target else arr.astype(target)
        if not allow_nonfinite:  # after the cast: a large fp32 can become a bf16 Inf
            finite.check_array(arr, entry.hf_name, st.file_of(entry.hf_name))
        return arr

    def raw(entry):
        """Where the tensor's bytes lie, when they can be copied as they are."""
        if not raw_copy or st.info(entry.hf_name)[1] != target:
            return None
        f = st.files[st.weight_map[entry.hf_name]]
        return f.path, f.data_start + f.header[entry.hf_name]["data_offsets"][0]

    def leaf(param):
        """One of our parameters; a stacked one written one HF tensor (layer) at a time."""
        parts = [Part(e.hf_name, lambda e=e: produce(e), raw(e)) for e in param.entries]
        return StreamedTensor(param.shape, target, parts, stacked=param.stacked,
                              name=param.path if param.stacked else "", on_written=on_written)

    leaves = {path: leaf(param) for path, param in hf_layout.params(cfg).items()}
    checker = FiniteChecker(enabled=not allow_nonfinite)
    for e in table:  # kernel-copied tensors never pass through produce: read them alongside
        where = raw(e)
        if where is not None:
            checker.add(finite.check_file_range, where[0], where[1], int(np.prod(e.shape)),
                        target, e.hf_name, shape=e.hf_shape)
    try:
        with checker, staged_dir(out, fsync=fsync) as tmp:
            # Raw zarr (no OCDBT, uncompressed): each chunk a file the kernel copies from the
            # safetensors bytes. Restores read it like any Orbax item.
            handler = ocp.PyTreeCheckpointHandler(
                use_ocdbt=not raw_copy, use_compression=False,
                type_handler_registry=streaming_registry(max_inflight_bytes))
            mgr = manager(tmp, create=True, params_handler=handler)
            absl_log = logging.getLogger("absl")
            absl_log.addFilter(_no_ocdbt_merge_note)
            try:
                mgr.save(0, args=ocp.args.Composite(**{PARAMS: ocp.args.PyTreeSave(nest(leaves))}))
                mgr.wait_until_finished()
            finally:
                absl_log.removeFilter(_no_ocdbt_merge_note)
                mgr.close()
            if list_steps(tmp) != [0] or count[0] != len(table):
                raise CheckpointError(f"{tmp}: the Orbax save did not finish step 0 "
                                      f"({count[0]}/{len(table)} tensors written)")
            checker.wait()
            copy_side_files(hf_dir, tmp, dtype=target)
    finally:
        bar.close()
        st.close()
    return Summary("hf_to_orbax", len(table), total, time.perf_counter() - t0, out)


def main(argv=None) -> int:
    """The command line (see the module docstring); errors as one `error:` line via cli.run."""
    p = cli.ArgumentParser(prog="python -m conversion.hf_to_orbax",
                           description=__doc__.splitlines()[0])
    p.add_argument("--hf-dir", required=True, help="HF directory: config.json + safetensors")
    p.add_argument("--out", required=True, help="Orbax checkpoint root to create")
    add_output_args(p, "store parameters in this dtype (default: the checkpoint's own)")
    a = p.parse_args(argv)
    return run_cli(lambda: convert(a.hf_dir, a.out, dtype=a.dtype, overwrite=a.overwrite,
                                   progress=not a.no_progress, fsync=a.fsync,
                                   allow_nonfinite=a.allow_nonfinite), a.out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
