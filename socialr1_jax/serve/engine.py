"""The model side of the server: fixed program shapes, warm-up, sampling and scoring calls.

Every call runs at one of a fixed set of shapes chosen at start, and all of them are compiled
before the server says it is ready, so no request waits for XLA:

- rows: the batch is padded (with inactive rows) up to the next of `batch_buckets`;
- sampling: the KV cache always spans `max_model_len` positions; a prompt is left-padded to
  the next of `prompt_buckets` and the rest of the context is its generation buffer, so a prompt
  bucket p allows up to max_model_len - p new tokens (the loop stops at the batch's largest
  max_tokens, a traced value, so a short request costs no more than its own length);
- every sampling program hands each decode step's tokens to the host as it runs
  (`sample(..., on_tokens=)`), so streamed requests get their text token by token; the server
  compiles only these programs (a call with no streamed request passes a no-op), unless
  `stream=False`;
- three sampling programs per shape: greedy, temperature sampling, and temperature with top-p
  (top-k is static in the sampler: each distinct top_k value compiles once, on first use);
- scoring (the log-probs of `logprobs` / `echo`): one forward pass over prompt + completion,
  left-padded to the next of the prompt buckets or max_model_len, reporting each token's
  log softmax(logits) (temperature 1, as vLLM's raw log-probs) and the top `TOP_LOGPROBS`.

`CompileCounter` counts XLA compilations through `jax.monitoring` (the backend-compile event),
which is how the server reports (and the tests check) that nothing compiles after warm-up.
"""

from __future__ import annotations

import dataclasses
import threading
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from socialr1_jax.parallel.sharding import batch_sharding, batch_shards
from socialr1_jax.rollout.sampler import sample

TOP_LOGPROBS = 5        # the most alternatives `logprobs` may ask for (OpenAI's limit)
MAX_PREFILL_CHUNK = 512  # prompt tokens per prefill pass (bounds the attention scores' memory)
SCORE_CHUNK = 128       # most positions per LM-head block when scoring
SCORE_BLOCK_BYTES = 256 << 20  # ... and at most this much fp32 [B, chunk, V] logits per block
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """How many XLA programs this process has compiled (every backend compile, any function)."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, secs, **_):
        if name == COMPILE_EVENT:
            with self._lock:
                self.count += 1


def default_prompt_buckets(max_model_len: int) -> list[int]:
    """Powers of two from 16 below max_model_len / 2, then max_model_len - 2^j (long prompts
    with short generations), every bucket past MAX_PREFILL_CHUNK a multiple of 16."""
    s = int(max_model_len)
    low = [1 << k for k in range(4, 32) if (1 << k) <= s // 2]
    high = [s - (1 << k) for k in range(4, 32) if (1 << k) < s // 2]
    return sorted({b for b in low + high if 16 <= b < s})


def prefill_chunk_for(p: int) -> int:
    """The largest divisor of the prompt length that is <= MAX_PREFILL_CHUNK (whole chunks)."""
    return max(d for d in range(1, min(p, MAX_PREFILL_CHUNK) + 1) if p % d == 0)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """One sampler call's settings (the requests batched together share them)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None

    @property
    def key(self):
        """Requests with equal keys can share one sampler call (greedy ignores the rest)."""
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.top_k, self.seed)


@partial(jax.jit, static_argnames=("graphdef", "k", "chunk"))
def _score(graphdef, state, ids_bt, mask_bt, *, k: int, chunk: int):
    """Per position t < T-1: log p(ids[t+1] | ids[:t+1]) and the top-k (log-prob, id) there."""
    model = nnx.merge(graphdef, state)
    hidden_btd, _ = model.hidden_states(ids_bt, mask_bt)
    w_vd = model.lm_head_weight()
    h_btd, y_bt = hidden_btd[:, :-1], ids_bt[:, 1:]
    b, t, d = h_btd.shape
    pad = -t % chunk
    h_nbcd = jnp.pad(h_btd, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, chunk, d).swapaxes(0, 1)
    y_nbc = jnp.pad(y_bt, ((0, 0), (0, pad))).reshape(b, -1, chunk).swapaxes(0, 1)

    def block(args):
        h_bcd, y_bc = args
        logits_bcv = jnp.einsum("bcd,vd->bcv", h_bcd, w_vd.astype(h_bcd.dtype),
                                precision=model.cfg.precision,
                                preferred_element_type=jnp.float32)
        lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
        chosen_bc = jnp.take_along_axis(logits_bcv, y_bc[..., None], axis=-1)[..., 0] - lse_bc
        top_bck, idx_bck = jax.lax.top_k(logits_bcv, k)
        return chosen_bc, top_bck - lse_bc[..., None], idx_bck

    chosen, top, idx = jax.lax.map(block, (h_nbcd, y_nbc))
    merge = lambda x: x.swapaxes(0, 1).reshape(b, -1, *x.shape[3:])[:, :t]  # noqa: E731
    return merge(chosen), merge(top), merge(idx)


def _no_tokens(step, tokens) -> None:
    """The streaming sink of a call without a streamed request."""


@dataclasses.dataclass
class Scored:
    """Log-probs of one sequence: `logprobs[i]` of token i + 1 given tokens 0..i, and the top
    alternatives there (`top_ids[i]`, `top_logprobs[i]`, best first)."""

    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


