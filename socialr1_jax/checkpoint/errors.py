"""The error every checkpoint reader and writer raises."""

from socialr1_jax.cli import UsageError


class CheckpointError(UsageError, ValueError):
    """A checkpoint file is missing, truncated, or disagrees with the model (names the file).

    A bad checkpoint is a bad input: a command line prints it as one `error:` line (exit 2).
    """


def damaged_chunk(e: BaseException, checkpoint: str):
    """A TensorStore read failure on a missing or truncated chunk file (`NOT_FOUND: chunk ... is
    missing`, `Error reading local file ...: Not enough data`) as one CheckpointError naming the
    checkpoint, the parameter and the file; None for any other error."""
    import os
    import re

    text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    m = re.search(r'(?:stored at local file|Error reading local file) "([^"]+)"', text)
    if m is None:
        return None
    chunk = m.group(1)
    param = os.path.basename(os.path.dirname(chunk))
    what = "is missing" if "NOT_FOUND" in text or "is missing" in text else "is truncated"
    return CheckpointError(f"checkpoint {checkpoint} is damaged: parameter {param}: chunk file "
                           f"{chunk} {what}")
