"""What the HTTP judges are asked, and how their replies are read.

The structure judge's prompt is ours, written from the Social-R1 paper's account of Social
Information Processing (Crick & Dodge's SIP model as the paper uses it): four stages in order,
and the faults the paper names (reasoning parasitism: anchoring on the options before inferring
and justifying a chosen answer backwards; stages out of order or looping). It asks for
`<Score>x</Score>` with x in [0, 1], the reply format of the original's structure judge. The
content judge's prompt asks a server for one bare number, the reply format of the original's
content reward-model server (a raw, unbounded score; higher = better grounded).
"""

from __future__ import annotations

import math
import re
from typing import Optional

STRUCT_SYSTEM = """\
You grade the STRUCTURE of a piece of social reasoning, not whether its final answer is right.

Good social reasoning follows the four stages of Social Information Processing, in this order:
1. Cue encoding: it first gathers the relevant cues from the story: who was present, who saw or
   heard what, what was said and done, and when.
2. Cue interpretation: it then infers the characters' mental states from those cues: what each
   one believes, knows, wants, feels or intends, including beliefs that are now false.
3. Goal clarification: it states what the question actually asks about whose mind.
4. Response generation: only then does it derive the answer from the inferred mental states.

Penalise these faults:
- Option parasitism: naming or weighing the answer options before the mental states have been
  inferred, so the options steer the reasoning.
- Backward justification: picking an answer first and then building reasons for it.
- Stages out of order, skipped, or looping (returning to earlier stages again and again).

Score 1 for reasoning that goes through all four stages in order with none of these faults,
0 for reasoning with no stage structure at all, and in between for partial structure.
Reply with the score only, as <Score>x</Score> where x is a number between 0 and 1."""

CONTENT_SYSTEM = """\
You rate the CONTENT of a piece of social reasoning about a story: how accurately it attributes
mental states (beliefs, knowledge, desires, emotions, intentions) to the characters, and how well
each attribution is grounded in what actually happens in the story. Reward correct, specific,
story-grounded inferences; penalise invented facts, wrong mental states, and generic reasoning
that ignores the story. Reply with a single number only (higher is better; about -2 for very
poor reasoning, 0 for mediocre, +2 or more for excellent)."""

SYSTEM_PROMPTS = {"struct": STRUCT_SYSTEM, "content": CONTENT_SYSTEM}

PROBE_MESSAGES = [{"role": "user", "content": "Reply with the number 1."}]


def user_message(story: str, question: str, options, reasoning: str) -> str:
    """The user turn shared by both judges: story, question, options, then the reasoning."""
    opts = "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))
    return (f"Story:\n{story}\n\nQuestion:\n{question}\n\nOptions:\n{opts}\n\n"
            f"Reasoning to grade:\n{reasoning}")


def messages(system: str, story: str, question: str, options, reasoning: str) -> list[dict]:
    """The chat-completions `messages` for one item."""
    return [{"role": "system", "content": system},
            {"role": "user", "content": user_message(story, question, options, reasoning)}]


_SCORE_TAG_RE = re.compile(r"<Score>\s*([^<]*?)\s*</Score>", re.IGNORECASE)
_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_score(reply: str, *, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    """The number in a judge's reply: the last `<Score>x</Score>`, or else the whole reply
    (after any `<think>...</think>` block) as one bare number. Raises ValueError quoting the
    reply when there is none, it is not finite, or it lies outside [lo, hi]."""
    if not isinstance(reply, str):
        raise ValueError(f"judge reply is not text: {reply!r:.200}")
    tags = _SCORE_TAG_RE.findall(reply)
    text = tags[-1] if tags else _THINK_BLOCK_RE.sub("", reply).strip()
    if not _NUMBER_RE.fullmatch(text):
        raise ValueError(f"judge reply has no <Score>x</Score> and is not a number: {reply!r:.200}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"judge reply is not a finite number: {reply!r:.200}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"judge score {value} is outside [{lo}, {hi}]: {reply!r:.200}")
    return value
