"""A judge served over HTTP by any OpenAI-compatible chat-completions server.

The original Social-R1 asks two model servers over HTTP, in parallel, for R_struct (an LLM judge
that replies `<Score>x</Score>`) and R_cont (a reward-model server that replies a bare number).
`HttpJudge` speaks the same protocol to vLLM, SGLang or a hosted API:
`POST {base_url}/v1/chat/completions` with `{"model", "messages", "temperature", "max_tokens"}`
and `Authorization: Bearer <key>`; the text is `choices[0].message.content`.

Requests run on an asyncio event loop in a thread of the judge's own, so `submit` returns at
once and two judges (structure and content) work at the same time, also while the trainer keeps
the accelerators busy. At most `max_concurrency` requests are in flight; every attempt has a hard
deadline; 429, 5xx, timeouts and connection errors are retried with exponential backoff, other
4xx are not; identical prompts are asked once (a cache keyed by the prompt). An item whose
request fails or whose reply does not parse gets the configured fallback and is counted; with no
fallback it is an error naming the item.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import os
import threading
from typing import Callable, Optional, Sequence

import httpx
import numpy as np

from socialr1_jax.social import judge_prompts
from socialr1_jax.social.judges import (Judge, JudgeConfig, JudgeConfigError, JudgeError,
                                        JudgeItem, JudgeResult, JudgeUnavailable)

log = logging.getLogger(__name__)

# Counters every batch reports (as judge/<role>/<name> metrics).
COUNTERS = ("requests", "retries", "cache_hits", "failures", "timeouts", "connect_errors",
            "http_errors", "parse_errors")


def chat_url(base_url: str) -> str:
    """The chat-completions endpoint of a server given with or without its /v1 suffix."""
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise JudgeConfigError(f"base_url={base_url!r} must start with http:// or https://")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class _Failure(Exception):
    """One request's final failure: `kind` is the counter it increments."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


