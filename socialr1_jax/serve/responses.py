"""From completion ids to OpenAI's response pieces: text, stop strings, log-probs (the stream's
deltas are `streaming.TextStream`'s).

A completion ends at the first of: an EOS id (kept in the token count and the log-probs, left
out of the text, finish_reason "stop"), a `stop` string (the text is cut before it and the
tokens after the one that completed it are dropped, finish_reason "stop"), or max_tokens
("length"). Log-probs are log softmax(logits) of the model (temperature 1) from the scoring pass.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from socialr1_jax.serve.engine import Scored


@dataclasses.dataclass
class Finished:
    """One choice: its text, the token ids it counts, why it ended, and per-token text offsets
    (offsets[i] = where token i's text starts in `text`, monotone; the last ends at len)."""

    text: str
    ids: list[int]
    finish_reason: str
    offsets: list[int]


def _offsets(tokenizer, ids: list[int], text_len: int) -> list[int]:
    """Where each token's text starts, from the decoded prefixes (clamped to stay monotone)."""
    out, last = [], 0
    for k in range(len(ids)):
        n = len(tokenizer.decode(ids[:k], skip_special_tokens=False)) if k else 0
        last = min(max(last, n), text_len)
        out.append(last)
    return out


def finish(tokenizer, ids: list[int], eos_ids, stops: list[str]) -> Finished:
    """Apply the EOS and stop-string rules to one sample's ids (see the module docstring)."""
    ended = bool(ids) and ids[-1] in eos_ids
    body = ids[:-1] if ended else ids
    text = tokenizer.decode(body, skip_special_tokens=False)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        stop = next(s for s in stops if text.find(s) == cut)
        # The fewest tokens whose text holds the stop string: those are the ones generated.
        k = next(k for k in range(1, len(body) + 1)
                 if tokenizer.decode(body[:k], skip_special_tokens=False).find(stop) == cut)
        text, kept = text[:cut], body[:k]
        return Finished(text, kept, "stop", _offsets(tokenizer, kept, len(text)))
    offsets = _offsets(tokenizer, ids, len(text))
    return Finished(text, ids, "stop" if ended else "length", offsets)


def token_string(tokenizer, tid: int, as_ids: bool) -> str:
    """A token's own text as OpenAI's `tokens` show it (a piece of a UTF-8 character may show as
    U+FFFD), or vLLM's `token_id:N` with return_tokens_as_token_ids (exact, for byte tokens)."""
    return f"token_id:{tid}" if as_ids else tokenizer.decode([tid], skip_special_tokens=False)


def _top(tokenizer, scored: Scored, at: int, k: int, as_ids: bool) -> dict:
    out: dict = {}
    for tid, lp in zip(scored.top_ids[at][:k], scored.top_logprobs[at][:k]):
        out.setdefault(token_string(tokenizer, tid, as_ids), lp)
    return out


def completion_logprobs(tokenizer, scored: Scored, prompt: list[int], done: Finished,
                        k: int, echo: bool, prompt_text: str, as_ids: bool = False) -> dict:
    """`choices[i].logprobs` of /v1/completions: tokens, token_logprobs, top_logprobs,
    text_offset; with echo the prompt's tokens come first (the very first has no log-prob)."""
    p = len(prompt)
    ids = (prompt if echo else []) + done.ids
    first = 0 if echo else p  # position in prompt + completion of ids[0]
    lps: list[Optional[float]] = []
    tops: list[Optional[dict]] = []
    for j in range(len(ids)):
        at = first + j - 1  # scored[at] predicts token first + j
        lps.append(scored.logprobs[at] if at >= 0 else None)
        tops.append(_top(tokenizer, scored, at, k, as_ids) if at >= 0 and k > 0 else None)
    if echo:
        prompt_offsets = _offsets(tokenizer, prompt, len(prompt_text))
        offsets = prompt_offsets + [len(prompt_text) + o for o in done.offsets]
    else:
        offsets = done.offsets
    return {"tokens": [token_string(tokenizer, i, as_ids) for i in ids], "token_logprobs": lps,
            "top_logprobs": tops if k > 0 else None, "text_offset": offsets}


def chat_logprobs(tokenizer, scored: Scored, prompt_len: int, done: Finished, k: int,
                  as_ids: bool = False) -> dict:
    """`choices[i].logprobs` of /v1/chat/completions: one entry per completion token."""
    content = []
    for j, tid in enumerate(done.ids):
        at = prompt_len + j - 1
        text = token_string(tokenizer, tid, as_ids)
        tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in _top(tokenizer, scored, at, k, as_ids).items()] if k > 0 else []
        content.append({"token": text, "logprob": scored.logprobs[at],
                        "bytes": list(text.encode()), "top_logprobs": tops})
    return {"content": content}
