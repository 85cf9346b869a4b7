"""`python -m socialr1_jax.memory_plan`: per-device memory of a GRPO run (implemented in `socialr1_jax.jobs.memory_plan`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.jobs.memory_plan import *  # noqa: F401,F403  (the library entry points)
from socialr1_jax.jobs.memory_plan import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
