"""Judges for the two learned terms of the Social-R1 reward: R_struct and R_cont.

One interface, three kinds, chosen in config (`JudgeConfig.kind`):

- `http`: any OpenAI-compatible chat-completions server (vLLM, SGLang, a hosted API), the way
  the original Social-R1 queries its structure judge and its content reward model
  (`http_judge.py`).
- `heuristic`: an offline stand-in for the demo and the tests (this module). It is NOT the
  paper's judge: the structure heuristic checks the SIP stage markers `SIP_MARKERS` (in order,
  not looping) and penalises options named before the inference; the content heuristic rewards
  reasoning that uses the story's words and mental-state verbs.
- `model`: an in-process reward model on the mesh (`rm_judge.py`): a Qwen3 backbone with a
  scalar head, as transformers' `Qwen3ForSequenceClassification`, scoring R_cont.

A judge scores `JudgeItem`s (story, question, options, reasoning) and returns a `JudgeResult`:
one float per item, which items failed (they got the configured fallback), and counters for the
metrics. `submit` starts scoring and returns a future, so the reward can ask both judges at
once and the trainer can overlap them with device work.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import functools
import re
from typing import Optional, Sequence

import numpy as np

from socialr1_jax.social.rewards import choice_error

ROLES = ("struct", "content")

# The four Social-Information-Processing stages, in order (cue encoding -> cue interpretation
# (mental states) -> goal clarification -> response generation), and the exact text that opens
# each stage on its own line in a reasoning trace, e.g. "Cue: Sally put the ball in the basket."
SIP_STAGES = ("Cue", "Interpretation", "Goal", "Response")
SIP_MARKERS = tuple(f"{s}:" for s in SIP_STAGES)
_MARKER_RE = re.compile(r"^[ \t]*(" + "|".join(SIP_STAGES) + "):", re.MULTILINE)


class JudgeError(RuntimeError):
    """A judge could not score an item and no fallback is configured (names the item)."""


class JudgeUnavailable(JudgeError):
    """The startup probe could not reach the judge, or it answered nonsense."""


class JudgeConfigError(ValueError):
    """A judge configuration that cannot work (unknown kind, missing URL or API-key variable)."""


# The judge kinds a JudgeConfig may name; judge_kinds.py builds each (the http and model
# judges import this module, so their factories live there, above all three).
JUDGE_KINDS = ("heuristic", "http", "model")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """One judge (structure or content). Only `kind` matters for `heuristic`.

    http: `base_url` (with or without a trailing /v1) and `model`; `api_key_env` is the NAME of
    the environment variable that holds the API key ('' = send none, e.g. a local vLLM). The key
    itself is read at construction and kept only in memory: never logged, never in a dump.
    `max_concurrency` requests in flight at most; each attempt times out after `timeout_s`;
    429, 5xx, timeouts and connection errors are retried `max_retries` times with exponential
    backoff from `backoff_s` (capped at `max_backoff_s`, a server's Retry-After honoured within
    the cap); other 4xx are not retried. `fallback`: the score an item gets when its request
    fails or its reply does not parse (counted in the metrics); None = such a failure is an
    error. `cache_size` replies are remembered by prompt. `system_prompt_file`: replace our
    system prompt (judge_prompts.py) with the text of this file.
    heuristic: `parasitism_penalty` / `loop_penalty` scale the structure score down when options
    are named before the inference / a stage marker repeats.
    model (content only): `checkpoint` is the reward model (an HF Qwen3ForSequenceClassification
    directory or our Orbax checkpoint), `tokenizer` its tokenizer directory ('' = beside the
    checkpoint); items are scored `batch_size` at a time, each text cut to its last `max_length`
    tokens; `prompt_template` lays out story / question / options / reasoning ('' = the default
    of rm_prompt.py); `dtype` '' keeps the checkpoint's; `mesh` 'DATAxFSDPxTENSOR' ('' = every
    device on fsdp); `pad_token_id` -1 = the checkpoint's (else the tokenizer's).
    """

    kind: str = "heuristic"
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_concurrency: int = 32
    fallback: Optional[float] = 0.0
    cache_size: int = 100_000
    temperature: float = 0.0
    max_tokens: int = 256
    system_prompt_file: str = ""
    parasitism_penalty: float = 0.5
    loop_penalty: float = 0.25
    checkpoint: str = ""
    tokenizer: str = ""
    batch_size: int = 8
    max_length: int = 4096
    prompt_template: str = ""
    dtype: str = ""
    mesh: str = ""
    pad_token_id: int = -1

    def __post_init__(self):
        if self.kind not in JUDGE_KINDS:
            raise JudgeConfigError("unknown judge " + choice_error("kind", self.kind, JUDGE_KINDS))
        if not self.timeout_s > 0:
            raise JudgeConfigError(f"timeout_s={self.timeout_s} must be > 0")
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise JudgeConfigError("max_retries, backoff_s and max_backoff_s must be >= 0")
        if self.max_concurrency < 1 or self.cache_size < 0:
            raise JudgeConfigError("max_concurrency must be >= 1 and cache_size >= 0")
        for key in ("parasitism_penalty", "loop_penalty"):
            if not 0 <= getattr(self, key) <= 1:
                raise JudgeConfigError(f"{key}={getattr(self, key)} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """What a judge sees of one completion: the story, question and options it answers, and the
    reasoning (the think text). `id` names the item in errors and logs."""

    story: str
    question: str
    options: tuple[str, ...]
    reasoning: str
    id: str = ""


@dataclasses.dataclass
class JudgeResult:
    """Scores [n] (failed items hold the fallback), failed [n] bool, and counters (requests,
    retries, failures by kind, cache hits) that become metrics."""

    scores: np.ndarray
    failed: np.ndarray
    counts: dict[str, float]


class Judge:
    """The interface: `submit(items)` -> a future of a JudgeResult; `score` waits for it.

    `check()` is the startup probe (raises JudgeUnavailable); `close()` frees connections and
    threads. `role` is 'struct' or 'content', `fallback` the configured failure score.
    """

    role: str
    fallback: Optional[float] = None

    def submit(self, items: Sequence[JudgeItem]) -> concurrent.futures.Future:
        """Start scoring `items`; the future's result is a JudgeResult."""
        raise NotImplementedError

    def score(self, items: Sequence[JudgeItem]) -> JudgeResult:
        """Score `items` and wait for the result."""
        return self.submit(items).result()

    def check(self) -> None:
        """Raise JudgeUnavailable when the judge cannot score (offline judges always can)."""

    def close(self) -> None:
        """Release connections and threads (a no-op for offline judges)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _done(result) -> concurrent.futures.Future:
    fut = concurrent.futures.Future()
    fut.set_result(result)
    return fut


# ----------------------------------------------------------------------------- heuristic judges
_OPTION_REF_RE = re.compile(r"(?i:\b(?:option|choice|answer)\s*)\(?([A-Z])\)?(?![A-Za-z])"
                            r"|\(([A-Z])\)")
_WORD_RE = re.compile(r"[a-z]+")
_STOPWORDS = frozenset(
    "that this with from then they them their there were what when where which while have "
    "will would could should about into after before been being does done just also only "
    "over under again some than very each other such more most".split())
MENTAL_TERMS = frozenset(
    "believe believes believed think thinks thought know knows knew aware unaware saw see sees "
    "seen notice noticed want wants wanted feel feels felt expect expects expected remember "
    "remembers remembered assume assumes assumed intend intends intended hope hopes hoped "
    "belief beliefs desire desires emotion emotions intention intentions mistaken false".split())


def sip_markers(reasoning: str) -> list[tuple[int, int]]:
    """(character position, stage index) of every SIP stage marker opening a line, in order."""
    return [(m.start(), SIP_STAGES.index(m.group(1))) for m in _MARKER_RE.finditer(reasoning)]


def _longest_increasing(seq: Sequence[int]) -> int:
    # Patience sorting: the length of the longest strictly increasing subsequence.
    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        tails[i:i + 1] = [x]
    return len(tails)


def names_options(text: str, options: Sequence[str]) -> bool:
    """True when `text` refers to an answer option: by label ('option B', '(C)', 'answer A')
    among the item's letters, or by the full text of an option of three or more words (short
    options such as a container's name are story words, not a sign of anchoring)."""
    letters = {chr(ord("A") + i) for i in range(len(options) or 4)}
    for m in _OPTION_REF_RE.finditer(text):
        if (m.group(1) or m.group(2)) in letters:
            return True
    low = text.lower()
    return any(len(o.split()) >= 3 and o.strip().lower() in low for o in options)


