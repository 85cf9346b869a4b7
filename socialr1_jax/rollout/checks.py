"""Checks of sampling arguments, shared by `sample` and the `generate` command.

Nothing is rounded or coerced: 2.7 new tokens or a token id of 1.7 is an error, not 2 or 1, and a
prompt given as text instead of token ids says so. Errors are `ArgumentError` (a ValueError) that
name the argument and the value, so a command line can name its flag instead.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np


class ArgumentError(ValueError):
    """A bad sampling argument: `arg` (its Python name), `value`, and why."""

    def __init__(self, arg: str, value, reason: str):
        self.arg, self.value, self.reason = arg, value, reason
        super().__init__(f"{arg}={value!r} {reason}")


def as_int(arg: str, value, *, minimum: int | None = None) -> int:
    """`value` as an int if it is an integer (int or NumPy integer; not bool, float or str)."""
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentError(arg, value, "must be an integer, not a bool")
    try:
        out = operator.index(value)
    except TypeError:
        raise ArgumentError(arg, value, "must be an integer" + (
            f" >= {minimum}" if minimum is not None else "")) from None
    if minimum is not None and out < minimum:
        raise ArgumentError(arg, value, "must be a positive integer" if minimum == 1
                            else f"must be an integer >= {minimum}")
    return out


def _as_float(arg: str, value) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ArgumentError(arg, value, "must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ArgumentError(arg, value, "must be a number") from None


def check_sampling(*, max_new_tokens, temperature, top_k, top_p, num_samples,
                   prefill_chunk=1) -> None:
    """The sampling arguments that do not depend on the model (ArgumentError naming the bad one)."""
    as_int("max_new_tokens", max_new_tokens, minimum=1)
    as_int("num_samples", num_samples, minimum=1)
    as_int("prefill_chunk", prefill_chunk, minimum=1)
    as_int("top_k", top_k, minimum=0)
    t = _as_float("temperature", temperature)
    if not (t >= 0 and math.isfinite(t)):
        raise ArgumentError("temperature", temperature, "must be >= 0 (0 = greedy)")
    p = _as_float("top_p", top_p)
    if not (0 < p <= 1):
        raise ArgumentError("top_p", top_p, "must be in (0, 1]")


def new_token_caps(max_new_tokens, rows: int) -> np.ndarray:
    """max_new_tokens (one cap, or a sequence of one per row) as `rows` ints >= 1."""
    if np.ndim(max_new_tokens) == 0:
        return np.full((rows,), as_int("max_new_tokens", max_new_tokens, minimum=1), np.int64)
    caps = list(max_new_tokens)
    if len(caps) != rows:
        raise ArgumentError("max_new_tokens", f"<{len(caps)} caps>", f"must be one cap or one "
                            f"per row ({rows} = prompts x num_samples)")
    return np.asarray([as_int(f"max_new_tokens[{i}]", v, minimum=1) for i, v in enumerate(caps)],
                      np.int64)


def token_lists(prompts) -> list[list[int]]:
    """Prompts (a sequence of token-id sequences) as lists of ints; text or non-integers refused."""
    if isinstance(prompts, (str, bytes)):
        raise ArgumentError("prompts", _short(prompts), "is text; sample() takes token ids "
                            "(encode the prompt with the tokenizer first)")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)):
            raise ArgumentError(f"prompts[{i}]", _short(p), "is text; sample() takes lists of "
                                "token ids (encode the prompt with the tokenizer first)")
        if isinstance(p, np.ndarray) and p.dtype.kind in "iu":
            out.append(p.reshape(-1).tolist())
            continue
        row = []
        for j, t in enumerate(p):
            if isinstance(t, (bool, np.bool_)) or not _is_int(t):
                raise ArgumentError(f"prompts[{i}][{j}]", t, "is not an integer token id")
            row.append(operator.index(t))
        out.append(row)
    return out


def _is_int(t) -> bool:
    try:
        operator.index(t)
    except TypeError:
        return False
    return True


def _short(text) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def check_against_model(prompts: list[list[int]], *, vocab: int, max_len: int, max_new_tokens: int,
                        eos_ids: Sequence[int], pad_id) -> None:
    """What depends on the model: ids inside the vocabulary, prompt + new tokens within the cache."""
    for e in eos_ids:
        if not (0 <= as_int("eos id", e) < vocab):
            raise ValueError(f"eos id {e!r} is outside the vocabulary [0, {vocab})")
    if not (0 <= as_int("pad_id", pad_id) < vocab):
        raise ValueError(f"pad_id={pad_id!r} is outside the vocabulary [0, {vocab})")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: nothing to sample")
    for i, pr in enumerate(prompts):
        if len(pr) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        bad = [t for t in pr if not (0 <= t < vocab)]
        if bad:
            raise ValueError(f"prompt {i} has token id(s) {bad[:5]} outside the vocabulary "
                             f"[0, {vocab})")
        if len(pr) + max_new_tokens > max_len:
            raise ValueError(f"prompt {i} has {len(pr)} tokens; with max_new_tokens="
                             f"{max_new_tokens} that needs {len(pr) + max_new_tokens} positions, "
                             f"more than the cache allows ({max_len})")
