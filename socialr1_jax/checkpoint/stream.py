"""Tensor-at-a-time I/O in Orbax's own on-disk format (the converters' memory-bounded path).

Orbax saves a pytree in one call and, for host arrays, wants every array in memory at once. The
converters instead hand Orbax `StreamedTensor` leaves: a shape, a dtype, a function that produces
the data and, when the bytes already sit in a file in C order (a safetensors tensor), where.
`StreamingHandler` (an Orbax TypeHandler, recorded as 'np.ndarray' like any host array) writes
each leaf through Orbax's own TensorStore spec, so the item is the format `PyTreeCheckpointHandler`
restores (also as sharded jax.Arrays onto any mesh):

A leaf is written in parts, one HF tensor each: the whole array, or (a stacked parameter, see
hf_layout.py) each of its slices [i] along the layer axis, so no more than one HF tensor's worth
is ever produced at a time.

- raw path (the converters' default: a zarr item without OCDBT, uncompressed, same dtype):
  TensorStore creates the array (its `.zarray`), chunked along its leading axes only (a stacked
  parameter: one layer per chunk along axis 0, then rows), so every chunk file is one contiguous
  byte range of one part, copied file to file by the kernel (`os.sendfile`, as
  `shutil.copyfile` does). No tensor data passes through this process.
- array path (dtype casts, OCDBT or compressed items): each part's `produce()` in a worker
  thread, then `TensorStore.write` of its slice, concurrently, with at most
  `max_inflight_bytes` produced but unwritten.

`open_param_stores(item_dir)`, `raw_chunk_files(...)` and `byte_ranges(...)` are the reverse, for
the exporter: every saved parameter opened lazily, and, where the item is raw zarr, the file
byte ranges holding each part to copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
from typing import Callable

import jax
import numpy as np
import tensorstore as ts
from etils import epath
from orbax.checkpoint import future as ocp_future
from orbax.checkpoint import type_handlers as ocp_types

from socialr1_jax.model.config import parse_dtype
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.parallel.sharding import path_str

# Target chunk size: a restore onto a mesh reads only the chunks its shards touch.
CHUNK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class Part:
    """One HF tensor's worth of a leaf: `produce()` returns it (in the leaf's dtype and the part's
    shape); raw: (file, byte offset) where its bytes lie in C order and in that dtype, if they
    do."""

    name: str
    produce: Callable[[], np.ndarray]
    raw: tuple[str, int] | None = None


class StreamedTensor:
    """A checkpoint leaf whose data is produced, part by part, only when Orbax writes it.

    parts: one Part giving the whole array, or with `stacked` one Part per index of axis 0, each
    giving the slice [i]. name: default the first part's. on_written(part name, nbytes) follows
    every part.
    """

    def __init__(self, shape, dtype, parts: list[Part], *, stacked: bool = False,
                 name: str = "", on_written: Callable[[str, int], None] | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.stacked = stacked
        self.parts = list(parts)
        if not stacked and len(self.parts) != 1:
            raise ValueError(f"{name}: {len(self.parts)} parts for an unstacked tensor")
        if self.stacked and (not self.shape or len(self.parts) != self.shape[0]):
            raise ValueError(f"{name}: {len(self.parts)} layer parts for shape {self.shape}")
        self.name = name or self.parts[0].name
        self.on_written = on_written

    @property
    def raw(self) -> bool:
        """Whether every part's bytes lie in a file (the raw path can copy them)."""
        return all(p.raw is not None for p in self.parts)

    @property
    def part_shape(self) -> tuple:
        return self.shape[1:] if self.stacked else self.shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def part_nbytes(self) -> int:
        return self.nbytes // len(self.parts)

    def __repr__(self):
        return f"StreamedTensor({self.name!r}, {self.shape}, {self.dtype})"


def copy_range(src: str, offset: int, nbytes: int, dst_fd: int) -> None:
    """Append bytes [offset, offset + nbytes) of file `src` to `dst_fd`, copied by the kernel."""
    with open(src, "rb", buffering=0) as f:
        done = 0
        while done < nbytes:
            n = os.sendfile(dst_fd, f.fileno(), offset + done, nbytes - done)
            if n == 0:
                raise CheckpointError(f"{src}: file ended at byte {offset + done}, "
                                      f"{nbytes - done} bytes short of the tensor's end")
            done += n


