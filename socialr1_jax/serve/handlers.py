"""The two generating endpoints: check a parsed request, queue its jobs, shape the answer.

Every check that fails raises an APIError naming the field (400, or 404 for the model), before
anything is queued. A prompt of a request becomes one job of `n` rows; all of a request's jobs
are queued at once, so they run in the same sampler call when they fit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.serve import responses, streaming
from socialr1_jax.serve.batcher import Job, ShuttingDown
from socialr1_jax.serve.engine import Sampling, TOP_LOGPROBS
from socialr1_jax.serve.errors import APIError

log = logging.getLogger("socialr1_jax.serve")


def sampling_of(body) -> Sampling:
    """The request's sampling settings, checked (OpenAI's default temperature is 1)."""
    t = 1.0 if body.temperature is None else float(body.temperature)
    if not 0.0 <= t <= 100.0:
        raise APIError(400, f"temperature {t} must be in [0, 100] (0 = greedy)",
                       param="temperature")
    top_p = 1.0 if body.top_p is None else float(body.top_p)
    if not 0.0 < top_p <= 1.0:
        raise APIError(400, f"top_p {top_p} must be in (0, 1]", param="top_p")
    top_k = 0 if body.top_k in (None, -1) else int(body.top_k)
    if top_k < 0:
        raise APIError(400, f"top_k {top_k} must be >= 1, or 0 / -1 for off", param="top_k")
    seed = None if body.seed is None else int(body.seed) % (1 << 31)
    if t == 0:
        return Sampling()
    return Sampling(temperature=t, top_p=top_p, top_k=top_k, seed=seed)


def check_counts(server, body, prompts: list[list[int]], max_tokens, *, allow_zero: bool) -> int:
    """n, the prompts' lengths and max_tokens against the limits; returns max_tokens."""
    engine = server.engine
    if body.n < 1 or body.n > engine.max_batch:
        raise APIError(400, f"n {body.n} must be in 1..{engine.max_batch} (--max-batch)",
                       param="n")
    if len(prompts) * body.n > server.config.max_rows_per_request:
        raise APIError(400, f"{len(prompts)} prompt(s) x n {body.n} is over the limit of "
                       f"{server.config.max_rows_per_request} completions per request",
                       param="prompt")
    vocab = engine.model.cfg.vocab_size
    longest_ok = engine.prompt_buckets[-1]
    for i, p in enumerate(prompts):
        if not p:
            raise APIError(400, f"prompt {i} is empty", param="prompt")
        if any(not 0 <= t < vocab for t in p):
            raise APIError(400, f"prompt {i} holds a token id outside 0..{vocab - 1}",
                           param="prompt")
        if len(p) > longest_ok:
            raise APIError(400, f"the prompt is {len(p)} tokens; this server takes at most "
                           f"{longest_ok} (--max-model-len {engine.max_model_len})",
                           param="messages" if hasattr(body, "messages") else "prompt")
    longest = max(len(p) for p in prompts)
    room = engine.max_new_for(longest)
    if max_tokens is None:
        max_tokens = room
    if max_tokens < (0 if allow_zero else 1):
        raise APIError(400, f"max_tokens {max_tokens} must be >= 1" +
                       (" (0 only with echo)" if not allow_zero else ""), param="max_tokens")
    if max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} is too many: a prompt of {longest} tokens "
                       f"leaves room for {room} (--max-model-len {engine.max_model_len})",
                       param="max_tokens")
    return int(max_tokens)


def make_jobs(server, prompts, body, max_tokens: int, want_logprobs: bool, queue=None):
    """One job per prompt (checked sampling settings); with an asyncio `queue`, each job
    streams its tokens onto it as (prompt index, sample index, token)."""
    sampling = sampling_of(body)
    loop = asyncio.get_running_loop()
    return [Job(prompt=p, max_tokens=max_tokens, sampling=sampling, n=body.n,
                want_logprobs=want_logprobs,
                on_token=streaming.queue_sink(loop, queue, i) if queue is not None else None)
            for i, p in enumerate(prompts)]


def submit(server, jobs) -> list[asyncio.Future]:
    """Queue the jobs at once (so they can share a call); their futures on this loop."""
    return [asyncio.wrap_future(server.batcher.submit(j)) for j in jobs]


async def run_jobs(server, prompts, body, max_tokens: int, want_logprobs: bool, rid: str):
    """Queue one job per prompt and wait for all; APIError 503 / 500 when they fail."""
    futures = submit(server, make_jobs(server, prompts, body, max_tokens, want_logprobs))
    try:
        return await asyncio.gather(*futures)
    except ShuttingDown as e:
        raise APIError(503, str(e)) from None
    except Exception as e:
        log.error("request %s: the model failed: %s: %s", rid, type(e).__name__, e)
        raise APIError(500, f"the model failed on this request ({type(e).__name__}: {e})",
                       code="model_error") from None


