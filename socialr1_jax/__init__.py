"""socialr1_jax: Social-R1 (GRPO + Social-Information-Processing rewards) for Qwen3 in JAX.

One subpackage per stage of the pipeline:

    social/      ToM data -> prompts; the Social-R1 rewards and judges; evaluation
    rollout/     sampling with a KV cache (sampler), tokenizers, `generate`
    jobs/        the run harness and the jobs on it: GRPO (train), SFT (sft), reward model
    rl/          advantages and loss (grpo) -> the jitted update (train_step); the Task protocol
    checkpoint/  HF <-> ours layout, safetensors, Orbax checkpoints, loading
    model/       Qwen3 in Flax NNX, its config, log-probs
    parallel/    the (data, fsdp, tensor) mesh, partition rules, multi-host

Command lines keep flat names: `python -m socialr1_jax.train`, `.generate`, `.memory_plan`,
`.train_rm`.
"""

from socialr1_jax.checkpoint.loading import load_model
from socialr1_jax.model.build import create_model, param_count
from socialr1_jax.model.config import ModelConfig, from_hf_config, preset
from socialr1_jax.model.qwen3 import KVCache, Qwen3
from socialr1_jax.parallel.sharding import make_mesh
from socialr1_jax.rl import grpo
from socialr1_jax.rollout.sampler import SampleResult, sample

__all__ = ["ModelConfig", "Qwen3", "KVCache", "create_model", "from_hf_config", "grpo",
           "load_model", "make_mesh", "param_count", "preset", "sample", "SampleResult"]
