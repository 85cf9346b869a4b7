"""The error every checkpoint reader and writer raises."""

from socialr1_jax.cli import UsageError


class CheckpointError(UsageError, ValueError):
    """A checkpoint file is missing, truncated, or disagrees with the model (names the file).

    A bad checkpoint is a bad input: a command line prints it as one `error:` line (exit 2).
    """
