"""Stage: Social-R1. Theory-of-Mind data and prompts, the Social-R1 rewards and their judges,
and evaluation on ToM benchmarks."""