class Engine:
    """A loaded model with its shapes; `generate` and `score` are called from one thread."""

    def __init__(self, model, *, eos_ids: Sequence[int], pad_id: int, max_model_len: int,
                 batch_buckets: Sequence[int], prompt_buckets: Sequence[int], mesh=None,
                 stream: bool = True):
        self.model, self.mesh, self.stream = model, mesh, bool(stream)
        self.eos_ids, self.pad_id = tuple(int(e) for e in eos_ids), int(pad_id)
        self.max_model_len = int(max_model_len)
        shards = batch_shards(mesh) if mesh is not None else 1
        self.batch_buckets = sorted({-(-int(b) // shards) * shards for b in batch_buckets})
        self.max_batch = self.batch_buckets[-1]
        self.prompt_buckets = sorted({int(p) for p in prompt_buckets})
        bad = [p for p in self.prompt_buckets if not 1 <= p < self.max_model_len]
        if bad:
            raise ValueError(f"prompt bucket {bad[0]} is not in 1..{self.max_model_len - 1} "
                             "(max_model_len)")
        self.score_buckets = sorted(set(self.prompt_buckets) | {self.max_model_len})
        self.graphdef, self.state = nnx.split(model)

    # -- shapes ------------------------------------------------------------------------------
    def rows_bucket(self, rows: int) -> int:
        """The smallest batch bucket holding `rows` rows."""
        return next(b for b in self.batch_buckets if b >= rows)

    def prompt_bucket(self, prompt_len: int, max_new: int) -> Optional[int]:
        """The smallest prompt bucket that holds the prompt and leaves room for max_new tokens,
        or None when none does."""
        for p in self.prompt_buckets:
            if p >= prompt_len and self.max_model_len - p >= max_new:
                return p
        return None

    def max_new_for(self, prompt_len: int) -> int:
        """The most new tokens a prompt of this length may ask for (0: the prompt is too long)."""
        fits = [self.max_model_len - p for p in self.prompt_buckets if p >= prompt_len]
        return max(fits) if fits else 0

    # -- calls -------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new: int, sampling: Sampling,
                 on_tokens=None) -> list[list[int]]:
        """The completion ids of each prompt (up to and including an EOS), one sampler call;
        on_tokens(step, tokens [rows bucket], -1 where done) after each decode step (only when
        the engine streams; otherwise never called)."""
        p_len = self.prompt_bucket(max(len(p) for p in prompts), max_new)
        if p_len is None:
            raise ValueError(f"no prompt bucket holds this batch ({max_new} new tokens)")
        rows = self.rows_bucket(len(prompts))
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(
            np.random.bytes(4), "little") >> 1
        res = sample(self.model, prompts, max_new_tokens=max_new,
                     temperature=sampling.temperature, top_k=sampling.top_k,
                     top_p=sampling.top_p, eos_ids=self.eos_ids, seed=seed % (1 << 31),
                     mesh=self.mesh, pad_id=self.pad_id, max_cache_len=self.max_model_len,
                     prefill_chunk=prefill_chunk_for(p_len),
                     shapes=(rows, p_len, self.max_model_len - p_len),
                     on_tokens=(on_tokens or _no_tokens) if self.stream else None)
        tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
        return [tokens[r, :lengths[r]].tolist() for r in range(len(prompts))]

    def score_chunk(self, rows: int, t: int) -> int:
        """Positions per LM-head block: a power of two within SCORE_CHUNK, SCORE_BLOCK_BYTES."""
        fit = SCORE_BLOCK_BYTES // (4 * rows * self.model.cfg.vocab_size)
        chunk = 1 << max(0, int(fit).bit_length() - 1)
        return max(1, min(chunk, SCORE_CHUNK, t))

    def score(self, seqs: list[list[int]]) -> list[Scored]:
        """Log-probs of every token of each sequence after its first (one forward pass)."""
        longest = max(len(s) for s in seqs)
        t = next((b for b in self.score_buckets if b >= longest), None)
        if t is None:
            raise ValueError(f"a sequence of {longest} tokens is longer than max_model_len")
        rows = self.rows_bucket(len(seqs))
        ids = np.full((rows, t), self.pad_id, np.int32)
        mask = np.zeros((rows, t), np.int32)
        for r, s in enumerate(seqs):
            ids[r, t - len(s):], mask[r, t - len(s):] = s, 1
        mask[len(seqs):, -1] = 1  # dummy rows: one token, so no row is all padding
        args = (ids, mask)
        chunk = self.score_chunk(rows, t)
        if self.mesh is not None:
            args = tuple(jax.device_put(a, batch_sharding(self.mesh, 2)) for a in args)
            with jax.set_mesh(self.mesh):
                out = _score(self.graphdef, self.state, *args, k=TOP_LOGPROBS, chunk=chunk)
        else:
            out = _score(self.graphdef, self.state, *args, k=TOP_LOGPROBS, chunk=chunk)
        chosen, top, idx = (np.asarray(x) for x in out)  # [rows, t - 1] (+ [.., k])
        scored = []
        for r, s in enumerate(seqs):
            lo = t - len(s)  # position lo holds token 0; it predicts token 1
            scored.append(Scored(logprobs=chosen[r, lo:].tolist(), top_ids=idx[r, lo:].tolist(),
                                 top_logprobs=top[r, lo:].tolist()))
        return scored

    # -- warm-up -----------------------------------------------------------------------------
    def warm_up(self, log=None) -> int:
        """Compile every program a request can need (all shapes, the three sampling kinds and
        scoring); returns how many calls it made."""
        calls = 0
        kinds = (Sampling(), Sampling(temperature=1.0, seed=0),
                 Sampling(temperature=1.0, top_p=0.9, seed=0))
        for rows in self.batch_buckets:
            for p in self.prompt_buckets:
                for kind in kinds:
                    self.generate([[self.pad_id] * p] * rows, 1, kind)
                    calls += 1
            for t in self.score_buckets:
                self.score([[self.pad_id] * t] * rows)
                calls += 1
            if log:
                log(f"warmed up batch size {rows}")
        return calls
