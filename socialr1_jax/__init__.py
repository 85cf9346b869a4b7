"""socialr1_jax: Social-R1 (GRPO + Social-Information-Processing rewards) for Qwen3 in JAX.

The pipeline, one module per stage:
    data -> prompts -> sampling (sampler.py) -> rewards -> advantages / loss (grpo.py)
    -> update (train_step.py) -> checkpoint (checkpoint.py)
with the model in model.py, its sharding rules in sharding.py and the HF <-> ours table in
hf_layout.py.
"""

from socialr1_jax.config import ModelConfig, from_hf_config, preset
from socialr1_jax.loading import create_model, load_model, param_count
from socialr1_jax.model import KVCache, Qwen3
from socialr1_jax.sampler import SampleResult, sample
from socialr1_jax.sharding import make_mesh

__all__ = ["ModelConfig", "Qwen3", "KVCache", "create_model", "from_hf_config", "load_model",
           "make_mesh", "param_count", "preset", "sample", "SampleResult"]
