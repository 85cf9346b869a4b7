"""Reading a completion in the Social-R1 format: `<think>...</think> ... <Answer>X</Answer>`.

The rules of the Social-R1 reward (Social-R1 paper and code): the format holds when the whole
completion matches `^<think>(.*?)</think>(.*?)<Answer>(.*?)</Answer>$` (dot matches newline); the
answer is the first capital letter after `<Answer>` (`<Answer>\\s*([A-Z])`). The rewards and the
evaluator both read completions through these functions, so training and evaluation agree.
"""

from __future__ import annotations

import re
from typing import Optional

FORMAT_RE = re.compile(r"^<think>(.*?)</think>(.*?)<Answer>(.*?)</Answer>$", re.DOTALL)
ANSWER_RE = re.compile(r"<Answer>\s*([A-Z])")
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def format_ok(completion: str) -> bool:
    """True when the whole completion is `<think>..</think>..<Answer>..</Answer>`."""
    return FORMAT_RE.match(completion) is not None


def extract_answer(completion: str) -> Optional[str]:
    """The first capital letter after `<Answer>` (whitespace skipped), or None when there is none."""
    m = ANSWER_RE.search(completion)
    return m.group(1) if m else None


def extract_think(completion: str) -> str:
    """The stripped text inside the first `<think>...</think>`, or '' when there is none."""
    m = THINK_RE.search(completion)
    return m.group(1).strip() if m else ""


def normalize_letter(gold: str) -> str:
    """A gold label as one capital letter: case and punctuation folded ('b', '(B)', 'B.' -> 'B')."""
    letters = re.sub(r"[^A-Za-z]", "", str(gold)).upper()
    if len(letters) != 1:
        raise ValueError(f"gold answer {gold!r} is not a single option letter")
    return letters
