"""`python -m socialr1_jax.train`: the GRPO training job (implemented in `socialr1_jax.jobs.train`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.jobs.train import *  # noqa: F401,F403  (the library entry points)
from socialr1_jax.jobs.train import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
