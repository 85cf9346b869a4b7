"""Stage: rollout. The jitted KV-cache sampler (`sampler`), tokenizers and chat templates
(`tokenizer`), and the `python -m socialr1_jax.generate` command (`generate`)."""