class HttpJudge(Judge):
    """R_struct or R_cont from an OpenAI-compatible server (see the module docstring)."""

    def __init__(self, cfg: JudgeConfig, role: str):
        self.role, self.cfg, self.fallback = role, cfg, cfg.fallback
        where = f"{role}_judge"
        if not cfg.model:
            raise JudgeConfigError(f"{where}.model is empty; kind 'http' needs the served model's "
                                   "name")
        if not cfg.base_url:
            raise JudgeConfigError(f"{where}.base_url is empty; kind 'http' needs the server's URL")
        self.url = chat_url(cfg.base_url)
        self._key: Optional[str] = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise JudgeConfigError(f"{where}.api_key_env: the environment variable "
                                       f"{cfg.api_key_env} is not set (or empty)")
            self._key = key
        if cfg.system_prompt_file:
            try:
                with open(cfg.system_prompt_file) as f:
                    self.system = f.read()
            except OSError as e:
                raise JudgeConfigError(f"{where}.system_prompt_file: cannot read "
                                       f"{cfg.system_prompt_file}: {e.strerror}") from None
        else:
            self.system = judge_prompts.SYSTEM_PROMPTS[role]
        bounds = (0.0, 1.0) if role == "struct" else (None, None)
        self._parse = functools.partial(judge_prompts.parse_score, lo=bounds[0], hi=bounds[1])
        self._cache: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"judge-{role}")
        self._thread.start()
        self._client: Optional[httpx.AsyncClient] = None
        self._sem: Optional[asyncio.Semaphore] = None
        self._closed = False

    def __repr__(self):
        # The key's variable name only, never the key.
        return (f"HttpJudge(role={self.role!r}, url={self.url!r}, model={self.cfg.model!r}, "
                f"api_key_env={self.cfg.api_key_env!r})")

    # -- the loop side --------------------------------------------------------------------
    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            n = self.cfg.max_concurrency
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.cfg.timeout_s),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
            self._sem = asyncio.Semaphore(n)
        return self._client

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _delay(self, attempt: int, response: Optional[httpx.Response]) -> float:
        delay = self.cfg.backoff_s * (2 ** attempt)
        if response is not None and "retry-after" in response.headers:
            try:
                delay = float(response.headers["retry-after"])
            except ValueError:
                pass
        return min(delay, self.cfg.max_backoff_s)

    async def _request(self, msgs: list[dict], counts: collections.Counter,
                       parse: Callable[[str], float]) -> float:
        """One item's score after retries; raises _Failure when it cannot be had."""
        client = self._ensure_client()
        payload = {"model": self.cfg.model, "messages": msgs,
                   "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        failure = _Failure("connect_errors", "no attempt made")
        for attempt in range(self.cfg.max_retries + 1):
            response = None
            async with self._sem:
                counts["requests"] += 1
                try:
                    async with asyncio.timeout(self.cfg.timeout_s):
                        response = await client.post(self.url, json=payload, headers=headers)
                except (TimeoutError, httpx.TimeoutException):
                    failure = _Failure("timeouts", f"no reply within {self.cfg.timeout_s} s")
                except httpx.TransportError as e:
                    failure = _Failure("connect_errors", f"{type(e).__name__}: {e}")
            if response is not None:
                if response.status_code == 200:
                    try:
                        text = response.json()["choices"][0]["message"]["content"]
                        return parse(text)
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise _Failure("parse_errors", self._redact(str(e))) from None
                failure = _Failure("http_errors", self._redact(
                    f"HTTP {response.status_code}: {response.text[:200]!r}"))
                if response.status_code != 429 and response.status_code < 500:
                    raise failure  # a request the server will refuse again
            if attempt < self.cfg.max_retries:
                counts["retries"] += 1
                await asyncio.sleep(self._delay(attempt, response))
        raise failure

    async def _score_items(self, items: list[JudgeItem]) -> JudgeResult:
        counts = collections.Counter({c: 0 for c in COUNTERS})
        n = len(items)
        scores, failed = np.full(n, np.nan), np.zeros(n, bool)
        by_prompt: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            prompt = judge_prompts.user_message(it.story, it.question, it.options, it.reasoning)
            by_prompt.setdefault(prompt, []).append(i)
        todo = []
        for prompt, idx in by_prompt.items():
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                scores[idx] = self._cache[prompt]
                counts["cache_hits"] += len(idx)
            else:
                todo.append(prompt)
        msgs = [[{"role": "system", "content": self.system}, {"role": "user", "content": p}]
                for p in todo]
        results = await asyncio.gather(*(self._request(m, counts, self._parse) for m in msgs),
                                       return_exceptions=True)
        problems = []
        for prompt, res in zip(todo, results):
            idx = by_prompt[prompt]
            if isinstance(res, _Failure):
                counts[res.kind] += len(idx)
                counts["failures"] += len(idx)
                failed[idx] = True
                problems.append((idx[0], res))
            elif isinstance(res, BaseException):
                raise res
            else:
                scores[idx] = res
                self._remember(prompt, res)
        if problems:
            i, first = problems[0]
            name = items[i].id or f"#{i}"
            if self.fallback is None:
                raise JudgeError(f"{self.role} judge ({self.url}) failed on item {name}: "
                                 f"{first.kind[:-1].replace('_', ' ')}: {first}")
            scores[failed] = self.fallback
            log.warning("%s judge: %d of %d items failed (first: item %s, %s), fallback %s",
                        self.role, int(failed.sum()), n, name, first, self.fallback)
        return JudgeResult(scores, failed, {k: float(v) for k, v in counts.items()})

    def _remember(self, prompt: str, value: float) -> None:
        if self.cfg.cache_size:
            self._cache[prompt] = value
            if len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)

    # -- the caller side ------------------------------------------------------------------
    def submit(self, items: Sequence[JudgeItem]) -> concurrent.futures.Future:
        """Start scoring on the judge's loop; the future's result is a JudgeResult."""
        if self._closed:
            raise JudgeError(f"{self.role} judge is closed")
        return asyncio.run_coroutine_threadsafe(self._score_items(list(items)), self._loop)

    def check(self) -> None:
        """Startup probe: one short chat completion (with the retries) must come back as text."""
        def any_text(text) -> float:
            if not isinstance(text, str):
                raise ValueError(f"choices[0].message.content is not text: {text!r:.100}")
            return 0.0

        counts = collections.Counter()
        fut = asyncio.run_coroutine_threadsafe(
            self._request(judge_prompts.PROBE_MESSAGES, counts, any_text), self._loop)
        try:
            fut.result()
        except _Failure as e:
            raise JudgeUnavailable(f"{self.role} judge at {self.url} (model {self.cfg.model!r}) "
                                   f"does not answer: {e}") from None

    def close(self) -> None:
        """Close the connections and stop the judge's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
