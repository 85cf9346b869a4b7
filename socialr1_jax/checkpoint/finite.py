"""Refusing NaN and Inf weights, naming the tensor and the first bad element.

A checkpoint with a NaN weight loads and samples without complaint but every logit it touches is
NaN (greedy decoding then returns an id outside the vocabulary). The converters check every
tensor they write (`check_array`, `check_file_range`: on the raw bit patterns, in blocks, so the
check costs one read and no more memory than a block), and `load_model` checks the parameters
where they already are, on the devices (`check_model`). `allow_nonfinite` / `--allow-nonfinite`
skips the check, for debugging a broken checkpoint.

An IEEE float is NaN or Inf exactly when its exponent bits are all ones, i.e. when its bits with
the sign cleared are >= those of +Inf: one AND and one max per block, for any float width.
"""

from __future__ import annotations

import threading

import numpy as np

from socialr1_jax.checkpoint.errors import CheckpointError

HINT = "pass --allow-nonfinite to accept it (for debugging only)"
BLOCK_BYTES = 1 << 20  # per read: 2 such buffers are all the check holds

# itemsize -> (unsigned view, sign-cleared mask, bits of +Inf); bf16 and fp16 differ in the latter.
_FLOAT_BITS = {
    "float64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    "float32": (np.uint32, 0x7FFF_FFFF, 0x7F80_0000),
    "float16": (np.uint16, 0x7FFF, 0x7C00),
    "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
}


class NonFiniteError(CheckpointError):
    """A weight is NaN or Inf (the message names the tensor and the first bad element)."""


def _bits(dtype):
    spec = _FLOAT_BITS.get(np.dtype(dtype).name)
    if spec is None:
        return None  # integers and bools have no NaN
    view, mask, inf = spec
    return np.dtype(view), view(mask), view(inf)


def _first_bad(flat_bits: np.ndarray, mask, inf, scratch: np.ndarray) -> tuple[int, bool] | None:
    """(index, is_nan) of the first non-finite element of a 1-D unsigned view, or None."""
    m = scratch[:flat_bits.size]
    np.bitwise_and(flat_bits, mask, out=m)
    if m.max(initial=0) < inf:
        return None
    i = int(np.argmax(m >= inf))
    return i, bool(m[i] > inf)


def _message(where: str, name: str, shape, index: int, is_nan: bool) -> str:
    at = list(np.unravel_index(index, shape)) if shape else []
    return (f"{where}: tensor {name} has {'a NaN' if is_nan else 'an Inf'} at {[int(i) for i in at]}"
            f"; {HINT}")


def check_array(arr: np.ndarray, name: str, where: str) -> None:
    """Raise NonFiniteError if the host array has a NaN or Inf (checked in blocks)."""
    bits = _bits(arr.dtype)
    if bits is None or arr.size == 0:
        return
    view, mask, inf = bits
    flat = np.ascontiguousarray(arr).reshape(-1).view(view)
    step = max(1, BLOCK_BYTES // view.itemsize)
    scratch = np.empty(min(step, flat.size), view)
    for start in range(0, flat.size, step):
        bad = _first_bad(flat[start:start + step], mask, inf, scratch)
        if bad is not None:
            raise NonFiniteError(_message(where, name, arr.shape, start + bad[0], bad[1]))


def check_file_range(path: str, offset: int, count: int, dtype, name: str, *, shape,
                     first: int = 0, where: str | None = None,
                     stop: threading.Event | None = None) -> None:
    """Raise NonFiniteError if `count` elements of `dtype` at byte `offset` of `path` hold a
    NaN or Inf. They are elements [first, first + count) of the C-order tensor `name` of `shape`
    (for the message). Plain reads into one reused block: no memory map, nothing stays resident.
    `stop`, set by another thread, ends the check early (the caller is failing anyway).
    """
    bits = _bits(dtype)
    if bits is None or count == 0:
        return
    view, mask, inf = bits
    step = max(1, BLOCK_BYTES // view.itemsize)
    buf = np.empty(min(step, count), view)
    scratch = np.empty_like(buf)
    raw = memoryview(buf.view(np.uint8))
    done = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while done < count:
            if stop is not None and stop.is_set():
                return
            k = min(step, count - done)
            want, got = k * view.itemsize, 0
            while got < want:
                r = f.readinto(raw[got:want])
                if not r:
                    raise CheckpointError(f"{path}: tensor {name}: file ended "
                                          f"{want - got} bytes short of the tensor's end")
                got += r
            bad = _first_bad(buf[:k], mask, inf, scratch)
            if bad is not None:
                raise NonFiniteError(_message(where or path, name, tuple(shape),
                                              first + done + bad[0], bad[1]))
            done += k


def check_files(parts: list[tuple[str, int, int]], shape, dtype, name: str, *, where: str,
                stop: threading.Event | None = None) -> None:
    """`check_file_range` for a tensor whose C-order bytes are the concatenation of the
    (file, byte offset, nbytes) parts, each a whole number of elements (raw zarr row chunks)."""
    itemsize = np.dtype(dtype).itemsize
    first = 0
    for path, offset, nbytes in parts:
        check_file_range(path, offset, nbytes // itemsize, dtype, name, shape=shape, first=first,
                         where=where, stop=stop)
        first += nbytes // itemsize


def check_model(model, *, where: str) -> None:
    """Raise NonFiniteError naming the first parameter of an nnx model with a NaN or Inf.

    Runs on the devices that hold the (possibly sharded) parameters: one fused reduction per
    parameter, a boolean per parameter comes back. Names the HF tensor when the layout table
    knows the parameter.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from socialr1_jax.checkpoint import hf_layout
    from socialr1_jax.parallel.sharding import path_str

    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    arrays = [x for _, x in leaves]
    finite = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))(arrays)
    finite = np.asarray(jax.device_get(finite))
    if finite.all():
        return
    k = int(np.argmin(finite))
    path, x = path_str(leaves[k][0]), arrays[k]
    first = jax.jit(lambda a: jnp.argmin(jnp.isfinite(a).reshape(-1)))(x)
    index = int(jax.device_get(first))
    value = float(jax.device_get(jax.jit(lambda a, i: a.reshape(-1)[i].astype(jnp.float32))(x, first)))
    shape, name = tuple(x.shape), path
    param = hf_layout.params(model.cfg).get(path)
    if param is not None:  # name the HF tensor; a stacked parameter's layer is one HF tensor
        per = int(np.prod(param.entries[0].shape))
        entry = param.entries[index // per]
        index, shape = index % per, tuple(entry.shape)
        layer = f"[{entry.layer}]" if entry.layer is not None else ""
        name = f"{entry.hf_name} ({path}{layer})"
    raise NonFiniteError(_message(where, name, shape, index, value != value))