def _log(server, endpoint: str, rid: str, start: float, prompts, results, completion_tokens):
    prompt_tokens = sum(len(p) for p in prompts)
    queue_ms = max(r.queue_ms for r in results)
    compute_ms = max(r.compute_ms for r in results)
    log.info("request %s %s: prompt_tokens=%d completion_tokens=%d queue_ms=%.1f "
             "compute_ms=%.1f batch_rows=%d", rid, endpoint, prompt_tokens, completion_tokens,
             queue_ms, compute_ms, max(r.batch_rows for r in results))
    server.metrics.request(endpoint, 200, prompt_tokens=prompt_tokens,
                           completion_tokens=completion_tokens,
                           seconds=time.perf_counter() - start, queue_s=queue_ms / 1e3)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_prompts(tokenizer, prompt) -> tuple[list[list[int]], list[str]]:
    """The prompt field (text, texts, ids or lists of ids) as token ids and texts."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    ids = [tk.encode(tokenizer, p) if isinstance(p, str) else list(p) for p in prompt]
    texts = [p if isinstance(p, str) else tokenizer.decode(p, skip_special_tokens=False)
             for p in prompt]
    if not ids:
        raise APIError(400, "prompt is empty", param="prompt")
    return ids, texts


def _completion_choice(server, body, prompt, text, res, index, j, want):
    """(Finished, choice dict) of sample j of one prompt of /v1/completions."""
    done = responses.finish(server.tokenizer, res.completions[j], server.engine.eos_ids,
                            body.stops())
    lp = (responses.completion_logprobs(server.tokenizer, res.scored[j], prompt, done,
                                        body.logprobs, body.echo, text,
                                        body.return_tokens_as_token_ids)
          if want else None)
    return done, {"index": index, "text": (text if body.echo else "") + done.text,
                  "logprobs": lp, "finish_reason": done.finish_reason}


async def completions(server, body, rid: str):
    """POST /v1/completions: a response dict, or an async generator of SSE data lines."""
    start = time.perf_counter()
    if body.best_of not in (None, body.n):
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= TOP_LOGPROBS:
        raise APIError(400, f"logprobs {body.logprobs} must be in 0..{TOP_LOGPROBS}",
                       param="logprobs")
    prompts, texts = completion_prompts(server.tokenizer, body.prompt)
    max_tokens = check_counts(server, body, prompts, body.max_tokens, allow_zero=body.echo)
    want = body.logprobs is not None
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": server.config.model_name}
    if body.stream:
        return _stream_completion(server, body, head, prompts, texts, max_tokens, want, rid,
                                  start)
    results = await run_jobs(server, prompts, body, max_tokens, want, rid)
    choices, completion_tokens = [], 0
    for i, (p, text, res) in enumerate(zip(prompts, texts, results)):
        for j in range(body.n):
            done, choice = _completion_choice(server, body, p, text, res, i * body.n + j, j,
                                              want)
            completion_tokens += len(done.ids)
            choices.append(choice)
    _log(server, "/v1/completions", rid, start, prompts, results, completion_tokens)
    return {**head, "choices": choices,
            "usage": _usage(sum(len(p) for p in prompts), completion_tokens)}


def _stream_completion(server, body, head, prompts, texts, max_tokens, want, rid, start):
    """The SSE lines of a streamed /v1/completions request (`streaming.live`)."""
    queue: asyncio.Queue = asyncio.Queue()
    futures = submit(server, make_jobs(server, prompts, body, max_tokens, want, queue))
    n, eos, stops = body.n, server.engine.eos_ids, body.stops()
    streams = {(i, j): streaming.TextStream(server.tokenizer, eos, stops)
               for i in range(len(prompts)) for j in range(n)}
    tally = {"tokens": 0}

    def chunk(index, text, lp=None, reason=None):
        return json.dumps({**head, "choices": [{"index": index, "text": text, "logprobs": lp,
                                                 "finish_reason": reason}]}, ensure_ascii=False)

    def opening():
        return [chunk(i * n + j, texts[i]) for i in range(len(prompts)) for j in range(n)
                if body.echo and texts[i]]

    def finalize(results):
        out = {}
        for i, res in enumerate(results):
            for j in range(n):
                done, c = _completion_choice(server, body, prompts[i], texts[i], res,
                                             i * n + j, j, want)
                tally["tokens"] += len(done.ids)
                out[i, j] = (done.text, chunk(i * n + j, "", c["logprobs"], c["finish_reason"]))
        return out

    def closing(results):
        _log(server, "/v1/completions", rid, start, prompts, results, tally["tokens"])
        usage = _usage(sum(len(p) for p in prompts), tally["tokens"])
        if body.stream_options and body.stream_options.include_usage:
            return [json.dumps({**head, "choices": [], "usage": usage})]
        return []

    return streaming.live(streams, queue, futures, rid=rid, opening=opening,
                          piece=lambda i, j, t: chunk(i * n + j, t), finalize=finalize,
                          closing=closing)


def chat_prompt(tokenizer, body) -> list[int]:
    """The messages through the checkpoint's chat template (Qwen's format without one)."""
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages]
    kwargs = dict(body.chat_template_kwargs or {})
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                 **kwargs)
        except Exception as e:  # the template's own raise_exception, or a bad kwarg
            raise APIError(400, f"the chat template refused these messages: {e}",
                           param="messages") from None
    else:
        text = "".join(tk.QWEN_TURN.format(role=m["role"], content=m["content"])
                       for m in msgs) + tk.QWEN_GENERATION_PROMPT
    return tk.encode(tokenizer, text)


def _chat_choice(server, body, prompt, res, j, top):
    """(Finished, choice dict) of sample j of /v1/chat/completions."""
    done = responses.finish(server.tokenizer, res.completions[j], server.engine.eos_ids,
                            body.stops())
    lp = (responses.chat_logprobs(server.tokenizer, res.scored[j], len(prompt), done, top,
                                  body.return_tokens_as_token_ids)
          if body.logprobs else None)
    return done, {"index": j, "message": {"role": "assistant", "content": done.text},
                  "logprobs": lp, "finish_reason": done.finish_reason}


async def chat(server, body, rid: str):
    """POST /v1/chat/completions: a response dict, or an async generator of SSE data lines."""
    start = time.perf_counter()
    top = body.top_logprobs or 0
    if not 0 <= top <= TOP_LOGPROBS or (top and not body.logprobs):
        raise APIError(400, f"top_logprobs {top} must be in 0..{TOP_LOGPROBS}, with logprobs "
                       "true", param="top_logprobs")
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise APIError(400, "give max_tokens or max_completion_tokens, not both",
                       param="max_completion_tokens")
    prompt = chat_prompt(server.tokenizer, body)
    limit = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    max_tokens = check_counts(server, body, [prompt], limit, allow_zero=False)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": server.config.model_name}
    if body.stream:
        return _stream_chat(server, body, {**head, "object": "chat.completion.chunk"}, prompt,
                            max_tokens, top, rid, start)
    (res,) = await run_jobs(server, [prompt], body, max_tokens, body.logprobs, rid)
    choices, completion_tokens = [], 0
    for j in range(body.n):
        done, choice = _chat_choice(server, body, prompt, res, j, top)
        completion_tokens += len(done.ids)
        choices.append(choice)
    _log(server, "/v1/chat/completions", rid, start, [prompt], [res], completion_tokens)
    return {**head, "choices": choices, "usage": _usage(len(prompt), completion_tokens)}


def _stream_chat(server, body, head, prompt, max_tokens, top, rid, start):
    """The SSE lines of a streamed /v1/chat/completions request (`streaming.live`)."""
    queue: asyncio.Queue = asyncio.Queue()
    futures = submit(server, make_jobs(server, [prompt], body, max_tokens, body.logprobs,
                                       queue))
    streams = {(0, j): streaming.TextStream(server.tokenizer, server.engine.eos_ids,
                                            body.stops()) for j in range(body.n)}
    tally = {"tokens": 0}

    def chunk(index, delta, lp=None, reason=None):
        return json.dumps({**head, "choices": [{"index": index, "delta": delta, "logprobs": lp,
                                                 "finish_reason": reason}]}, ensure_ascii=False)

    def finalize(results):
        out = {}
        for j in range(body.n):
            done, c = _chat_choice(server, body, prompt, results[0], j, top)
            tally["tokens"] += len(done.ids)
            out[0, j] = (done.text, chunk(j, {}, c["logprobs"], c["finish_reason"]))
        return out

    def closing(results):
        _log(server, "/v1/chat/completions", rid, start, [prompt], results, tally["tokens"])
        if body.stream_options and body.stream_options.include_usage:
            usage = _usage(len(prompt), tally["tokens"])
            return [json.dumps({**head, "choices": [], "usage": usage})]
        return []

    return streaming.live(
        streams, queue, futures, rid=rid,
        opening=lambda: [chunk(j, {"role": "assistant", "content": ""}) for j in range(body.n)],
        piece=lambda i, j, t: chunk(j, {"content": t}), finalize=finalize, closing=closing)
