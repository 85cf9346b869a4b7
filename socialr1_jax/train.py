"""`python -m socialr1_jax.train`: the GRPO training job (implemented in `socialr1_jax.rl.train`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.rl.train import *  # noqa: F401,F403  (the library entry points)
from socialr1_jax.rl.train import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
