"""Tensor-at-a-time I/O in Orbax's own on-disk format (the converters' memory-bounded path).

Orbax saves a pytree in one call and, for host arrays, wants every array in memory at once. The
converters instead hand Orbax `StreamedTensor` leaves: a shape, a dtype and a function that
produces the data. `StreamingHandler` (an Orbax TypeHandler, recorded as 'np.ndarray' like any host
array) produces and writes them through Orbax's own TensorStore specs with a bounded number of bytes
in flight, so the result is byte-for-byte the format `PyTreeCheckpointHandler` writes and restores
(also as sharded jax.Arrays onto any mesh), while peak memory stays near one or two tensors.

`open_param_stores(step_dir)` is the reverse: every saved parameter opened as a TensorStore whose
data is read only when asked for, so the exporter can read one tensor at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Callable

import jax
import numpy as np
import tensorstore as ts
from etils import epath
from orbax.checkpoint._src.futures import future
from orbax.checkpoint._src.metadata import tree as tree_metadata
from orbax.checkpoint._src.path import format_utils
from orbax.checkpoint._src.serialization import ocdbt_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
from orbax.checkpoint._src.serialization import type_handler_registry as registry_lib
from orbax.checkpoint._src.serialization import type_handlers
from orbax.checkpoint._src.serialization import types as ser_types

from socialr1_jax.safetensors_io import CheckpointError
from socialr1_jax.sharding import path_str

# Zarr chunks of at most this many bytes: a restore onto a mesh reads only the chunks its shards
# touch, and TensorStore never holds more than a chunk of one tensor in its write buffers.
CHUNK_BYTES = 256 * 2**20


class StreamedTensor:
    """A checkpoint leaf whose data `produce()` returns only when Orbax writes it."""

    def __init__(self, shape, dtype, produce: Callable[[], np.ndarray], *, name: str = "",
                 on_written: Callable[[str, int], None] | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.produce = produce
        self.name = name
        self.on_written = on_written

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self):
        return f"StreamedTensor({self.name!r}, {self.shape}, {self.dtype})"


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


class StreamingHandler(type_handlers.NumpyHandler):
    """Writes `StreamedTensor` leaves with at most `max_inflight_bytes` of them in memory.

    Tensors are produced in order (file reads in a worker thread) and written concurrently, so
    producing the next ones overlaps TensorStore writing the previous ones. The first error
    (a bad read, a shape mismatch) cancels the rest and surfaces from the Orbax save.
    Unlike Orbax it does not fsync after every file write (an OCDBT commit per tensor then
    costs more than the data): written data is left to the page cache, as `cp` and transformers'
    save_pretrained leave it; the converters' --fsync flushes the whole output once at the end.
    """

    def __init__(self, max_inflight_bytes: int = 1 << 30):
        super().__init__(deepcopy_host_arrays=False)
        self._max_inflight = int(max_inflight_bytes)
        self._context: tuple = (None, None)  # (Orbax's context, our copy without fsync)

    def _nosync_context(self, info) -> ts.Context:
        """Orbax's TensorStore context for this save, minus the fsync after every file write.

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
        args = args or [ser_types.SaveArgs()] * len(values)
        ser_types.check_input_arguments(values, infos, args)
        type_handlers.check_array_values(values, infos)
        return [future.CommitFutureAwaitingContractedSignals(
            self._write_all(values, infos, args), name="socialr1_streamed_params")]

    async def _write_one(self, spec, context, arr, leaf, budget):
        try:
            # Opening with create=True commits the array's metadata: done here, concurrently
            # with other tensors, so OCDBT batches the commits instead of serialising them.
            store = await ts.open(ts.Spec(spec), create=True, open=True, context=context)
            await store.write(arr, can_reference_source_data_indefinitely=True)
        finally:
            await budget.release(leaf.nbytes)
        if leaf.on_written is not None:
            leaf.on_written(leaf.name, leaf.nbytes)

    async def _write_all(self, values, infos, args):
        budget = _ByteBudget(self._max_inflight)
        pending: set[asyncio.Future] = set()
        try:
            for leaf, info, arg in zip(values, infos, args):
                await info.await_path_creation()
                await budget.acquire(leaf.nbytes)
                try:
                    arr = await asyncio.to_thread(leaf.produce)
                except BaseException:
                    await budget.release(leaf.nbytes)
                    raise
                if tuple(arr.shape) != leaf.shape or arr.dtype != leaf.dtype:
                    raise CheckpointError(f"tensor {leaf.name}: produced {list(arr.shape)} "
                                          f"{arr.dtype}, expected {list(leaf.shape)} {leaf.dtype}")
                if arg.chunk_byte_size is None:
                    arg = dataclasses.replace(arg, chunk_byte_size=CHUNK_BYTES)
                spec = ts_utils.build_array_write_spec(
                    info=info, arg=arg, global_shape=leaf.shape, local_shape=leaf.shape,
                    dtype=leaf.dtype, use_ocdbt=info.is_ocdbt_checkpoint,
                    process_index=ocdbt_utils.get_process_index_for_subdir(
                        use_ocdbt=info.is_ocdbt_checkpoint))
                pending.add(asyncio.ensure_future(
                    self._write_one(spec.json, self._nosync_context(info), arr, leaf, budget)))
                del arr
                for done in [p for p in pending if p.done()]:
                    pending.discard(done)
                    done.result()  # re-raise a failed write now, not at the end
            await asyncio.gather(*pending)
        except BaseException:
            for p in pending:
                p.cancel()
            raise


