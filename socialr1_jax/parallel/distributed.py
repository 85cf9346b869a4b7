"""Multi-host runs: `jax.distributed` from flags or environment, and per-host batch feeding.

On a pod every host runs the same program. `initialize()` connects the processes (coordinator
address, process count, this process's id); after it, `jax.devices()` lists every host's devices
and `sharding.make_mesh` spans all of them. Each host then feeds only the rows of the batch that
its own devices hold: `process_part` picks this host's share of a global list (of prompts, say)
and `global_batch` assembles the per-host arrays into one global `jax.Array` without any host
ever holding the whole batch. `gather` brings a global array back to every host (for logging).

On one machine, two processes with the gloo CPU collectives stand in for a pod (see
tests/test_multihost.py):

    SOCIALR1_COORDINATOR=127.0.0.1:12345 SOCIALR1_NUM_PROCESSES=2 SOCIALR1_PROCESS_ID=0 \\
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python train.py ...
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from socialr1_jax.parallel.sharding import batch_sharding

log = logging.getLogger(__name__)

ENV_COORDINATOR = "SOCIALR1_COORDINATOR"
ENV_NUM_PROCESSES = "SOCIALR1_NUM_PROCESSES"
ENV_PROCESS_ID = "SOCIALR1_PROCESS_ID"
ENV_LOCAL_DEVICE_COUNT = "SOCIALR1_LOCAL_DEVICE_COUNT"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator listens, how many processes there are, and which one this is.

    `local_device_count` (optional) limits/sets the devices of this process: on CPU it is the
    number of simulated devices, on accelerators the first N local devices are used.
    """

    coordinator_address: str
    num_processes: int
    process_id: int
    local_device_count: int | None = None

    def __post_init__(self):
        if ":" not in self.coordinator_address:
            raise ValueError(f"coordinator address {self.coordinator_address!r} must be host:port")
        if self.num_processes < 1:
            raise ValueError(f"num_processes={self.num_processes} must be >= 1")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id={self.process_id} must be in [0, {self.num_processes})")
        if self.local_device_count is not None and self.local_device_count < 1:
            raise ValueError(f"local_device_count={self.local_device_count} must be >= 1")


def _int(value, name: str, source: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} {name}={value!r} is not an integer") from None


def resolve_config(coordinator_address: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None, local_device_count: int | None = None, *,
                   environ: Mapping[str, str] | None = None) -> DistributedConfig | None:
    """The distributed config from arguments, each missing one taken from the environment.

    Returns None when neither arguments nor SOCIALR1_* variables name any of coordinator,
    process count or process id. A partial configuration (say a process id without a
    coordinator) is refused with an error naming what is missing: guessing would hang a pod.
    """
    env = os.environ if environ is None else environ
    coord = coordinator_address or env.get(ENV_COORDINATOR) or None
    nproc = (_int(num_processes, "num_processes", "argument")
             if num_processes is not None else
             _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES, "environment"))
    pid = (_int(process_id, "process_id", "argument")
           if process_id is not None else
           _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID, "environment"))
    ldc = (_int(local_device_count, "local_device_count", "argument")
           if local_device_count is not None else
           _int(env.get(ENV_LOCAL_DEVICE_COUNT), ENV_LOCAL_DEVICE_COUNT, "environment"))
    given = {"coordinator address": coord, "process count": nproc, "process id": pid}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        names = {"coordinator address": f"--coordinator / {ENV_COORDINATOR}",
                 "process count": f"--num-processes / {ENV_NUM_PROCESSES}",
                 "process id": f"--process-id / {ENV_PROCESS_ID}"}
        have = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        raise ValueError(f"partial multi-host configuration ({have}): also give "
                         + "; ".join(names[m] for m in missing))
    return DistributedConfig(coord, nproc, pid, ldc)


def _platform_is_cpu() -> bool:
    """Whether JAX will run on CPU, decided without initialising any backend."""
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or ""
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
               "libtpu")
    return not any(importlib.util.find_spec(p) for p in plugins)


