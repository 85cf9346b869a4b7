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


def writable_file(flag: str, path: str) -> str:
    """Check, before any work, that a file can be created at `path` (its folder exists and is
    writable: a probe file is created and removed); returns the absolute path."""
    import os

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    probe = f"{path}.probe-{os.getpid()}"
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise os_error(flag, path, e) from None
    return path
