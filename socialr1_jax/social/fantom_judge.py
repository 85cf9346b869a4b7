"""An LLM judge for FanToM's free-form belief answers (`--judge-url`): NOT FanToM's protocol.

FanToM scores a free-form belief by sentence-embedding similarity (fantom_score.py). This judge
asks any OpenAI-compatible chat server instead, through the project's `http` judge (retries,
timeouts, concurrency): which of two beliefs, labelled A and B in a per-question seeded order,
the answer states. The reply must be exactly `<Verdict>A</Verdict>`, `<Verdict>B</Verdict>` or
`<Verdict>NEITHER</Verdict>` (after an optional `<think>` block); NEITHER is wrong, as a tie is
in FanToM. A reply in any other form, or a request that fails, is counted and leaves the
question unjudged (`correct=None`): never scored right and never silently wrong.
"""

from __future__ import annotations

import asyncio
import collections
import random
import re
import zlib
from typing import Optional, Sequence

from socialr1_jax.social.http_judge import COUNTERS, HttpJudge
from socialr1_jax.social.judges import JudgeConfig

JUDGE_PROMPT_VERSION = "fantom-belief-v1"

SYSTEM = """\
You check an answer to a question about what a character in a conversation believes.
You are given the question, two candidate beliefs labelled A and B, and the answer.
Decide which candidate the answer states. If it states neither, or both, say NEITHER.
Reply with exactly one of: <Verdict>A</Verdict>, <Verdict>B</Verdict>, <Verdict>NEITHER</Verdict>"""

_VERDICT_RE = re.compile(r"\s*<Verdict>(A|B|NEITHER)</Verdict>\s*")
_THINK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)


def parse_verdict(reply) -> str:
    """A, B or NEITHER; ValueError quoting the reply for anything else."""
    if not isinstance(reply, str):
        raise ValueError(f"judge reply is not text: {reply!r:.200}")
    m = _VERDICT_RE.fullmatch(_THINK_RE.sub("", reply))
    if not m:
        raise ValueError(f"judge reply is not one <Verdict>A|B|NEITHER</Verdict>: {reply!r:.200}")
    return m.group(1)


def judge_message(qid: str, question: str, correct: str, wrong: str,
                  answer: str) -> tuple[str, str]:
    """(user message, the label of the correct belief), the order seeded by the question id."""
    correct_first = random.Random(zlib.crc32(qid.encode())).random() < 0.5
    a, b = (correct, wrong) if correct_first else (wrong, correct)
    text = f"Question: {question}\nA: {a}\nB: {b}\nAnswer: {answer}"
    return text, "A" if correct_first else "B"


class FantomJudge(HttpJudge):
    """The http judge asked for verdicts (see the module docstring)."""

    def __init__(self, base_url: str, model: str, **cfg):
        super().__init__(JudgeConfig(kind="http", base_url=base_url, model=model, fallback=None,
                                     **cfg), "content")

    async def _all(self, msgs, counts):
        return await asyncio.gather(*(self._request(m, counts, parse_verdict) for m in msgs),
                                    return_exceptions=True)

    def judge(self, items: Sequence[tuple[str, str, str, str, str]]) -> tuple[list, dict]:
        """Verdicts for (id, question, correct, wrong, answer) items: per item True (the
        correct belief), False (the wrong one or NEITHER) or None (unjudged), and counters
        (requests, retries, failures by kind; parse_errors are the unparsable replies)."""
        counts = collections.Counter({c: 0 for c in COUNTERS})
        prompts = [judge_message(*it) for it in items]
        msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
                for p, _ in prompts]
        results = asyncio.run_coroutine_threadsafe(self._all(msgs, counts), self._loop).result()
        out: list[Optional[bool]] = []
        for (_, right), res in zip(prompts, results):
            if isinstance(res, BaseException):
                kind = getattr(res, "kind", None)
                if kind is None:
                    raise res
                counts[kind] += 1
                counts["failures"] += 1
                out.append(None)
            else:
                out.append(res == right)
        return out, dict(counts)
