"""`stream: true`: server-sent events whose text arrives token by token, as it is sampled.

The OpenAI API streams a completion as a sequence of chunks (`chat.completion.chunk` with
`choices[].delta.content`, or `text_completion` with `choices[].text`), then one chunk per
choice with its `finish_reason` (and log-probs), an optional usage chunk and `data: [DONE]`.

The worker hands each decode step's token of a streamed job to `on_token`, from its thread; the
tokens reach this event loop through a queue and `TextStream` turns them into text pieces:

- the text is the decoded prefix of the ids, and a piece is sent only once it cannot change:
  a trailing U+FFFD (part of a UTF-8 character whose other bytes are still to come) waits, and
  so do the last len(longest stop) - 1 characters, which could be the start of a stop string;
- an EOS ends the text; a stop string ends it before the stop (nothing after is sent);
- when the call is done the choice's final text (`responses.finish`, the same rule as without
  streaming) is compared with what was sent and the rest goes out, so the pieces always join to
  exactly the non-streamed text.

A fault after the stream has started is sent as one `{"error": {...}}` event (the shape the
`openai` client raises from), then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable, Sequence

from socialr1_jax.serve.batcher import ShuttingDown
from socialr1_jax.serve.errors import APIError, error_body

log = logging.getLogger("socialr1_jax.serve")


class TextStream:
    """The text of one choice as its tokens arrive (see the module docstring)."""

    def __init__(self, tokenizer, eos_ids: Sequence[int], stops: Sequence[str]):
        self.tokenizer, self.eos_ids, self.stops = tokenizer, set(eos_ids), list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def push(self, tok: int) -> str:
        """The new piece of text that token `tok` makes safe to send ('' when none)."""
        if self.ended:
            return ""
        if tok in self.eos_ids:
            self.ended = True
            return ""
        self.ids.append(tok)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.ended = True
            safe = cut
        else:
            safe = len(text.rstrip("\ufffd")) if text.endswith("\ufffd") else len(text)
            safe = min(safe, len(text) - self.hold)
        return self._send(text, safe)

    def _send(self, text: str, safe: int) -> str:
        if safe <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent):safe]
        self.sent += piece
        return piece

    def rest(self, final_text: str) -> str:
        """What is left to send of the choice's final text."""
        if not final_text.startswith(self.sent):  # a decoder that rewrites earlier text
            log.warning("streamed text %r is not a prefix of the final text", self.sent[-40:])
            return final_text[len(self.sent):]
        return final_text[len(self.sent):]


def queue_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, i: int) -> Callable:
    """on_token(j, tok) of job i that puts (i, j, tok) on `queue` from the worker thread."""
    return lambda j, tok: loop.call_soon_threadsafe(queue.put_nowait, (i, j, tok))


def _error_event(e: Exception, rid: str) -> str:
    if isinstance(e, ShuttingDown):
        err = APIError(503, str(e))
    else:
        log.error("request %s: the model failed: %s: %s", rid, type(e).__name__, e)
        err = APIError(500, f"the model failed on this request ({type(e).__name__}: {e})",
                       code="model_error")
    return json.dumps(error_body(err.status, err.message, err.param, err.code))


async def _tokens(queue: asyncio.Queue, pending: asyncio.Future):
    """(i, j, tok) from the queue until `pending` is done and the queue is empty."""
    while True:
        get = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({get, pending}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            yield get.result()
            continue
        get.cancel()
        break
    while not queue.empty():
        yield queue.get_nowait()


async def live(streams: dict, queue: asyncio.Queue, futures, *, rid: str, opening,
               piece, finalize, closing):
    """The SSE data lines of a streamed request (see the module docstring).

    streams: {(i, j): TextStream} of job i's sample j; futures: the jobs' futures.
    opening() -> chunks sent first; piece(i, j, text) -> a chunk; finalize(results) ->
    {(i, j): (final text, last chunk)}; closing(results) -> the chunks after the choices'."""
    for chunk in opening():
        yield chunk
    pending = asyncio.ensure_future(asyncio.gather(*futures))
    async for i, j, tok in _tokens(queue, pending):
        text = streams[i, j].push(tok)
        if text:
            yield piece(i, j, text)
    try:
        results = pending.result()
    except Exception as e:  # noqa: BLE001 - the model's fault or a shutdown, sent as an event
        yield _error_event(e, rid)
        yield "[DONE]"
        return
    for (i, j), (final_text, last) in finalize(results).items():
        rest = streams[i, j].rest(final_text)
        if rest:
            yield piece(i, j, rest)
        yield last
    for chunk in closing(results):
        yield chunk
    yield "[DONE]"