def _initialize_detected_cluster(initialization_timeout: int) -> bool:
    """Start `jax.distributed` through JAX's own cluster auto-detection; False if none is found.

    `jax.distributed.initialize()` without arguments looks for a TPU pod, SLURM, Open MPI or
    Kubernetes job (and JAX_COORDINATOR_ADDRESS); when it finds none it raises ValueError about
    the undefined coordinator address before connecting anything, which here means a single
    plain process. In a process whose JAX backends already run (a second job in one Python
    session, a notebook) nothing can be started any more: the process stays as JAX already
    set it up, and a warning says so. Any other failure is raised.
    """
    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    except ValueError as e:
        if "coordinator_address" in str(e):
            return False
        raise
    except RuntimeError as e:
        if "must be called before" not in str(e):
            raise
        log.warning("JAX was already in use before the multi-host setup, so it was skipped: "
                    "this is process %d of %d", jax.process_index(), jax.process_count())
        return False
    log.info("no SOCIALR1_* multi-host settings; JAX's cluster auto-detection found a cluster")
    return True


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """What `initialize` set up: this process's index, the count, and device counts."""

    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int
    initialized: bool  # whether jax.distributed was started (False: a single plain process)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_count: int | None = None, *,
               initialization_timeout: int = 300) -> ProcessInfo:
    """Start `jax.distributed` from arguments or SOCIALR1_* environment variables.

    Must run before anything touches a JAX device. With nothing given, JAX's own cluster
    auto-detection (TPU pod, SLURM, Open MPI, Kubernetes) is used when it recognises one;
    otherwise this stays a single process. On CPU, cross-process collectives use gloo.
    """
    cfg = resolve_config(coordinator_address, num_processes, process_id, local_device_count)
    cpu = _platform_is_cpu()
    if cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg is None:
        started = _initialize_detected_cluster(initialization_timeout)
    else:
        kwargs = {}
        if cfg.local_device_count is not None:
            if cpu:
                jax.config.update("jax_num_cpu_devices", cfg.local_device_count)
            else:
                kwargs["local_device_ids"] = list(range(cfg.local_device_count))
        log.info("jax.distributed: process %d of %d, coordinator %s", cfg.process_id,
                 cfg.num_processes, cfg.coordinator_address)
        try:
            jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id,
                                       initialization_timeout=initialization_timeout, **kwargs)
        except RuntimeError as e:
            raise RuntimeError(f"jax.distributed.initialize({cfg}) failed: {e}") from e
        started = True
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                       jax.device_count(), started)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add --coordinator / --num-processes / --process-id / --local-device-count to a CLI."""
    g = parser.add_argument_group("multi-host (default: SOCIALR1_* environment, else one process)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0's coordinator")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (hosts)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index")
    g.add_argument("--local-device-count", type=int, default=None,
                   help="devices of this process (CPU: simulated devices)")


def initialize_from_flags(args: argparse.Namespace) -> ProcessInfo:
    """`initialize` with the values of `add_flags`' arguments (environment fills the gaps)."""
    return initialize(args.coordinator, args.num_processes, args.process_id,
                      args.local_device_count)


# ----------------------------------------------------------------------------------------------
# Feeding each host its part of the batch.

def process_rows(mesh: Mesh, global_batch: int) -> slice:
    """The rows [start, stop) of a global batch held by this process's devices.

    Read off the batch sharding itself, so it agrees with `global_batch` by construction.
    `make_mesh` orders devices by process, so a process's rows are one contiguous block.
    """
    if global_batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"global batch {global_batch} is not divisible by mesh data x fsdp = "
                         f"{mesh.shape['data'] * mesh.shape['fsdp']}")
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch,))
    rows = sorted({(idx[0].start or 0, global_batch if idx[0].stop is None else idx[0].stop)
                   for idx in index_map.values()})
    start, stop = rows[0][0], rows[0][1]
    for a, b in rows[1:]:
        if a > stop:
            raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows "
                             f"{rows} on this mesh; build the mesh with make_mesh")
        stop = max(stop, b)
    return slice(start, stop)


def process_part(items: Sequence, mesh: Mesh) -> list:
    """This process's share of a global list (prompts, rows), matching `process_rows`."""
    return list(items[process_rows(mesh, len(items))])


def global_batch(local, mesh: Mesh, global_size: int | None = None):
    """One global batch-sharded jax.Array from each process's local rows (a pytree of arrays).

    `local` leaves are [local_batch, ...] numpy arrays: the rows `process_rows` names. The
    global batch size defaults to local_batch x the number of processes holding distinct rows.
    """
    def one(x):
        x = np.asarray(x)
        sharding: NamedSharding = batch_sharding(mesh, x.ndim)
        n = global_size
        if n is None:
            n = x.shape[0] * _row_groups(mesh)
        want = process_rows(mesh, n)
        if x.shape[0] != want.stop - want.start:
            raise ValueError(f"process {jax.process_index()} was given {x.shape[0]} rows; on this "
                             f"mesh it holds rows {want.start}:{want.stop} of {n}")
        return jax.make_array_from_process_local_data(sharding, x, (n,) + x.shape[1:])
    return jax.tree_util.tree_map(one, local)


def _row_groups(mesh: Mesh) -> int:
    """Into how many distinct row blocks the processes split the batch."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    probe = batch_sharding(mesh, 1).addressable_devices_indices_map((shards,))
    mine = {idx[0].start or 0 for idx in probe.values()}
    return shards // len(mine)


def gather(x) -> np.ndarray:
    """The whole of a (possibly multi-host) global array on every host, as numpy."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x, mesh: Mesh) -> np.ndarray:
    """This process's rows (`process_rows`) of a global [batch, ...] array as numpy.

    Only the shards this process's devices hold are copied to the host; no other host's data
    moves. `x` is laid out with `batch_sharding` (batch over data x fsdp, the rest whole).
    """
    rows = process_rows(mesh, x.shape[0])
    if x.is_fully_addressable and (rows.start, rows.stop) == (0, x.shape[0]):
        return np.asarray(x)
    blocks = {}
    for shard in x.addressable_shards:
        idx = shard.index[0]
        blocks.setdefault(idx.start or 0, shard.data)
    out = np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)])
    if out.shape[0] != rows.stop - rows.start:
        raise ValueError(f"process {jax.process_index()}: its shards of an array of shape "
                         f"{list(x.shape)} hold {out.shape[0]} rows, expected "
                         f"{rows.stop - rows.start}; lay it out with batch_sharding first")
    return out
