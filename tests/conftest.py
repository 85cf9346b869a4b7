"""Shared test setup: 8 simulated CPU devices, and tiny HF Qwen3 checkpoints built offline."""

import os

# Must happen before jax is imported anywhere in the test session.
# The tests' tiny models spend most of their time compiling, so LLVM's optimisation of the
# machine code is off (what jax_disable_most_optimizations sets). XLA's own HLO passes (fusion,
# layouts, sharding, scheduling) run as usual, so the programs tested are the programs users
# run; only their CPU machine code is built quicker and runs slower. Measured on
# tests/test_train_step.py + tests/test_refill.py: 252 -> 146 s of CPU. Subprocesses that drop
# XLA_FLAGS (the README demo, the memory-plan CLI) run as a user's command does.
# SOCIALR1_TEST_LLVM_OPT=1 keeps the optimisation.
_fast = "" if os.environ.get("SOCIALR1_TEST_LLVM_OPT") else \
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _fast +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for this session and the subprocesses it starts (training
# runs, resume, multi-host, CLIs compile the same programs again): fresh each session, removed at
# exit. It cut tests/test_train_resume.py from 91 to 54 s.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="socialr1-jax-cache-")
    atexit.register(shutil.rmtree, _cache, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from tests.hf_fixtures import make_hf_checkpoint  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny random fp32 Qwen3 checkpoint (tied, GQA 2) saved by transformers."""
    d = tmp_path_factory.mktemp("tiny_hf")
    make_hf_checkpoint(d, tie=True, heads=4, kv_heads=2, seed=0)
    return str(d)

