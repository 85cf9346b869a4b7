"""Benchmark: HF -> Orbax -> HF conversion of a random Qwen3-shaped bf16 checkpoint vs a plain copy.

    python benchmarks/convert_bench.py [--preset qwen3-4b|bench-100m|tiny] [--repeats 6]
                                       [--cold] [--work DIR] [--keep]

Makes an HF-layout checkpoint of the preset's shapes (random bf16, two safetensors shards + index,
written tensor by tensor) and, untimed, its Orbax conversion; then times, each in a fresh
subprocess: a plain copy of the two shard files (shutil.copyfile), `conversion.hf_to_orbax`, and
`conversion.orbax_to_hf` of that conversion. Before each child (untimed): its earlier output is
deleted, `sync` runs, the work dir's files are dropped from the page cache and the child's input
is brought back in (see `warm`; with --cold, not: inputs come from disk). So every task starts
alike: its input cached (or not), the same free memory, no dirty pages or freed blocks of another.
Each repeat rotates the order of the three tasks. Each child imports everything first, resets its
peak-RSS counter (/proc/self/clear_refs) and reports wall time, peak RSS (VmHWM) above its RSS
after imports, and the time until its output is fsynced (a copy may return before its bytes are
on disk). Medians over --repeats. The last export is compared with the source bit for bit.
Results: printed table, benchmarks/results/convert_bench[.<preset>][.cold].{json,md}.
Targets (issue 4): each direction <= 2x the copy's wall time; peak RSS <= 3 GB above baseline.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

TIME_RATIO_TARGET, RSS_TARGET_GB = 2.0, 3.0


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(task: str, src: str, dst: str) -> None:
    """Run one timed task in this (fresh) process and print a JSON line with its numbers."""
    import numpy  # noqa: F401  everything the tasks need is imported before the baseline
    import orbax.checkpoint  # noqa: F401

    from conversion import hf_to_orbax, orbax_to_hf
    import socialr1_jax.checkpoint.stream  # noqa: F401

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if task == "copy":
        os.makedirs(dst)
        for name in sorted(os.listdir(src)):
            if name.endswith(".safetensors"):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        nbytes = sum(os.path.getsize(os.path.join(dst, n)) for n in os.listdir(dst))
    elif task == "hf_to_orbax":
        nbytes = hf_to_orbax.convert(src, dst, progress=False).nbytes
    elif task == "orbax_to_hf":
        nbytes = orbax_to_hf.export(src, dst, max_shard_size="5GB", progress=False).nbytes
    else:
        raise ValueError(f"unknown task {task}")
    wall = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    from conversion import fsync_tree

    fsync_tree(dst)  # and until the output is on disk: page-cache effects aside
    durable = time.perf_counter() - t0
    print(json.dumps({"task": task, "wall_s": wall, "durable_s": durable,
                      "peak_rss_above_base": peak, "base_rss": base, "bytes": nbytes}))


MADV_POPULATE_READ = 22  # Linux >= 5.14; not exported by Python 3.11's mmap module


def warm(path: str) -> None:
    """Bring every file under `path` into the page cache in 2 MB folios where the kernel can.

    Read with plain reads, a file's first megabytes land in small folios while readahead ramps up,
    so a checkpoint of many 20-60 MB zarr chunk files ends up mostly in 4 KB pages and two 4 GB
    safetensors shards mostly in 2 MB ones (measured: /proc/meminfo FileHugePages 1.6 vs 8.6 GB),
    and every later kernel copy of the small pages runs ~3x slower. Faulting the files in through
    a MADV_HUGEPAGE mapping gives every task's input the same 2 MB folios instead.
    """
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if not size:
                    continue
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                try:
                    m.madvise(mmap.MADV_HUGEPAGE)
                    try:
                        m.madvise(MADV_POPULATE_READ)
                    except OSError:  # older kernel: touch one byte per page instead
                        for off in range(0, size, mmap.PAGESIZE):
                            m[off]
                finally:
                    m.close()


def evict(path: str) -> None:
    """Drop the (clean) page-cache pages of every file under `path`."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_child(task: str, src: str, dst: str, *, cold: bool = False) -> dict:
    # Same start for every task: its output gone, every dirty page (and ext4's discards of freed
    # blocks, processed at the journal commit that sync forces) flushed, and of the work dir only
    # its input in the page cache (or nothing, cold), so each finds the same free memory.
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    evict(os.path.dirname(src))
    if not cold:
        warm(src)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", task, src, dst],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_source(cfg, hf_dir: str, seed: int = 0, norm_value: float | None = None) -> int:
    """A random bf16 HF checkpoint of cfg's shapes in two shards; returns its tensor bytes.

    Every tensor is N(0, 0.02) values; with `norm_value`, the RMSNorm scales are that constant
    instead (as a freshly initialised transformers model has them: 1).
    """
    import ml_dtypes
    import numpy as np
    from tqdm import tqdm

    from socialr1_jax.checkpoint import hf_layout
    from socialr1_jax.checkpoint.safetensors_io import INDEX_NAME, write_file

    os.makedirs(hf_dir)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(seed)
    # A pool of 32M normal values; each tensor is slices of it at random offsets: realistic
    # values, generated at memory speed rather than one normal draw per weight.
    pool = (0.02 * rng.standard_normal(1 << 25, dtype=np.float32)).astype(bf16)
    table = hf_layout.layout(cfg)
    sizes = [int(np.prod(e.hf_shape)) * 2 for e in table]
    half, acc, cut = sum(sizes) / 2, 0, len(table)
    for i, s in enumerate(sizes):
        acc += s
        if acc >= half:
            cut = i + 1
            break
    groups = [table[:cut], table[cut:]] if cut < len(table) else [table]
    names = ([f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
             if len(groups) > 1 else ["model.safetensors"])
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="making source", file=sys.stderr)

    def tensors(entries):
        for e in entries:
            n = int(np.prod(e.hf_shape))
            out = np.empty(n, bf16)
            if norm_value is not None and "norm" in e.hf_name:
                out[:] = norm_value
                bar.update(n * 2)
                yield out.reshape(e.hf_shape)
                continue
            for start in range(0, n, 1 << 24):
                k = min(1 << 24, n - start)
                off = int(rng.integers(0, pool.size - k + 1))
                out[start:start + k] = pool[off:off + k]
            bar.update(n * 2)
            yield out.reshape(e.hf_shape)

    for fname, group in zip(names, groups):
        write_file(os.path.join(hf_dir, fname), [(e.hf_name, e.hf_shape, bf16) for e in group],
                   tensors(group), metadata={"format": "pt"})
    bar.close()
    if len(groups) > 1:
        with open(os.path.join(hf_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": sum(sizes)},
                       "weight_map": {e.hf_name: n for n, g in zip(names, groups) for e in g}}, f)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf_config(), f, indent=2)
    with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [151645, 151643], "pad_token_id": 151643}, f)
    return sum(sizes)


