"""`python -m socialr1_jax.train_rm`: pairwise reward-model training (`socialr1_jax.jobs.train_rm`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.jobs.train_rm import *  # noqa: F401,F403  (the library entry points)
from socialr1_jax.jobs.train_rm import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