def row_chunks(shape: tuple, itemsize: int, target: int = CHUNK_BYTES) -> list[int]:
    """A chunk shape splitting axis 0 only, into equal blocks of <= target bytes where possible.

    Blocks of whole rows of a C-order array are contiguous byte ranges of it.
    """
    if not shape:
        return []
    row = math.prod(shape[1:]) * itemsize
    n = shape[0]
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for c in (d, n // d):
                if c * row <= target:
                    best = max(best, c)
    return [best, *shape[1:]]


def leaf_chunks(leaf: StreamedTensor, target: int | None = None) -> list[int]:
    """The raw path's chunk shape: `row_chunks`, below one layer for a stacked leaf."""
    target = CHUNK_BYTES if target is None else target
    if leaf.stacked:
        return [1, *row_chunks(leaf.part_shape, leaf.dtype.itemsize, target)]
    return row_chunks(leaf.shape, leaf.dtype.itemsize, target)


def _chunk_grid(shape: tuple, chunks: tuple) -> list[tuple[int, ...]]:
    """The chunk indices of a chunking that splits only the leading axes, in C order."""
    counts = [n // c for n, c in zip(shape, chunks)]
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*counts)] if shape else [()]


def _chunk_key(idx: tuple[int, ...]) -> str:
    return ".".join(map(str, idx)) if idx else "0"


def _raw_spec(spec: dict) -> bool:
    """A plain uncompressed zarr v2 array in a directory: chunk files are raw C-order bytes."""
    meta = spec.get("metadata", {})
    return (spec.get("driver") == "zarr" and spec.get("kvstore", {}).get("driver") == "file"
            and meta.get("compressor") is None and not meta.get("filters"))


