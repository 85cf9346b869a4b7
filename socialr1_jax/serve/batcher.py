"""The batching worker: one thread owns the model and runs the queued requests in batches.

A request becomes a `Job` (its prompt ids, `n`, max_tokens and `Sampling`) put on a queue; the
HTTP handler awaits the job's future. The worker takes the first waiting job, then keeps
taking jobs for `window_s` (or until `max_batch` rows are waiting), and runs them:

- jobs whose sampling settings agree (`Sampling.key`: all greedy jobs agree) share one sampler
  call, in arrival order, up to `max_batch` rows (a job of n samples is n rows) and as long as
  one prompt bucket holds all of them; the rest wait for the next call, ahead of newer jobs;
- a call runs until its longest request is done, so a long request holds the others back by
  at most that one call;
- a streamed job's tokens go to its `on_token` after each decode step of the call;
- jobs that asked for log-probs are then scored in one forward pass (`Engine.score`).

A fault inside a call fails that call's jobs (each with the exception, which the server turns
into a 500) and the worker goes on. `stop()` lets the running call finish, fails the jobs still
queued with `ShuttingDown`, and joins the thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Optional

from socialr1_jax.serve.engine import Engine, Sampling, Scored

log = logging.getLogger("socialr1_jax.serve")


class ShuttingDown(Exception):
    """The server stopped before the request ran."""


@dataclasses.dataclass
class Job:
    """One request's work: `n` completions of `prompt`; the future gets a `JobResult`."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    n: int = 1
    want_logprobs: bool = False  # score prompt + completion afterwards
    # Streaming: on_token(j, token id) from the worker as sample j's tokens are produced (at
    # most max_tokens of them, the EOS included), before the future resolves.
    on_token: Optional[Callable[[int, int], None]] = None
    future: concurrent.futures.Future = dataclasses.field(
        default_factory=concurrent.futures.Future)
    enqueued: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def key(self):
        """Jobs with equal keys can share a call; max_tokens 0 (echo only) is scored alone."""
        return ("score",) if self.max_tokens == 0 else self.sampling.key


@dataclasses.dataclass
class JobResult:
    """completions[j]: the ids of sample j (EOS included when it stopped there); scored[j]:
    log-probs of prompt + completion j (with want_logprobs); batch_rows: the call's size."""

    completions: list[list[int]]
    scored: Optional[list[Scored]]
    queue_ms: float
    compute_ms: float
    batch_rows: int


class Batcher:
    """The worker thread and its queue (see the module docstring)."""

    def __init__(self, engine: Engine, *, window_s: float = 0.01, on_batch=None):
        self.engine, self.window_s = engine, float(window_s)
        self.max_batch = engine.max_batch
        self.on_batch = on_batch  # called with (rows, seconds) after each sampler call
        self._queue: queue.Queue[Job] = queue.Queue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-worker", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; its future resolves to a JobResult or an exception."""
        if self._stopping.is_set():
            job.future.set_exception(ShuttingDown("the server is shutting down"))
        else:
            self._queue.put(job)
        return job.future

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the running call, fail what is still queued, join the worker."""
        self._stopping.set()
        self._thread.join(timeout)
        for job in self._drain():
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down"))

    def _drain(self) -> list[Job]:
        jobs = list(self._waiting)
        self._waiting.clear()
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    # -- the worker --------------------------------------------------------------------------
    def _collect(self) -> None:
        """Move queued jobs to `_waiting`: wait for a first one, then for the window."""
        if not self._waiting:
            try:
                self._waiting.append(self._queue.get(timeout=0.1))
            except queue.Empty:
                return
        deadline = time.perf_counter() + self.window_s
        while sum(j.n for j in self._waiting) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                self._waiting.append(self._queue.get(timeout=left))
            except queue.Empty:
                break

    def _next_batch(self) -> list[Job]:
        """The oldest waiting job and the later ones that can share its call."""
        first = self._waiting[0]
        batch, rows, longest, most = [], 0, 0, 0
        for job in list(self._waiting):
            if job.key != first.key or rows + job.n > self.max_batch:
                continue
            lo, mo = max(longest, len(job.prompt)), max(most, job.max_tokens)
            if batch and mo > 0 and self.engine.prompt_bucket(lo, mo) is None:
                continue
            batch.append(job)
            rows, longest, most = rows + job.n, lo, mo
        for job in batch:
            self._waiting.remove(job)
        return batch

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._collect()
            if self._waiting:
                self._execute(self._next_batch())

    def _execute(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        prompts = [job.prompt for job in batch for _ in range(job.n)]
        try:
            most = max(j.max_tokens for j in batch)
            outs = (self.engine.generate(prompts, most, batch[0].sampling,
                                         on_tokens=_stream_sink(batch)) if most > 0
                    else [[] for _ in prompts])
            scored = self._score(batch, outs)
        except Exception as e:  # a fault of the model: fail these requests, keep serving
            log.exception("sampler call of %d row(s) failed", len(prompts))
            for job in batch:
                job.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        if self.on_batch:
            self.on_batch(len(prompts), seconds)
        r = 0
        for job in batch:
            comps = [outs[r + j][:job.max_tokens] for j in range(job.n)]
            job.future.set_result(JobResult(
                completions=comps, scored=scored.get(id(job)),
                queue_ms=(start - job.enqueued) * 1e3, compute_ms=seconds * 1e3,
                batch_rows=len(prompts)))
            r += job.n

    def _score(self, batch: list[Job], outs: list[list[int]]) -> dict:
        """{id(job): [Scored per sample]} for the jobs that asked for log-probs."""
        seqs, owners, r = [], [], 0
        for job in batch:
            for j in range(job.n):
                if job.want_logprobs:
                    seqs.append(job.prompt + outs[r + j][:job.max_tokens])
                    owners.append(id(job))
            r += job.n
        result: dict = {}
        step = self.engine.max_batch
        for i in range(0, len(seqs), step):
            for owner, s in zip(owners[i:i + step], self.engine.score(seqs[i:i + step])):
                result.setdefault(owner, []).append(s)
        return result


def _stream_sink(batch: list[Job]):
    """on_tokens(step, tokens) of a call: each row's token to its job's `on_token` (None when
    no job of the call streams)."""
    owners = [(job, j) for job in batch for j in range(job.n)]
    if not any(job.on_token for job in batch):
        return None

    def sink(step: int, tokens) -> None:
        for r, (job, j) in enumerate(owners):
            if job.on_token is not None and tokens[r] >= 0 and step < job.max_tokens:
                job.on_token(j, int(tokens[r]))
    return sink
