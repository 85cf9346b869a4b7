"""Converters between HF safetensors directories and our Orbax checkpoints (both ways exact).

    python -m conversion.hf_to_orbax --hf-dir DIR --out CKPT [--dtype bf16|fp32] [--overwrite]
    python -m conversion.orbax_to_hf --ckpt CKPT [--step N] --out DIR [--max-shard-size 5GB]
                                     [--dtype bf16|fp32] [--overwrite]
    (both also take --fsync: flush the output to disk before it is renamed into place)

Both stream one tensor at a time (tensor bytes copied file to file by the kernel when no cast is
needed) and build their output in `OUT.tmp-*`, swapped with OUT only when complete, so an
interrupted run never leaves a directory that looks like a checkpoint and never loses the old
one (`socialr1_jax.checkpoint.staging`). Every tensor written is checked for NaN/Inf (`--allow-nonfinite` skips it).
A user's mistake (a flag, a bad input file, an unwritable or full --out) ends in one
`error: ...` line and exit code 2. This module holds what both share: sizes, reads, the
safetensors writer, the finite-checking thread, the command-line runner and the summary.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import os
import re
import struct
import threading

import numpy as np

from socialr1_jax import cli
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.checkpoint.safetensors_io import (_header_bytes, parse_size,  # noqa: F401
                                                   SafetensorsDir)
# re-exported: the converters' --out rule and staging live in checkpoint/ (the library uses them)
from socialr1_jax.checkpoint.staging import check_out, fsync_tree, staged_dir  # noqa: F401





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
    """The options both converters take: --dtype, --overwrite, --fsync, --allow-nonfinite,
    --no-progress."""
    p.add_argument("--dtype", choices=["bf16", "fp32", "bfloat16", "float32"], default=None,
                   help=dtype_help)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (only a checkpoint: HF or ours)")
    p.add_argument("--fsync", action="store_true",
                   help="flush the output to disk before it is swapped into place")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="write NaN/Inf weights instead of refusing them (debugging only)")
    p.add_argument("--no-progress", action="store_true")


class FiniteChecker:
    """Checks tensors for NaN/Inf in one background thread while the main thread writes.

    `add(fn)` queues a check (a callable raising NonFiniteError); `wait()` re-raises the first
    failure once all queued checks are done. Used as a context manager, an error in the writer
    stops the pending checks instead of waiting for them.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="finite")
        self._futures: list[concurrent.futures.Future] = []

    def add(self, fn, *args, **kwargs) -> None:
        if self.enabled:
            self._futures.append(self._pool.submit(fn, *args, stop=self.stop, **kwargs))

    def wait(self) -> None:
        for f in self._futures:
            f.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.stop.set()
            for f in self._futures:
                f.cancel()
        self._pool.shutdown(wait=True)
        return False


def _os_error_line(e: OSError, out: str) -> str:
    """One line for an OSError: the flag it concerns when it happened under --out."""
    names = [n for n in (e.filename, e.filename2) if n]
    what = e.strerror or str(e)
    if names and os.path.abspath(str(names[0])).startswith(os.path.abspath(out)):
        return f"--out {out}: {what} (writing {names[0]})"
    if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG):
        return f"--out {out}: {what}" + (f" ({names[0]})" if names else "")
    return f"{names[0]}: {what}" if names else what


def _storage_error(e: BaseException) -> str | None:
    """The OS error inside a TensorStore write failure (a ValueError whose text carries
    `[os_error_code='28']` or `[OS error 28: ...]`), as its strerror; None for anything else."""
    m = re.search(r"os_error_code='(\d+)'|OS error (\d+)", str(e))
    if m is None:
        return None
    code = int(m.group(1) or m.group(2))
    if code not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM):
        return None
    return os.strerror(code)


def run_cli(convert_fn, out: str) -> int:
    """Run one conversion: print its summary line. A user's mistake, a bad input file, or an
    output that cannot be written (read-only, full, no permission) raises UsageError: one
    `error: ...` line and exit code 2 from `cli.run`."""
    try:
        summary = convert_fn()
    except cli.UsageError:
        raise
    except OSError as e:
        raise cli.UsageError(_os_error_line(e, out)) from None
    except ValueError as e:
        reason = _storage_error(e)
        if reason is None:
            raise
        raise cli.UsageError(f"--out {out}: {reason}") from None
    print(summary.line())
    return 0
