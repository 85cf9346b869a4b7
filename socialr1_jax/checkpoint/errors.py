"""The error every checkpoint reader and writer raises."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, or disagrees with the model (names the file)."""