def streaming_registry(max_inflight_bytes: int = 1 << 30):
    """A TypeHandlerRegistry that saves StreamedTensor leaves (and jax.Arrays as usual)."""
    return registry_lib.create_type_handler_registry(
        (jax.Array, registry_lib.GLOBAL_TYPE_HANDLER_REGISTRY.get(jax.Array)),
        (StreamedTensor, StreamingHandler(max_inflight_bytes)),
    )


def nest(flat: dict[str, object]) -> dict:
    """{'layers/0/attn/q_nhd': x} -> {'layers': {0: {'attn': {'q_nhd': x}}}} (nnx pure-dict form)."""
    out: dict = {}
    for path, value in flat.items():
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def flatten(tree) -> dict[str, object]:
    """The inverse of `nest`: leaves keyed by 'layers/0/attn/q_nhd'."""
    return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def item_metadata(item_dir: str) -> tuple[dict, bool]:
    """({path: ArrayMetadata(name, shape, dtype)}, use_zarr3) of a saved pytree item, no data read."""
    import orbax.checkpoint as ocp

    if not os.path.exists(os.path.join(item_dir, "_METADATA")):
        raise CheckpointError(f"{item_dir}: not an Orbax pytree item (no _METADATA)")
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
    tree = meta.tree if isinstance(meta, tree_metadata.TreeMetadata) else meta
    return flatten(tree), bool(getattr(meta, "use_zarr3", False))


def open_param_stores(item_dir: str) -> dict[str, tuple[ts.TensorStore, object]]:
    """{path: (TensorStore, ArrayMetadata)} for every array of a saved item; nothing read yet."""
    flat, use_zarr3 = item_metadata(item_dir)
    use_ocdbt = format_utils.is_ocdbt_checkpoint(epath.Path(item_dir))
    context = ts_utils.get_ts_context(use_ocdbt=use_ocdbt)

    async def open_all():
        opens = []
        for meta in flat.values():
            info = ser_types.ParamInfo(name=meta.name, parent_dir=epath.Path(item_dir),
                                       is_ocdbt_checkpoint=use_ocdbt, use_zarr3=use_zarr3,
                                       ts_context=context)
            spec = ts_utils.build_array_read_spec(info, use_ocdbt=use_ocdbt)
            opens.append(ts.open(ts.Spec(spec.json), open=True, context=context))
        return await asyncio.gather(*opens)

    stores = asyncio.run(open_all())
    return {path: (store, meta) for (path, meta), store in zip(flat.items(), stores)}
