"""`python -m socialr1_jax.generate`: sample completions from a checkpoint (implemented in `socialr1_jax.rollout.generate`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.rollout.generate import *  # noqa: F401,F403  (the library entry points)
from socialr1_jax.rollout.generate import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
