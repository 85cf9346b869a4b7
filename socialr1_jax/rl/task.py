"""What the trainer needs from a task: prompts for a step, and a score for each completion.

A task hands the trainer prompts (token-id lists) and scores completions as a plain array. The
toy task (`toy_task.py`) and the Social-R1 task implement it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np


@dataclasses.dataclass
class PromptBatch:
    """Prompts of one step: token ids per prompt, and whatever the task needs to score them."""

    ids: list[list[int]]
    meta: list[Any]


class Task(Protocol):
    """What the trainer needs from a task."""

    eos_ids: Sequence[int]
    pad_id: int

    def prompts(self, step: int, n: int) -> PromptBatch:
        """The `n` prompts of training step `step` (deterministic for a given seed)."""

    def rewards(self, prompts: PromptBatch, completions: np.ndarray, mask: np.ndarray,
                group_size: int) -> np.ndarray:
        """Scores [n * group_size] of completions [n * group_size, C] (row i*G + j = sample j of
        prompt i), mask [.., C] = 1 on generated tokens up to and including EOS."""
