"""Summarise a `jax.profiler.trace(..., create_perfetto_trace=True)` trace: device kernels vs gaps.

Standard library only (the GPU machine has no profiling packages beyond JAX's own).

The Perfetto JSON has one process per device ('/device:GPU:0', with one thread per CUDA stream)
and one for the host ('/host:CPU'). Every complete event ('ph': 'X') of a device process is an
activity of the device: a kernel, or a memory copy / set. Busy time is the union of those
intervals (streams may overlap); the span runs from the first start to the last end; gaps are
span minus busy: time the device sat idle between launches.

On a CPU-only run there is no device process; then the XLA:CPU worker threads of the host
process ('tf_XLA...' threads: the thunks XLA runs) stand in, so the `--tiny` check exercises the
same code.
"""

from __future__ import annotations

import glob
import gzip
import json
import os

COPY_WORDS = ("memcpy", "memset", "MemcpyH2D", "MemcpyD2H", "MemcpyD2D")


def find_trace(trace_dir: str) -> str:
    """The newest perfetto_trace.json.gz under trace_dir."""
    found = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                             recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"{trace_dir}: no perfetto_trace.json.gz (was the trace made "
                                "with create_perfetto_trace=True?)")
    return found[-1]


def load_events(path: str) -> list[dict]:
    """The trace's events (a gzipped or plain JSON file, dict or list form)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def device_events(events: list[dict]) -> tuple[list[dict], str]:
    """(the device's complete events, where they came from)."""
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    dev = {pid for pid, name in procs.items() if name.startswith("/device:")}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if dev:
        # The device process may also hold derived lines ('XLA Ops', 'XLA Modules') that repeat
        # the kernels' time per HLO op: when CUDA stream lines are there, count only those.
        streams = {k for k, name in threads.items() if k[0] in dev and name.startswith("Stream")}
        picked = [e for e in complete if e["pid"] in dev
                  and (not streams or (e["pid"], e.get("tid")) in streams)]
        names = sorted({threads.get(k, str(k)) for k in streams}) if streams else ["all lines"]
        return picked, (", ".join(sorted(procs[p] for p in dev)) + ": " + ", ".join(names))
    workers = {k for k, name in threads.items() if name.startswith("tf_XLA")}
    # Host worker threads nest events (a thunk inside an executor call): keep the innermost
    # level only by dropping events that contain another one of the same thread.
    ev = [e for e in complete if (e["pid"], e.get("tid")) in workers]
    return _leaves(ev), "host XLA:CPU worker threads (no device in the trace)"


def _leaves(events: list[dict]) -> list[dict]:
    out = []
    by_thread: dict = {}
    for e in events:
        by_thread.setdefault((e["pid"], e.get("tid")), []).append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        for i, e in enumerate(evs):
            end = e["ts"] + e["dur"]
            nxt = evs[i + 1] if i + 1 < len(evs) else None
            if nxt is None or nxt["ts"] >= end:  # nothing starts inside it
                out.append(e)
    return out


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarize(events: list[dict]) -> dict:
    """Counts and times (microseconds) of the device activity in `events`."""
    dev, source = device_events(events)
    if not dev:
        return {"source": source, "kernels": 0, "copies": 0, "busy_us": 0.0, "span_us": 0.0,
                "gap_us": 0.0, "top": []}
    is_copy = [any(w.lower() in e.get("name", "").lower() for w in COPY_WORDS) for e in dev]
    copies = [e for e, c in zip(dev, is_copy) if c]
    kernels = [e for e, c in zip(dev, is_copy) if not c]
    start = min(e["ts"] for e in dev)
    end = max(e["ts"] + e["dur"] for e in dev)
    busy = union_us([(e["ts"], e["ts"] + e["dur"]) for e in dev])
    by_name: dict = {}
    for e in kernels:
        n, t = by_name.get(e["name"], (0, 0.0))
        by_name[e["name"]] = (n + 1, t + e["dur"])
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:10]
    return {"source": source, "kernels": len(kernels), "copies": len(copies),
            "busy_us": busy, "span_us": end - start, "gap_us": (end - start) - busy,
            "top": [{"name": k[:120], "count": n, "total_us": t} for k, (n, t) in top]}


def per_step(short: dict, long: dict, steps: int) -> dict:
    """Per decode step, from the summaries of a 1-token call and a (1 + steps)-token call."""
    def d(key):
        return (long[key] - short[key]) / steps
    busy, span = d("busy_us"), d("span_us")
    return {"kernels_per_step": d("kernels"), "copies_per_step": d("copies"),
            "busy_us_per_step": busy, "span_us_per_step": span,
            "gap_us_per_step": span - busy,
            "busy_fraction": busy / span if span > 0 else float("nan")}
