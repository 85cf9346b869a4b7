"""Small helpers shared by the benchmark scripts (run as `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import statistics
import subprocess
import time


def median_time(fn, repeats: int, *, warmup: bool = False) -> tuple[float, list[float]]:
    """(median, all) wall seconds of `repeats` calls of fn(), after one untimed call if
    `warmup`. fn must wait for its own results (block_until_ready, synchronize)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def wait_for_quiet(max_load: float | None, wait_s: float = 1800.0) -> float:
    """Wait (up to wait_s) until the 1-minute load average is below max_load; return it.

    This machine's 2 cores are shared: a run started under heavy load slows the two sides
    unequally, so a benchmark can ask to start on a quiet machine. None = do not wait.
    """
    if max_load is not None:
        deadline = time.time() + wait_s
        while os.getloadavg()[0] >= max_load and time.time() < deadline:
            time.sleep(15)
    load = os.getloadavg()[0]
    print(f"load average (1 min) {load:.2f} at start", flush=True)
    return load


def git_commit() -> str:
    """The short commit hash of the checkout the benchmark runs from ('unknown' outside git);
    '+dirty' when tracked files differ from it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=here, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=here).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
