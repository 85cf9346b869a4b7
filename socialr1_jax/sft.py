"""`python -m socialr1_jax.sft`: see socialr1_jax/jobs/sft.py."""
import sys

from socialr1_jax import cli
from socialr1_jax.jobs.sft import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
