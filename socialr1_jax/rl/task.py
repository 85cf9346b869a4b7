"""What the trainer needs from a task: prompts for a step, and a score for each completion.

A task hands the trainer prompts (token-id lists) and scores completions. The toy task
(`toy_task.py`) and the Social-R1 task (`social/task.py`) implement it; so can a user's own
class, passed to `jobs.train.train(cfg, task=...)`.

Required:
    eos_ids, pad_id
    prompts(step, n) -> PromptBatch         deterministic in (step, n): the step IS the data
                                            position a checkpoint records, so a resumed run
                                            sees the prompts an uninterrupted one would
    rewards(prompts, completions, mask, group_size) -> np.ndarray [R] or Scores

Optional:
    write_side_files(root)                  write the tokenizer (tokenizer.json, ...) a task
                                            built itself into a checkpoint root, so `generate`,
                                            `evaluate` and `orbax_to_hf` work on a checkpoint
    state_dict() -> dict / load_state_dict(d)   JSON state beyond the step (saved in checkpoints)

On a pod each process scores only the rows its devices hold: `rewards` gets the PromptBatch of
those prompts (whole groups) and their completions, never the whole rollout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence

import numpy as np


@dataclasses.dataclass
class PromptBatch:
    """Prompts of one step: token ids per prompt, whatever the task needs to score them (meta),
    and optionally the prompt texts (written to samples.jsonl)."""

    ids: list[list[int]]
    meta: list[Any]
    texts: Optional[list[str]] = None

    def select(self, start: int, stop: int) -> "PromptBatch":
        """Prompts [start, stop) (the share of one process on a pod)."""
        return PromptBatch(self.ids[start:stop], self.meta[start:stop],
                           None if self.texts is None else self.texts[start:stop])


@dataclasses.dataclass
class Scores:
    """What `Task.rewards` may return instead of a plain array, for logging.

    rewards [R]: the score of each completion (what the advantages use).
    terms: every reward term per completion ({"format": [R], "em": [R], ...}); their means
        become metrics and each sample's values go to samples.jsonl.
    accuracy [R] (optional): 1 for a right answer; its mean is shown as `acc`.
    completions (optional): the decoded completions (samples.jsonl); token ids otherwise.
    metrics: extra per-step numbers (judge failures, cache hits, ...), logged as they are.
    """

    rewards: np.ndarray
    terms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    accuracy: Optional[np.ndarray] = None
    completions: Optional[list[str]] = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def as_scores(out, rows: int) -> Scores:
    """A task's `rewards(...)` result as Scores, checked: one finite-or-NaN float per row."""
    scores = out if isinstance(out, Scores) else Scores(np.asarray(out))
    r = np.asarray(scores.rewards, np.float32)
    if r.shape != (rows,):
        raise ValueError(f"the task returned rewards of shape {list(r.shape)} for {rows} "
                         "completions; expected one score per completion")
    terms = {}
    for k, v in scores.terms.items():
        v = np.asarray(v, np.float32)
        if v.shape != (rows,):
            raise ValueError(f"reward term {k!r} has shape {list(v.shape)}; expected [{rows}]")
        terms[k] = v
    acc = None if scores.accuracy is None else np.asarray(scores.accuracy, np.float32)
    if acc is not None and acc.shape != (rows,):
        raise ValueError(f"accuracy has shape {list(acc.shape)}; expected [{rows}]")
    return dataclasses.replace(scores, rewards=r, terms=terms, accuracy=acc)


class Task(Protocol):
    """What the trainer needs from a task (see the module docstring)."""

    eos_ids: Sequence[int]
    pad_id: int

    def prompts(self, step: int, n: int) -> PromptBatch:
        """The `n` prompts of training step `step` (deterministic for a given seed)."""

    def rewards(self, prompts: PromptBatch, completions: np.ndarray, mask: np.ndarray,
                group_size: int):
        """Scores [n * group_size] (an array, or `Scores`) of completions [n * group_size, C]
        (row i*G + j = sample j of prompt i), mask [.., C] = 1 on generated tokens up to and
        including EOS."""
