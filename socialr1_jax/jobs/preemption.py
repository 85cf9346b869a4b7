"""SIGTERM (a pod's preemption) and Ctrl-C: finish the step in hand, save, and exit.

`StopSignals` is a context manager that turns the first SIGTERM or SIGINT into a request the
training loop polls between phases of a step; the loop then saves a checkpoint and returns. A
second Ctrl-C aborts at once (KeyboardInterrupt), without saving. On a pod the processes agree
on the step to stop at (`requested()` is a collective: any process's request stops them all),
since a checkpoint is written by every process together.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

import jax
import numpy as np

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopSignals:
    """Catch SIGTERM / SIGINT while the loop runs (a no-op outside the main thread)."""

    def __init__(self, notify: Optional[Callable[[str], None]] = None):
        self.signum: Optional[int] = None
        self._notify = notify
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        if self.signum is None:
            self.signum = signum
            if self._notify is not None:
                what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
                extra = " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else ""
                self._notify(f"{what}: stopping after this step and saving a checkpoint{extra}")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in EXIT_CODES:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        return False

    def requested(self) -> bool:
        """Whether any process was asked to stop (a collective on a pod: call it on every
        process at the same point of the loop)."""
        mine = self.signum is not None
        if jax.process_count() == 1:
            return mine
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(mine))
        if not mine and np.any(flags):
            self.signum = signal.SIGTERM  # another host was preempted: this one stops too
        return bool(np.any(flags))

    @property
    def name(self) -> str:
        """'SIGTERM' or 'Ctrl-C' for the signal received."""
        return "SIGTERM" if self.signum == signal.SIGTERM else "Ctrl-C"

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it."""
        return EXIT_CODES.get(self.signum, 1)
