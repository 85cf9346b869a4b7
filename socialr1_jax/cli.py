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