def structure_heuristic(item: JudgeItem, *, parasitism_penalty: float = 0.5,
                        loop_penalty: float = 0.25) -> float:
    """A stand-in structure score in [0, 1] (not the paper's LLM judge).

    order = (the longest run of SIP stages, by first marker, that appears in SIP order) / 4;
    times (1 - loop_penalty) when a stage marker appears twice (stages looping); times
    (1 - parasitism_penalty) when an option is named before the Interpretation marker (or
    anywhere, if there is none): the option-parasitism fault.
    """
    marks = sip_markers(item.reasoning)
    first: dict[int, int] = {}
    for pos, stage in marks:
        first.setdefault(stage, pos)
    order = [stage for stage, _ in sorted(first.items(), key=lambda kv: kv[1])]
    score = _longest_increasing(order) / len(SIP_STAGES)
    if len(marks) > len(first):
        score *= 1.0 - loop_penalty
    cut = first.get(SIP_STAGES.index("Interpretation"), len(item.reasoning))
    if names_options(item.reasoning[:cut], item.options):
        score *= 1.0 - parasitism_penalty
    return score


@functools.lru_cache(maxsize=4096)
def _story_words(story: str) -> frozenset[str]:
    return frozenset(w for w in _WORD_RE.findall(story.lower())
                     if len(w) >= 4 and w not in _STOPWORDS)


def content_heuristic(item: JudgeItem) -> float:
    """A stand-in content score in [-2, 2] (not the paper's reward model): -2 + 2 * coverage +
    2 * mental, where coverage is the share of the story's content words (4+ letters, no
    stop-words) the reasoning uses, and mental = min(1, distinct mental-state words / 3)."""
    words = set(_WORD_RE.findall(item.reasoning.lower()))
    story = _story_words(item.story)
    coverage = len(words & story) / len(story) if story else 0.0
    mental = min(1.0, len(words & MENTAL_TERMS) / 3.0)
    return -2.0 + 2.0 * coverage + 2.0 * mental


class HeuristicJudge(Judge):
    """The offline judge: `structure_heuristic` or `content_heuristic`, computed on submit."""

    def __init__(self, cfg: JudgeConfig, role: str):
        self.role, self.cfg, self.fallback = role, cfg, cfg.fallback
        if role == "struct":
            self._fn = functools.partial(structure_heuristic,
                                         parasitism_penalty=cfg.parasitism_penalty,
                                         loop_penalty=cfg.loop_penalty)
        else:
            self._fn = content_heuristic

    def submit(self, items: Sequence[JudgeItem]) -> concurrent.futures.Future:
        scores = np.array([self._fn(it) for it in items], dtype=np.float64)
        return _done(JudgeResult(scores, np.zeros(len(items), bool), {"requests": 0.0}))

    def __repr__(self):
        return f"HeuristicJudge(role={self.role!r})"
