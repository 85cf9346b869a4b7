"""Small helpers shared by the benchmark scripts (run as `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time


def one_cpu_device() -> None:
    """Set the environment of a benchmark that runs on ONE CPU device, before jax is imported:
    XLA then runs each matmul on both cores (8 forced devices, the tests' setting, would split
    them); the tokenizers' own threads are off."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                     os.environ.get("XLA_FLAGS", "")).strip()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hf_qwen3_config(preset_name: str, *, min_vocab: int = 0):
    """transformers' Qwen3Config with the shapes of our preset `preset_name` (tied head, default
    RoPE at the preset's theta, 4096 positions), the vocabulary raised to `min_vocab` (the
    byte-level test tokenizer's 272) when the preset's is smaller: the benchmarks' random HF
    checkpoints."""
    from transformers import Qwen3Config

    from socialr1_jax.model.config import preset

    c = preset(preset_name)
    return Qwen3Config(vocab_size=max(c.vocab_size, min_vocab), hidden_size=c.hidden_size,
                       num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                       num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
                       intermediate_size=c.intermediate_size, tie_word_embeddings=True,
                       rms_norm_eps=c.rms_norm_eps, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})


def add_options(ap, **defaults) -> None:
    """One `--name` option of argparse parser `ap` per keyword, in order (underscores become
    dashes: max_new=256 is --max-new), typed by its default: the benchmarks' many plain
    numeric and string options, written once as a table."""
    for name, default in defaults.items():
        if type(default) not in (int, float, str):
            raise TypeError(f"option {name}: default {default!r} is not an int, float or str")
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


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


def provenance() -> dict:
    """What a results file records about its run: the commit, the UTC date and the machine's
    load averages (1, 5, 15 min), so a number can be traced to its code and judged against the
    load it ran under."""
    import datetime

    return {"commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def write_results(path: str, content) -> str:
    """Write one results file through a temporary file renamed into place, with its provenance:
    a dict becomes JSON with a "provenance" entry, text gets a first line naming it. Returns the
    path."""
    import json

    prov = provenance()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        if isinstance(content, dict):
            json.dump({"provenance": prov, **content}, f, indent=2)
        else:
            f.write(f"Commit {prov['commit']}, {prov['date']}, load average "
                    f"{', '.join(map(str, prov['load_avg']))} ({prov['cpus']} CPUs).\n\n")
            f.write(content)
    os.replace(path + ".tmp", path)
    return path
