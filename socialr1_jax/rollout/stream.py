"""Tokens handed to the host while the sampler's decode loop runs (token-incremental streaming).

`sample(..., on_tokens=fn)` compiles its decode loop with a host callback
(`jax.experimental.io_callback`, ordered, so the steps arrive in order) after each step. The
compiled program cannot hold a Python function of one call, so it carries a traced int32 id
instead, and `deliver` (the one function every such program calls) looks the id up here. An
OpenAI-style server streams each step's tokens to its clients this way (the OpenAI API's
`stream: true` sends a `chat.completion.chunk` per piece of text as it is produced).
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

OnTokens = Callable[[int, np.ndarray], None]  # (step, tokens [B], -1 where a row is done)

_sinks: dict[int, OnTokens] = {}
_lock = threading.Lock()
_ids = itertools.count(1)


def register(fn: OnTokens) -> int:
    """A fresh id under which `deliver` calls fn (free it with `release`)."""
    with _lock:
        sid = next(_ids) % (1 << 31)
        _sinks[sid] = fn
    return sid


def release(sid: int) -> None:
    """Forget the function of id `sid` (steps still arriving for it are dropped)."""
    with _lock:
        _sinks.pop(int(sid), None)


def deliver(sid, step, tokens) -> None:
    """The host side of the callback: fn(step, tokens) of the call's registered function.

    An exception of fn is logged and swallowed: it must not abort the compiled program (the
    sampler's own result is still returned whole)."""
    with _lock:
        fn: Optional[OnTokens] = _sinks.get(int(sid))
    if fn is None:
        return
    try:
        fn(int(step), np.asarray(tokens))
    except Exception:  # noqa: BLE001 - a consumer's fault; the sampling goes on
        log.exception("on_tokens callback failed at step %d", int(step))