def verify(src: str, out: str) -> int:
    """Bitwise compare every tensor of `out` with `src`, one at a time; returns tensors compared."""
    import numpy as np

    from conversion import read_tensor
    from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir

    a, b = SafetensorsDir(src), SafetensorsDir(out)
    if sorted(a.keys()) != sorted(b.keys()):
        raise AssertionError(f"tensor names differ: {sorted(set(a.keys()) ^ set(b.keys()))[:5]}")
    for name in a.keys():
        x, y = read_tensor(a, name), read_tensor(b, name)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
                x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)):
            raise AssertionError(f"tensor {name} differs after HF -> Orbax -> HF")
    return len(a.keys())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen3-4b")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "work", "convert_bench"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--cold", action="store_true",
                   help="start every task with nothing of the work dir cached (inputs read from "
                        "disk) instead of its input cached")
    p.add_argument("--child", nargs=3, metavar=("TASK", "SRC", "DST"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(*a.child)
        return 0

    from bench_common import git_commit
    from socialr1_jax.model.config import preset

    load_start = os.getloadavg()[0]
    cfg = preset(a.preset, param_dtype="bfloat16", dtype="bfloat16")
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    src, ckpt_in, ckpt_out, out, copy_dst = (
        os.path.join(work, n) for n in ("hf", "orbax_in", "orbax_out", "hf_out", "copy"))
    try:
        t0 = time.perf_counter()
        nbytes = make_source(cfg, src)
        print(f"source: {a.preset}, {cfg.num_params():,} params, {nbytes / 1e9:.3f} GB bf16 in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        run_child("hf_to_orbax", src, ckpt_in)  # untimed: the input of the orbax_to_hf runs
        # The VM's page cache speed depends on what ran before (fresh guest pages cost more), so
        # each repeat rotates the order of the three tasks; none always goes first.
        tasks = {"copy": (src, copy_dst), "hf_to_orbax": (src, ckpt_out),
                 "orbax_to_hf": (ckpt_in, out)}
        runs = {k: [] for k in tasks}
        order = list(tasks)
        for r in range(a.repeats):
            for k in order[r % 3:] + order[:r % 3]:
                runs[k].append(run_child(k, *tasks[k], cold=a.cold))
                if k != "orbax_to_hf":  # one output on disk at a time (the last export is checked)
                    shutil.rmtree(tasks[k][1])
            print(f"repeat {r + 1}/{a.repeats}: " + ", ".join(
                f"{k} {v[-1]['wall_s']:.2f} s / {v[-1]['peak_rss_above_base'] / 1e9:.2f} GB"
                for k, v in runs.items()), flush=True)
        checked = verify(src, out)
        print(f"round trip: {checked} tensors bitwise identical", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    dur = {k: statistics.median(x["durable_s"] for x in v) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_above_base"] for x in v) for k, v in runs.items()}
    rows = []
    for k in runs:
        ratio = med[k] / med["copy"]
        rows.append({"task": k, "wall_s_median": round(med[k], 3),
                     "wall_s_all": [round(x["wall_s"], 3) for x in runs[k]],
                     "ratio_vs_copy": round(ratio, 3),
                     "with_fsync_s_median": round(dur[k], 3),
                     "with_fsync_s_all": [round(x["durable_s"], 3) for x in runs[k]],
                     "with_fsync_ratio_vs_copy": round(dur[k] / dur["copy"], 3),
                     "peak_rss_above_baseline_gb": round(rss[k] / 1e9, 3),
                     "throughput_gb_s": round(nbytes / med[k] / 1e9, 3),
                     "meets_time": k == "copy" or ratio <= TIME_RATIO_TARGET,
                     "meets_time_with_fsync": (k == "copy"
                                               or dur[k] / dur["copy"] <= TIME_RATIO_TARGET),
                     "meets_rss": rss[k] / 1e9 <= RSS_TARGET_GB})
    head = (f"| task | wall s (median of {a.repeats}) | x copy | wall + fsync of output s | x copy "
            "| peak RSS above baseline (GB) | GB/s | targets met (wall / with fsync) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ok = "-" if row["task"] == "copy" else " / ".join(
            "yes" if t and row["meets_rss"] else "NO"
            for t in (row["meets_time"], row["meets_time_with_fsync"]))
        lines.append(f"| {row['task']} | {row['wall_s_median']:.2f} | {row['ratio_vs_copy']:.2f} | "
                     f"{row['with_fsync_s_median']:.2f} | {row['with_fsync_ratio_vs_copy']:.2f} | "
                     f"{row['peak_rss_above_baseline_gb']:.3f} | {row['throughput_gb_s']:.2f} | {ok} |")
    table = "\n".join(lines)
    print(table)
    result = {"preset": a.preset, "params": cfg.num_params(), "bytes": nbytes, "dtype": "bfloat16",
              "page_cache": "cold (inputs read from disk)" if a.cold else
              "warm (input cached in 2 MB folios, see warm())",
              "repeats": a.repeats, "round_trip_bitwise_tensors": checked, "rows": rows,
              "targets": {"time_ratio_vs_copy": TIME_RATIO_TARGET, "peak_rss_gb": RSS_TARGET_GB},
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "commit": git_commit(), "load_avg_start": load_start,
              "load_avg_end": os.getloadavg()[0]}
    stem = "convert_bench" if a.preset == "qwen3-4b" else f"convert_bench.{a.preset}"
    stem += ".cold" if a.cold else ""
    res_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(res_dir, stem + ".md"), "w") as f:
        f.write(f"# Conversion benchmark ({a.preset}: {cfg.num_params():,} params, "
                f"{nbytes / 1e9:.2f} GB bf16, two shards)\n\n"
                f"Plain copy vs `conversion.hf_to_orbax` vs `conversion.orbax_to_hf`, each in a "
                f"fresh subprocess, " + ("nothing of the work dir in the page cache (inputs read "
                                         "from disk)" if a.cold else "only its input in the page "
                                         "cache (2 MB folios, see `warm()`)") +
                f", median of {a.repeats}, task order rotated each repeat; "
                f"peak RSS = VmHWM minus "
                f"RSS after imports; 'wall + fsync' also waits until the output files are on disk. "
                f"Round trip verified bitwise on {checked} tensors.\n"
                f"Targets: <= {TIME_RATIO_TARGET}x copy, <= {RSS_TARGET_GB} GB. Load average "
                f"(1 min) {load_start:.2f} at start, {result['load_avg_end']:.2f} at end; "
                f"commit {result['commit']}.\n\n"
                f"{table}\n\nCommand: `python benchmarks/convert_bench.py --preset {a.preset} "
                f"--repeats {a.repeats}{' --cold' if a.cold else ''}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
