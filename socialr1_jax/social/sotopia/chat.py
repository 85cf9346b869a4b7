"""A small OpenAI-compatible chat-completions client for SOTOPIA's agents and evaluator.

`POST {base}/v1/chat/completions` with `{"model", "messages", "temperature", "max_tokens"}`
(and `Authorization: Bearer <key>` when a key is given); the text is
`choices[0].message.content`. This speaks to vLLM, SGLang, a hosted API, or this project's own
`serve` command. Without a model name the server's only model (`GET /v1/models`) is used.
Timeouts, connection errors, 429 and 5xx are retried `max_retries` times with exponential
backoff; other 4xx are not. A request that still fails raises `ChatError` with its kind
(`timeout`, `connect`, `http`, `bad_reply`); the caller decides what that costs.
`complete_many` sends many conversations at once (`max_concurrency` in flight).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Optional, Sequence

import httpx

from socialr1_jax.social.http_judge import chat_url


class ChatError(RuntimeError):
    """A chat request that failed after its retries; `kind` says how."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class ChatClient:
    """Chat completions from one endpoint (see the module docstring)."""

    def __init__(self, base_url: str, model: Optional[str] = None, *, api_key: str = "",
                 timeout_s: float = 120.0, max_retries: int = 2, backoff_s: float = 0.5,
                 max_concurrency: int = 16):
        self.url = chat_url(base_url)  # ValueError for a URL without http(s)://
        self.models_url = self.url[:-len("/chat/completions")] + "/models"
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.max_concurrency = max_concurrency
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s),
                                  limits=httpx.Limits(max_connections=max_concurrency))
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency,
                                                           thread_name_prefix="chat")
        self.model = model or self._only_model()
        self.requests = 0
        self.retries = 0

    def __repr__(self):
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def _only_model(self) -> str:
        try:
            r = self._http.get(self.models_url, headers=self._headers)
            r.raise_for_status()
            ids = [m["id"] for m in r.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise ChatError("connect", f"{self.models_url}: cannot list the served models "
                                       f"({type(e).__name__}: {e}); name the model") from None
        if len(ids) != 1:
            raise ChatError("bad_reply", f"{self.models_url} serves {len(ids)} models "
                                         f"({', '.join(ids[:5])}); name the one to use")
        return ids[0]

    def complete(self, messages: list[dict], *, temperature: float = 0.0,
                 max_tokens: int = 512) -> str:
        """The reply text to one conversation, after retries; ChatError when it cannot be had."""
        payload = {"model": self.model, "messages": messages, "temperature": temperature,
                   "max_tokens": max_tokens}
        failure = ChatError("connect", "no attempt made")
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests += 1
            try:
                r = self._http.post(self.url, json=payload, headers=self._headers)
            except httpx.TimeoutException:
                failure = ChatError("timeout", f"{self.url}: no reply within {self.timeout_s} s")
                continue
            except httpx.TransportError as e:
                failure = ChatError("connect", f"{self.url}: {type(e).__name__}: {e}")
                continue
            if r.status_code == 200:
                try:
                    text = r.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    raise ChatError("bad_reply", f"{self.url}: not a chat completion: "
                                                 f"{r.text[:200]!r}") from None
                if not isinstance(text, str):
                    raise ChatError("bad_reply", f"{self.url}: content is {text!r:.60}")
                return text
            failure = ChatError("http", f"{self.url}: HTTP {r.status_code}: {r.text[:200]!r}")
            if r.status_code != 429 and r.status_code < 500:
                break  # the server would refuse it again
        raise failure

    def submit(self, messages: list[dict], **kw) -> concurrent.futures.Future:
        """`complete` on the client's thread pool."""
        return self._pool.submit(self.complete, messages, **kw)

    def complete_many(self, conversations: Sequence[list[dict]], **kw) -> list:
        """Replies to many conversations at once: each a str, or the ChatError it ended with."""
        futures = [self.submit(m, **kw) for m in conversations]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except ChatError as e:
                out.append(e)
        return out

    def close(self) -> None:
        """Stop the threads and close the connections."""
        self._pool.shutdown(wait=True)
        self._http.close()
