"""`python -m socialr1_jax.evaluate`: accuracy on a ToM benchmark (implemented in `socialr1_jax.social.evaluate`)."""

import sys

from socialr1_jax import cli
from socialr1_jax.social.evaluate import *  # noqa: F401,F403  (the library entry points: run, ...)
from socialr1_jax.social.evaluate import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