def _write_raw(directory: str, leaf: StreamedTensor, chunks: list[int]) -> None:
    """Every chunk file copied from its part's bytes (chunks never straddle two parts)."""
    grid = _chunk_grid(leaf.shape, tuple(chunks))
    chunk_bytes = leaf.nbytes // len(grid)
    per_part = len(grid) // len(leaf.parts)
    for k, idx in enumerate(grid):
        part = leaf.parts[k // per_part]
        src, offset = part.raw
        fd = os.open(os.path.join(directory, _chunk_key(idx)),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            copy_range(src, offset + (k % per_part) * chunk_bytes, chunk_bytes, fd)
        finally:
            os.close(fd)
        if (k + 1) % per_part == 0 and leaf.on_written is not None:
            leaf.on_written(part.name, leaf.part_nbytes)


class _ByteBudget:
    """At most `limit` bytes of produced-but-unwritten tensors (always at least one tensor)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.cond = asyncio.Condition()

    async def acquire(self, n: int):
        async with self.cond:
            await self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int):
        async with self.cond:
            self.used -= n
            self.cond.notify_all()


class StreamingHandler(ocp_types.NumpyHandler):
    """Writes `StreamedTensor` leaves by the raw or the array path (see the module docstring).

    The first error (a bad read, a shape mismatch) stops it and surfaces from the Orbax save.
    Unlike Orbax it does not fsync after every file (with OCDBT a commit per tensor would cost
    more than the data): written data is left to the page cache, as `cp` and transformers'
    save_pretrained leave it; the converters' --fsync flushes the whole output once at the end.
    """

    def __init__(self, max_inflight_bytes: int = 1 << 30):
        super().__init__(deepcopy_host_arrays=False)
        self._max_inflight = int(max_inflight_bytes)
        self._context: tuple = (None, None)  # (Orbax's context, our copy without fsync)

    def _nosync_context(self, info) -> ts.Context:
        """Orbax's TensorStore context for this save minus the fsync after every file write.

        One context per save, shared by all its tensors (so they share one OCDBT writer).
        """
        if self._context[0] is not info.ts_context:
            spec = info.ts_context.spec.to_json()
            self._context = (info.ts_context, ts.Context({**spec, "file_io_sync": False}))
        return self._context[1]

    async def serialize(self, values, infos, args=None):
        if jax.process_count() > 1:
            raise RuntimeError("StreamedTensor checkpoints are written by one process (the "
                               "converters); multi-process training saves jax.Arrays instead")
        args = args or [ocp_types.SaveArgs()] * len(values)
        ocp_types.check_input_arguments(values, infos, args)
        for leaf in values:
            if leaf.size == 0:
                raise CheckpointError(f"tensor {leaf.name}: cannot save an array of zero size")
        return [ocp_future.CommitFutureAwaitingContractedSignals(
            self._write_all(values, infos, args), name="socialr1_streamed_params")]

    async def _write_one(self, opened, i, arr, leaf, part, budget):
        try:
            store = await opened
            target = store[i] if leaf.stacked else store
            await target.write(arr, can_reference_source_data_indefinitely=True)
        finally:
            await budget.release(leaf.part_nbytes)
        if leaf.on_written is not None:
            leaf.on_written(part.name, leaf.part_nbytes)

    async def _write_all(self, values, infos, args):
        budget = _ByteBudget(self._max_inflight)
        pending: set[asyncio.Future] = set()
        try:
            for leaf, info, arg in zip(values, infos, args):
                await info.await_path_creation()
                if arg.chunk_byte_size is None:
                    arg = dataclasses.replace(arg, chunk_byte_size=CHUNK_BYTES)
                # One process writes (checked above): OCDBT's per-process subdirectory is 0's.
                ocdbt = bool(info.is_ocdbt_checkpoint)
                spec = ocp_types.get_json_tspec_write(
                    info, use_ocdbt=ocdbt, global_shape=leaf.shape, local_shape=leaf.shape,
                    dtype=leaf.dtype, process_index=0 if ocdbt else None, arg=arg)
                context = self._nosync_context(info)
                if leaf.raw and _raw_spec(spec):
                    chunks = leaf_chunks(leaf)
                    spec = {**spec, "metadata": {**spec["metadata"], "chunks": chunks}}
                    await ts.open(ts.Spec(spec), create=True, open=True, context=context)
                    await asyncio.to_thread(_write_raw, spec["kvstore"]["path"], leaf, chunks)
                    continue
                # Opening with create=True commits the array's metadata: started now, awaited by
                # the part writes, so OCDBT batches the commits of many tensors.
                opened = asyncio.ensure_future(
                    ts.open(ts.Spec(spec), create=True, open=True, context=context))
                pending.add(opened)
                for i, part in enumerate(leaf.parts):
                    await budget.acquire(leaf.part_nbytes)
                    try:
                        arr = await asyncio.to_thread(part.produce)
                    except BaseException:
                        await budget.release(leaf.part_nbytes)
                        raise
                    if tuple(arr.shape) != leaf.part_shape or arr.dtype != leaf.dtype:
                        await budget.release(leaf.part_nbytes)
                        raise CheckpointError(
                            f"tensor {part.name}: produced {list(arr.shape)} {arr.dtype}, "
                            f"expected {list(leaf.part_shape)} {leaf.dtype}")
                    pending.add(asyncio.ensure_future(
                        self._write_one(opened, i, arr, leaf, part, budget)))
                    del arr
                    for done in [p for p in pending if p.done()]:
                        pending.discard(done)
                        done.result()  # re-raise a failed write now, not at the end
            await asyncio.gather(*pending)
        except BaseException:
            # Let the writes already started finish (at most the byte budget) before the error
            # leaves: TensorStore would otherwise call back into a closed event loop.
            await asyncio.gather(*pending, return_exceptions=True)
            raise


def streaming_registry(max_inflight_bytes: int = 1 << 30):
    """A TypeHandlerRegistry that saves StreamedTensor leaves (and jax.Arrays as usual)."""
    return ocp_types.create_type_handler_registry(
        (jax.Array, ocp_types.get_type_handler(jax.Array)),
        (StreamedTensor, StreamingHandler(max_inflight_bytes)),
    )


def nest(flat: dict[str, object]) -> dict:
    """{'layers/q_lnhd': x} -> {'layers': {'q_lnhd': x}} (nnx pure-dict form; digit keys -> int)."""
    out: dict = {}
    for path, value in flat.items():
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def flatten(tree) -> dict[str, object]:
    """The inverse of `nest`: leaves keyed by 'layers/q_lnhd'."""
    return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def item_metadata(item_dir: str) -> tuple[dict, bool]:
    """({path: ArrayMetadata(name, shape, dtype)}, use_zarr3) of a saved pytree item, no data read."""
    import orbax.checkpoint as ocp

    if not os.path.exists(os.path.join(item_dir, "_METADATA")):
        raise CheckpointError(f"{item_dir}: not an Orbax pytree item (no _METADATA)")
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
    tree = getattr(meta, "tree", meta)  # a TreeMetadata (Orbax >= 0.11) or the tree itself
    return flatten(tree), bool(getattr(meta, "use_zarr3", False))


def open_param_stores(item_dir: str) -> dict[str, tuple[ts.TensorStore, object]]:
    """{path: (TensorStore, ArrayMetadata)} for every array of a saved item; nothing read yet."""
    flat, use_zarr3 = item_metadata(item_dir)
    use_ocdbt = bool(ocp_types.is_ocdbt_checkpoint(epath.Path(item_dir)))
    context = ocp_types.get_ts_context(use_ocdbt=use_ocdbt)

    async def open_all():
        opens = []
        for meta in flat.values():
            info = ocp_types.ParamInfo(name=meta.name, parent_dir=epath.Path(item_dir),
                                       is_ocdbt_checkpoint=use_ocdbt, use_zarr3=use_zarr3,
                                       ts_context=context)
            spec = ocp_types.get_json_tspec_read(info, use_ocdbt=use_ocdbt)
            opens.append(ts.open(ts.Spec(spec), open=True, context=context))
        return await asyncio.gather(*opens)

    stores = asyncio.run(open_all())
    return {path: (store, meta) for (path, meta), store in zip(flat.items(), stores)}


def raw_chunk_files(item_dir: str, name: str, shape: tuple, dtype) -> list[tuple[str, int]] | None:
    """[(chunk file, nbytes)] whose concatenation is the array's C-order bytes, or None.

    Only for a raw zarr v2 array (no OCDBT, no compressor or filters, C order, every chunk a
    contiguous byte range: chunks of 1 along the leading axes, then one axis split evenly, then
    whole; every chunk file present and whole); anything else is read through TensorStore.
    """
    array_dir = os.path.join(item_dir, name)
    try:
        with open(os.path.join(array_dir, ".zarray")) as f:
            z = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    try:
        stored = np.dtype(parse_dtype(z["dtype"])) if z["dtype"] == "bfloat16" else np.dtype(z["dtype"])
    except (TypeError, ValueError, KeyError):
        return None
    shape, rank = tuple(shape), len(shape)
    chunks = tuple(z.get("chunks", ()))
    if (z.get("zarr_format") != 2 or z.get("compressor") is not None or z.get("filters")
            or z.get("order") != "C" or z.get("dimension_separator", ".") != "."
            or tuple(z.get("shape", ())) != shape or stored != np.dtype(dtype)
            or len(chunks) != rank or not _contiguous_chunks(shape, chunks)):
        return None
    nbytes = math.prod(chunks) * stored.itemsize
    files = [(os.path.join(array_dir, _chunk_key(idx)), nbytes)
             for idx in _chunk_grid(shape, chunks)]
    if not all(os.path.isfile(p) and os.path.getsize(p) == nbytes for p, _ in files):
        return None
    return files


def _contiguous_chunks(shape: tuple, chunks: tuple) -> bool:
    """Chunks [1, .., 1, c, whole, ..] with c dividing its axis: each one contiguous bytes."""
    k = next((a for a, c in enumerate(chunks) if c != 1), len(chunks))
    return (all(c > 0 for c in chunks) and (k == len(shape) or shape[k] % chunks[k] == 0)
            and tuple(chunks[k + 1:]) == tuple(shape[k + 1:]))


def byte_ranges(files: list[tuple[str, int]], start: int, nbytes: int) -> list[tuple[str, int, int]]:
    """[(file, offset, nbytes)] holding bytes [start, start + nbytes) of the concatenation of
    `files` ([(file, size)], e.g. `raw_chunk_files`): one layer of a stacked parameter."""
    out, pos = [], 0
    for path, size in files:
        lo, hi = max(start, pos), min(start + nbytes, pos + size)
        if lo < hi:
            out.append((path, lo - pos, hi - lo))
        pos += size
    return out
