"""What every command line shares: a user's mistake ends in one `error: ...` line and exit code 2.

A check on user input (a flag, a config key or value, a data or checkpoint file) raises
`UsageError`, or a subclass, with a message that names the flag, key, file or value. `run(main)`
prints it as one line and returns 2; anything else is a bug of ours and keeps its traceback.
`ArgumentParser` reports argparse's own errors (a missing or unknown flag, a value of the wrong
type) the same way, and its `--help` is unchanged.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(cli.run(main))
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, NoReturn, Optional, Sequence

USAGE_EXIT = 2


class UsageError(Exception):
    """A mistake in what the user gave us: printed as `error: <message>`, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line) instead of printing usage + exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> int:
    """Call `main(argv)`; a UsageError becomes one `error:` line on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        # The error is said; what a failed read's abandoned coroutines (Orbax, TensorStore) print
        # when collected at exit would bury it under "Exception ignored" tracebacks.
        sys.unraisablehook = lambda unraisable: None
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------
# Checks of common kinds of flag value, each failing with a UsageError that names the flag.

def positive_int(text: str) -> int:
    """argparse `type=` for an integer >= 1 (argparse names the flag in its error)."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse `type=` for an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def int_list(flag: str, text: str, *, minimum: int = 0) -> list[int]:
    """'8,16' -> [8, 16] for a comma-separated flag; UsageError naming the flag otherwise."""
    try:
        values = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected integers separated by commas") from None
    bad = [v for v in values if v < minimum]
    if bad:
        raise UsageError(f"{flag} {text!r}: {bad[0]} is below {minimum}")
    return values


def checked(flag: str, value, fn: Callable):
    """fn(value), with a ValueError from it reported as `{flag} {value!r}: {message}`."""
    try:
        return fn(value)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(f"{flag} {value!r}: {e}") from None


def mesh_sizes(flag: str, spec: str) -> dict:
    """A mesh flag ('1x8x1' or 'data=1,fsdp=8,tensor=1') as {axis: size}, every size >= 1."""
    from socialr1_jax.parallel.sharding import parse_mesh

    return checked(flag, spec, parse_mesh)


def os_error(flag: str, path: str, e: OSError) -> UsageError:
    """An OSError met while using a flag's file or folder, as one line naming both."""
    return UsageError(f"{flag} {path}: {e.strerror or e}")


# ----------------------------------------------------------------------------------------------
# The one rule for a file a command writes (generate's and evaluate's --out, memory_plan's
# OUT.json / OUT.md, evaluate's predictions file): checked with `output_file` before any work,
# written with `atomic_write`. The converters' --out folders follow the same rule in
# checkpoint/staging.py (`check_out`), with `parent_folder` from here.

def parent_folder(flag: str, path: str) -> str:
    """The folder `path` would be created in, which must exist (a typo is not created at the root
    of the filesystem) and be writable (a probe file is created and removed)."""
    import os

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    probe = os.path.join(parent, f".{os.path.basename(path)}.probe-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise os_error(flag, path, e) from None
    return parent


def model_folder(folder: str):
    """The model or checkpoint folder that `folder` is or lies in (config.json beside safetensors
    or numbered step folders), or None: no command writes its outputs into one."""
    import os

    d = os.path.realpath(folder)
    while True:
        names = os.listdir(d) if os.path.isdir(d) else []
        if "config.json" in names and any(
                n.endswith((".safetensors", ".safetensors.index.json")) or
                (n.isdigit() and os.path.isdir(os.path.join(d, n))) for n in names):
            return d
        up = os.path.dirname(d)
        if up == d:
            return None
        d = up


def describe(path: str) -> str:
    """What is at `path`, in words, for a refusal to replace it."""
    import os

    if os.path.islink(path):
        return "a symlink"
    if os.path.isdir(path):
        return "a folder"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"a file we cannot read ({e.strerror})"
    if len(head) >= 9 and head[8:9] == b"{" and path.endswith(".safetensors"):
        return "a safetensors weights file"
    if b"\0" in head:
        return "a binary file"
    return "a text file"


def output_file(flag: str, path: str, *, overwrite: bool, ours: Callable[[str], bool],
                kind: str, inputs: Optional[dict] = None) -> str:
    """Check, before any work, that the command may write its `kind` output at `path`; returns it
    absolute. The folder must exist and be writable; the file must not be an input ({flag: path})
    nor lie in a model or checkpoint folder; an existing file is replaced only with --overwrite,
    and only when `ours(path)` says it is a file of this kind (never a weights file, say)."""
    import os

    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    parent = parent_folder(flag, path)
    for in_flag, inp in (inputs or {}).items():
        if inp and os.path.exists(inp) and (
                os.path.realpath(inp) == os.path.realpath(path) or
                os.path.realpath(parent).startswith(os.path.realpath(inp) + os.sep)):
            raise UsageError(f"{flag} {path} is {'the' if os.path.isfile(inp) else 'inside the'} "
                             f"input ({in_flag} {inp}); choose another name")
    home = model_folder(parent)
    if home is not None:
        raise UsageError(f"{flag} {path} is inside the model/checkpoint folder {home}; "
                         "write outputs elsewhere")
    if os.path.lexists(path):
        if not overwrite:
            raise UsageError(f"{flag} {path} already exists; pass --overwrite to replace it")
        if os.path.islink(path) or not (os.path.getsize(path) == 0 or ours(path)):
            raise UsageError(f"{flag} {path} is {describe(path)}, not {kind}; --overwrite "
                             f"replaces only {kind}: delete it yourself or choose another name")
    return path


def json_with(*keys: str) -> Callable[[str], bool]:
    """An `ours` test for output_file: a JSON object file holding `keys`."""
    def test(path: str) -> bool:
        import json

        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return test


def jsonl_with(*keys: str) -> Callable[[str], bool]:
    """An `ours` test for output_file: a JSONL file whose first line is an object with `keys`."""
    def test(path: str) -> bool:
        import json

        try:
            with open(path, encoding="utf-8") as f:
                obj = json.loads(f.readline())
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return test


def text_starting(prefix: str) -> Callable[[str], bool]:
    """An `ours` test for output_file: a text file that begins with `prefix`."""
    def test(path: str) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read(len(prefix)) == prefix
        except (OSError, ValueError):
            return False
    return test


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Write `path` through `PATH.tmp-<pid>` renamed into place when the block ends without an
    error: a crash or a full disk never leaves half a file under the name (nor a stray temp)."""
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
