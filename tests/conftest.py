"""Shared test setup: 8 simulated CPU devices, and tiny HF Qwen3 checkpoints built offline."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.hf_fixtures import make_hf_checkpoint  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny random fp32 Qwen3 checkpoint (tied, GQA 2) saved by transformers."""
    d = tmp_path_factory.mktemp("tiny_hf")
    make_hf_checkpoint(d, tie=True, heads=4, kv_heads=2, seed=0)
    return str(d)
