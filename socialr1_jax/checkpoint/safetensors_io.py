"""Torch-free safetensors reading and writing, one tensor at a time.

Reading memory-maps each file and validates its header against the file size, so a truncated or
corrupt file fails with its name before any tensor is used. Writing streams tensors into a
temporary file renamed into place when complete. bf16 goes through `ml_dtypes`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from socialr1_jax.checkpoint.errors import CheckpointError

ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NP_TO_ST = {v: k for k, v in ST_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class SafetensorsFile:
    """One .safetensors file: its validated header and zero-copy access to each tensor."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: truncated (no header)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    raise CheckpointError(f"{path}: truncated (header of {n} bytes, file {size})")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.header = header
        self.data_start = 8 + n
        data_len = size - self.data_start
        for name, info in header.items():
            if info.get("dtype") not in ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
            begin, end = info["data_offsets"]
            want = int(np.prod(info["shape"], dtype=np.int64)) * ST_DTYPES[info["dtype"]].itemsize
            if end - begin != want:
                raise CheckpointError(f"{path}: tensor {name} has {end - begin} bytes, its shape "
                                      f"{info['shape']} {info['dtype']} needs {want}")
            if end > data_len:
                raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte {end} of the "
                                      f"data section but the file holds only {data_len}")
        self._mmap = None

    def keys(self) -> list[str]:
        return list(self.header)

    def info(self, name: str) -> tuple[tuple, np.dtype]:
        """(shape, numpy dtype) of a tensor without reading it."""
        h = self.header[name]
        return tuple(h["shape"]), ST_DTYPES[h["dtype"]]

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of a tensor (no copy until touched)."""
        if name not in self.header:
            raise CheckpointError(f"{self.path}: no tensor {name}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        h = self.header[name]
        begin, end = h["data_offsets"]
        raw = self._mmap[self.data_start + begin:self.data_start + end]
        return raw.view(ST_DTYPES[h["dtype"]]).reshape(h["shape"])

    def close(self):
        self._mmap = None


class SafetensorsDir:
    """All tensors of an HF checkpoint directory: one file, or many tied by the index."""

    def __init__(self, directory: str):
        self.directory = directory
        index_path = os.path.join(directory, INDEX_NAME)
        single = os.path.join(directory, SINGLE_NAME)
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index_path}: not a valid index ({e})") from None
            files = sorted(set(weight_map.values()))
            missing = [fn for fn in files if not os.path.exists(os.path.join(directory, fn))]
            if missing:
                raise CheckpointError(f"{index_path} names shard file(s) that do not exist: {missing}")
            self.files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in files}
            for name, fn in weight_map.items():
                if name not in self.files[fn].header:
                    raise CheckpointError(f"{index_path} says tensor {name} is in {fn}, "
                                          f"but {os.path.join(directory, fn)} has no such tensor")
            self.weight_map = dict(weight_map)
        elif os.path.exists(single):
            self.files = {SINGLE_NAME: SafetensorsFile(single)}
            self.weight_map = {k: SINGLE_NAME for k in self.files[SINGLE_NAME].keys()}
        else:
            raise CheckpointError(f"{directory}: neither {SINGLE_NAME} nor {INDEX_NAME} found")

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def file_of(self, name: str) -> str:
        return os.path.join(self.directory, self.weight_map[name])

    def info(self, name: str):
        return self.files[self.weight_map[name]].info(name)

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.directory}: no file holds tensor {name}")
        return self.files[self.weight_map[name]].get(name)

    def close(self):
        for f in self.files.values():
            f.close()


def _header_bytes(specs: list[tuple[str, tuple, np.dtype]], metadata: dict | None) -> bytes:
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": NP_TO_ST[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the format suggests
    return struct.pack("<Q", len(raw)) + raw


def write_file(path: str, specs: list[tuple[str, tuple, np.dtype]],
               tensors: Iterable[np.ndarray], metadata: dict | None = None,
               on_tensor=None) -> int:
    """Stream tensors (in `specs` order) into `path` via a temporary file; returns bytes written.

    Only one tensor is in memory at a time. A crash leaves `path.tmp`, never a complete-looking
    `path`.
    """
    specs = [(n, tuple(s), np.dtype(d)) for n, s, d in specs]
    tmp = path + ".tmp"
    total = 0
    with open(tmp, "wb") as f:
        f.write(_header_bytes(specs, metadata))
        it: Iterator[np.ndarray] = iter(tensors)
        for name, shape, dtype in specs:
            arr = np.asarray(next(it))
            if arr.shape != shape or arr.dtype != dtype:
                raise CheckpointError(f"{path}: tensor {name} is {arr.shape} {arr.dtype}, "
                                      f"expected {shape} {dtype}")
            # bytes view: memoryview cannot export ml_dtypes bfloat16 ("E") directly
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
            total += arr.nbytes
            if on_tensor is not None:
                on_tensor(name, arr.nbytes)
    os.replace(tmp, path)
    return total


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


def split_shards(sizes: list[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Group tensor names into shards in order, the way huggingface_hub splits a state dict."""
    shards, current, current_size = [], [], 0
    for name, size in sizes:
        if size > max_shard_size:
            shards.append([name])
            continue
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_names(n: int) -> list[str]:
    """File names of n shards, as save_pretrained names them."""
    if n == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
