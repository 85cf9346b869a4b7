"""Converters between HF safetensors directories and our Orbax checkpoints (both ways exact).

    python -m conversion.hf_to_orbax --hf-dir DIR --out CKPT [--dtype bf16|fp32] [--overwrite]
    python -m conversion.orbax_to_hf --ckpt CKPT [--step N] --out DIR [--max-shard-size 5GB]
                                     [--dtype bf16|fp32] [--overwrite]
    (both also take --fsync: flush the output to disk before it is renamed into place)

Both stream one tensor at a time (tensor bytes copied file to file by the kernel when no cast is
needed) and build their output in `OUT.tmp-*`, renamed to OUT only when complete, so an
interrupted run never leaves a directory that looks like a checkpoint. This module holds what both
share: the staged output directory, sizes, reads, the safetensors writer and the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import struct
import sys

import numpy as np

from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.safetensors_io import _header_bytes, SafetensorsDir

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, 1000 -> 1000 (units as huggingface_hub reads them)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"size {size!r}: expected a number with a unit such as 5GB, 500MB, 2GiB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"size {size!r} must be positive")
    return value


def fsync_tree(path: str) -> None:
    """fsync every file and directory under `path` (and `path` itself)."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_dir(out: str, *, overwrite: bool, fsync: bool = False):
    """Yield a fresh `OUT.tmp-*` directory; on success it becomes `out`, on failure it is removed.

    An existing `out` is refused unless `overwrite`; it is replaced only after the new one is whole.
    fsync: flush the whole new tree to disk before the rename (and the rename after), so a power
    loss cannot leave a complete-looking `out` with unwritten data. Off by default, like `cp`.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if fsync:
        fsync_tree(tmp)
    old = None
    if os.path.lexists(out):
        old = f"{out}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    os.replace(tmp, out)
    if fsync:
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)


def read_tensor(st: SafetensorsDir, name: str) -> np.ndarray:
    """One tensor of an HF checkpoint read into fresh memory with plain file reads.

    Unlike the memory map this leaves nothing resident after the caller drops the array, so
    streaming a whole checkpoint costs one tensor of memory, not the file's size.
    """
    if name not in st.weight_map:
        raise CheckpointError(f"{st.directory}: no file holds tensor {name}")
    f = st.files[st.weight_map[name]]
    shape, dtype = f.info(name)
    begin, end = f.header[name]["data_offsets"]
    out = np.empty(shape, dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    with open(f.path, "rb", buffering=0) as fh:
        fh.seek(f.data_start + begin)
        while done < end - begin:
            n = fh.readinto(buf[done:])
            if not n:
                raise CheckpointError(f"{f.path}: tensor {name}: file ended after {done} of "
                                      f"{end - begin} bytes")
            done += n
    return out


def _write_fully(f, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += f.write(data[done:])


DATA_ALIGN = 4096


def aligned_header(specs: list, metadata: dict | None) -> bytes:
    """safetensors_io's header, padded with spaces (as the format allows) so the data section
    starts on a page boundary: page-aligned destination writes are much cheaper for the kernel."""
    head = _header_bytes(specs, metadata)
    raw = head[8:] + b" " * (-len(head) % DATA_ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: str, specs: list, sources, *, metadata: dict | None = None,
                      on_tensor=None) -> int:
    """Stream tensors into a safetensors file via `path.tmp`; returns the data bytes written.

    Each source (in `specs` order) is either an array, or a list of (file, offset, nbytes) whose
    bytes, concatenated, are the tensor: those are copied by the kernel (sendfile), never loaded.
    The data section starts at a multiple of DATA_ALIGN (see `aligned_header`).
    """
    from socialr1_jax.checkpoint import stream as checkpoint_stream

    specs = [(n, tuple(s), np.dtype(d)) for n, s, d in specs]
    tmp = path + ".tmp"
    total = 0
    it = iter(sources)
    with open(tmp, "wb", buffering=0) as f:  # unbuffered: sendfile appends at the fd's offset
        _write_fully(f, memoryview(aligned_header(specs, metadata)))
        for name, shape, dtype in specs:
            src = next(it)
            want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if isinstance(src, np.ndarray):
                if src.shape != shape or src.dtype != dtype:
                    raise CheckpointError(f"{path}: tensor {name} is {src.shape} {src.dtype}, "
                                          f"expected {shape} {dtype}")
                _write_fully(f, np.ascontiguousarray(src).reshape(-1).view(np.uint8).data)
            else:
                if sum(n for _, _, n in src) != want:
                    raise CheckpointError(f"{path}: tensor {name}: source files hold "
                                          f"{sum(n for _, _, n in src)} bytes, expected {want}")
                for file, offset, n in src:
                    checkpoint_stream.copy_range(file, offset, n, f.fileno())
            total += want
            if on_tensor is not None:
                on_tensor(name, want)
    os.replace(tmp, path)
    return total


@dataclasses.dataclass
class Summary:
    """What a conversion did: printed as its last line."""

    what: str
    tensors: int
    nbytes: int
    seconds: float
    out: str

    def line(self) -> str:
        rate = self.nbytes / max(self.seconds, 1e-9) / 1e6
        return (f"{self.what}: {self.tensors} tensors, {self.nbytes / 1e9:.3f} GB "
                f"({self.nbytes} bytes) in {self.seconds:.2f} s ({rate:.0f} MB/s) -> {self.out}")


def add_output_args(p, dtype_help: str) -> None:
    """The options both converters take: --dtype, --overwrite, --fsync, --no-progress."""
    p.add_argument("--dtype", choices=["bf16", "fp32", "bfloat16", "float32"], default=None,
                   help=dtype_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--fsync", action="store_true",
                   help="flush the output to disk before it is renamed into place")
    p.add_argument("--no-progress", action="store_true")


def run_cli(convert_fn) -> int:
    """Run one conversion: print its summary line, or `error: ...` on stderr and return 1."""
    try:
        summary = convert_fn()
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0
