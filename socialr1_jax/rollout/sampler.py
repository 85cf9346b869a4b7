"""Batched sampling with a KV cache: one compiled program prefills and decodes a whole batch.

`sample(model, prompts, ...)` left-pads the prompts, repeats each `num_samples` times (the GRPO
group, row i*n+j is sample j of prompt i) and runs `_generate`, a single jitted function that

1. takes per-layer copies of the stacked weights once (`unstack_layers`; a scan over the
   stacked weights inside the decode loop would copy each layer's slice on every step) and
   creates the KV cache inside the program, one [B, K, S, H] array per layer (so nothing
   outside holds it and XLA updates each loop-carried buffer in place: this is the donation of
   the cache; a stacked [L, B, K, S, H] cache was copied whole after every layer's write),
2. prefills the left-padded prompts (one forward pass per `prefill_chunk` tokens) and samples
   the first token from the last position only (the LM head never runs over the prompt); the
   n samples of a prompt share one prefill whose cache is copied n times (when the rows are
   whole groups that split evenly over the mesh),
3. decodes one token per iteration of a `lax.while_loop` that stops at `max_new_tokens` or as
   soon as every row has emitted one of the EOS ids; the step runs the layers as straight-line
   code over those weights and writes each layer's cache in place.

A prompt that fits one prefill chunk (the usual case) is prefilled by one scan over the stacked
layers whose per-layer keys and values become the per-layer cache (`hidden_states(...,
prompt_cache_slots=)`), so that part of the program holds one layer whatever the depth. A longer
prompt is prefilled chunk by chunk with the decode step's straight-line layers: its later chunks
attend to the per-layer cache (a scan would need the stacked cache, and splitting it afterwards
would hold two copies of the cache at once).

Shapes are bucketed (prompt length and generation length rounded up to a few sizes, see
`bucket`), and `max_new_tokens` itself is a traced value, so a training run whose prompts vary in
length compiles a handful of programs. With a mesh the batch is split over ('data', 'fsdp')
(padded with inactive dummy rows to a multiple of the shard count) and the cache is pinned with
`CACHE_LBKSH`; the draws (one uniform per row and step, inverse CDF) do not depend on the
sharding.

Log-probs: each sampled token's log-prob is taken under softmax(logits / T) over the whole
vocabulary, before top-k / top-p truncation. This is what the trainer recomputes
(`logprobs.completion_logprobs(..., temperature=T)`) and uses as the old policy in the GRPO ratio,
as verl does with vLLM's log-probs. Greedy decoding (T = 0) reports log softmax(logits) (T = 1).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model.qwen3 import KVCache
from socialr1_jax.rollout.checks import as_int, check_against_model, check_sampling, token_lists
from socialr1_jax.parallel.sharding import (batch_sharding, batch_shards, CACHE_BKSH, CACHE_LBKSH,
                                            constrain, param_shardings, TOKENS_BT)

# When only top-p is asked, the nucleus is first looked for among this many highest logits (a
# partial sort); only if some row's nucleus is wider does the step fall back to a bisection.
TOP_P_CANDIDATES = 1024


@dataclasses.dataclass
class SampleResult:
    """Completions of `sample`; every [R, ...] array has R = len(prompts) * num_samples rows.

    tokens [R, N] int32: generated ids, `pad_id` after the row's EOS.
    logprobs [R, N] float32: log-prob of each token under softmax(logits / T) (0 where masked).
    mask [R, N] int32: 1 for each generated token up to and including the EOS, 0 after.
    lengths [R] int32: number of generated tokens (mask.sum(1)).
    prompt_ids, prompt_mask [R, P]: the left-padded prompts (P bucketed), repeated per sample,
    so `completion_logprobs(model, prompt_ids, prompt_mask, tokens, mask)` recomputes logprobs.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    num_samples: int = 1
    steps: Optional[jax.Array] = None  # positions generated until every row was done


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static part of a compiled sampling program (one program per distinct plan + shapes)."""

    new_len: int        # generation buffer length (bucketed)
    greedy: bool
    top_k: int          # 0 = off
    use_top_p: bool
    pad_id: int
    prefill_chunk: int  # prompt tokens per prefill forward pass (divides the prompt length)
    top_p_candidates: int = TOP_P_CANDIDATES
    shared_prefill: int = 1  # rows i*n..i*n+n-1 share one prompt: prefill it once, copy the cache
    # Prefill and decode over per-layer copies of the weights taken before the loop
    # (Qwen3.unstacked_layers) and a per-layer cache, instead of scanning the stacked weights
    # and cache, which copies each layer's weight slices and the whole cache every step.
    unstack_layers: bool = True


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up: powers of two up to 1024, then multiples of 1024."""
    if n <= minimum:
        return minimum
    if n <= 1024:
        return 1 << (n - 1).bit_length()
    return -(-n // 1024) * 1024


# -- one sampling step on logits ---------------------------------------------------------------
# Everything here is a few linear passes over [B, V]: XLA's CPU sort of a 151,936-wide row takes
# ~30 ms and jax.random.categorical (V Gumbel draws per row) ~4 ms per row, either of which
# would cost more than a whole decode step of the 100M benchmark model.

def argmax_first(x_bv):
    """Index of the first maximum per row (as argmax), from two plain reductions."""
    v = x_bv.shape[-1]
    top = jnp.max(x_bv, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x_bv == top, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def _keep_threshold(sorted_desc, probs_sorted, top_p):
    """The smallest kept value per row: the nucleus is the shortest prefix with mass >= top_p."""
    cum = jnp.cumsum(probs_sorted, axis=-1)
    keep = (cum - probs_sorted) < top_p  # mass strictly before a token < p: always >= 1 kept
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    return jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)[:, 0]


def _ordered_key(x):
    """int32 keys with the order of the float32 values (for exact bisection over floats)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _nucleus_threshold_bisect(scaled_bv, lse_b1, top_p):
    """Largest value t per row with mass(x >= t) >= top_p: the last value of the nucleus.

    32 halvings of the int32 key range, each a masked sum over the row: exact, no sort.
    """
    key_bv = _ordered_key(scaled_bv)
    p_bv = jnp.exp(scaled_bv - lse_b1)
    b = scaled_bv.shape[0]
    lo = jnp.full((b,), jnp.iinfo(jnp.int32).min, jnp.int32)  # mass(key >= lo) = 1 >= p
    hi = jnp.max(key_bv, axis=-1) + 1                           # mass(key >= hi) = 0 < p

    def halve(_, lo_hi):
        lo, hi = lo_hi
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        ok = jnp.sum(jnp.where(key_bv >= mid[:, None], p_bv, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 33, halve, (lo, hi))
    # The smallest real value whose key is >= lo (the boundary token itself).
    return jnp.min(jnp.where(key_bv >= lo[:, None], scaled_bv, jnp.inf), axis=-1)


def truncate_logits(scaled_bv, *, top_k: int, top_p, use_top_p: bool,
                    candidates: int = TOP_P_CANDIDATES):
    """Logits with everything outside top-k, then top-p (of the renormalised rest), at -inf.

    Order as in transformers' and vLLM's samplers: temperature, top-k, top-p. Tokens tied with
    the last kept value are kept too (measure-zero for real logits). With top-p alone the
    nucleus is looked for among the `candidates` highest logits and, only when some row's
    nucleus is wider than that, by an exact bisection over the whole row (`lax.cond`).
    """
    if top_k <= 0 and not use_top_p:
        return scaled_bv
    v = scaled_bv.shape[-1]
    if top_k > 0:
        vals, _ = jax.lax.top_k(scaled_bv, min(top_k, v))
        thresh = vals[:, -1]
        if use_top_p:
            thresh = _keep_threshold(vals, jax.nn.softmax(vals, axis=-1), top_p)
    else:
        lse = jax.nn.logsumexp(scaled_bv, axis=-1, keepdims=True)
        vals, _ = jax.lax.top_k(scaled_bv, min(candidates, v))
        probs = jnp.exp(vals - lse)
        if candidates >= v:
            thresh = _keep_threshold(vals, probs, top_p)
        else:
            covered = jnp.all(jnp.sum(probs, axis=-1) >= top_p)
            thresh = jax.lax.cond(covered, lambda: _keep_threshold(vals, probs, top_p),
                                  lambda: _nucleus_threshold_bisect(scaled_bv, lse, top_p))
    return jnp.where(scaled_bv >= thresh[:, None], scaled_bv, -jnp.inf)


def _last_positive(x_bn):
    n = x_bn.shape[-1]
    return jnp.max(jnp.where(x_bn > 0, jnp.arange(n, dtype=jnp.int32), 0), axis=-1)


def inverse_cdf_sample(u_b, kept_bv, chunk: int = 1024):
    """Token per row drawn from softmax(kept) with uniforms u_b in [0, 1) (inverse CDF).

    Two levels so no [B, V] cumulative sum is needed: the chunk of `chunk` tokens holding the
    u-quantile from per-chunk masses, then the token inside it. A row can only land on a token
    of positive probability (rounding at the very top of the range falls back to the last one).
    """
    b, v = kept_bv.shape
    chunk = min(chunk, v)
    pad = -v % chunk
    p_bv = jnp.exp(kept_bv - jnp.max(kept_bv, axis=-1, keepdims=True))  # -inf -> 0
    p_bnc = jnp.pad(p_bv, ((0, 0), (0, pad))).reshape(b, -1, chunk)
    mass_bn = jnp.sum(p_bnc, axis=-1)
    cum_bn = jnp.cumsum(mass_bn, axis=-1)
    target = u_b * cum_bn[:, -1]
    ci = jnp.minimum(jnp.sum(cum_bn <= target[:, None], axis=-1), _last_positive(mass_bn))
    before = jnp.where(ci > 0, jnp.take_along_axis(cum_bn, jnp.maximum(ci - 1, 0)[:, None],
                                                   axis=-1)[:, 0], 0.0)
    row_bc = jnp.take_along_axis(p_bnc, ci[:, None, None], axis=1)[:, 0]
    inner = before[:, None] + jnp.cumsum(row_bc, axis=-1)
    j = jnp.minimum(jnp.sum(inner <= target[:, None], axis=-1), _last_positive(row_bc))
    return (ci * chunk + j).astype(jnp.int32)


def sample_step(key, logits_bv, temperature, top_p, *, greedy: bool, top_k: int,
                use_top_p: bool, candidates: int = TOP_P_CANDIDATES):
    """Choose one token per row from logits [B, V]; returns (tokens [B], logprobs [B]).

    The log-prob is under softmax(logits / T) before truncation (T = 1 when greedy).
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if greedy:
        tok = argmax_first(logits_bv)
        scaled = logits_bv
    else:
        scaled = logits_bv / temperature
        kept = truncate_logits(scaled, top_k=top_k, top_p=top_p, use_top_p=use_top_p,
                               candidates=candidates)
        tok = inverse_cdf_sample(jax.random.uniform(key, (scaled.shape[0],)), kept)
    lse = jax.nn.logsumexp(scaled, axis=-1)
    logp = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - lse
    return tok, logp


# -- the compiled program ----------------------------------------------------------------------

def _head(h_bd, w_vd, precision):
    return jnp.einsum("bd,vd->bv", h_bd, w_vd.astype(h_bd.dtype), precision=precision,
                      preferred_element_type=jnp.float32)


def _pin_cache(cache: KVCache) -> KVCache:
    """The cache with its rows over the batch shards and KV heads over 'tensor'."""
    if cache.per_layer:
        pin = lambda kv: tuple(constrain(a, CACHE_BKSH) for a in kv)  # noqa: E731
    else:
        pin = partial(constrain, spec=CACHE_LBKSH)
    return dataclasses.replace(cache, k_lbksh=pin(cache.k_lbksh), v_lbksh=pin(cache.v_lbksh),
                               valid_bs=constrain(cache.valid_bs, TOKENS_BT))


def _prefill(model, prompt_ids, prompt_mask, cache, chunk: int, layers=None):
    """Write the prompts into the cache `chunk` tokens per forward pass; last hidden [B, D].

    Chunking bounds the attention scores to [B, heads, chunk, S] however long the prompt.
    layers: per-layer weights (with a per-layer cache), as in the decode loop.
    """
    b, p = prompt_ids.shape
    forward = partial(model.hidden_states, layer_weights=layers)
    if chunk >= p:
        hidden, cache = forward(prompt_ids, prompt_mask, cache=cache)
        return hidden[:, -1], cache
    ids_cbt = prompt_ids.reshape(b, p // chunk, chunk).swapaxes(0, 1)
    mask_cbt = prompt_mask.reshape(b, p // chunk, chunk).swapaxes(0, 1)

    def one(carry, xs):
        cache, _ = carry
        hidden, cache = forward(xs[0], xs[1], cache=cache)
        return (cache, hidden[:, -1]), None

    h0 = jnp.zeros((b, model.cfg.hidden_size), model.cfg.jnp_dtype)
    (cache, last), _ = jax.lax.scan(one, (cache, h0), (ids_cbt, mask_cbt))
    return last, cache


@partial(jax.jit, static_argnames=("graphdef", "plan"))
def _generate(graphdef, state, prompt_ids, prompt_mask, active_b, key, temperature, top_p,
              eos_ids, max_new, *, plan: _Plan):
    """Prefill + while_loop decode.

    Returns (tokens, logprobs, mask) [B, plan.new_len] and the number of positions generated.
    """
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    b, p = prompt_ids.shape
    n = plan.new_len
    w_vd = model.lm_head_weight()
    head = partial(_head, w_vd=w_vd, precision=cfg.precision)
    choose = partial(sample_step, temperature=temperature, top_p=top_p, greedy=plan.greedy,
                     top_k=plan.top_k, use_top_p=plan.use_top_p,
                     candidates=plan.top_p_candidates)

    def emit(i, tok, logp, done, bufs):
        """Write step i's token for rows not yet done; a row is done after its EOS."""
        tokens, logps, mask = bufs
        live = ~done
        tokens = jax.lax.dynamic_update_slice(
            tokens, jnp.where(live, tok, plan.pad_id)[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, jnp.where(live, logp, 0.0)[:, None], (0, i))
        mask = jax.lax.dynamic_update_slice(mask, live.astype(jnp.int32)[:, None], (0, i))
        done = done | jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
        return done, (tokens, logps, mask)

    # Per-layer weights and cache (see Qwen3.unstacked_layers and KVCache.unstacked): a loop that
    # carries the stacked cache copies it whole after each layer's write.
    layers = model.unstacked_layers() if plan.unstack_layers else None

    def prefill(ids, mask):
        """(last hidden [rows, D], a cache holding the prompts) for rows of prompts."""
        if layers is not None and plan.prefill_chunk >= p:
            # The whole prompt in one pass: a scan over the stacked layers (one layer in the
            # program) whose keys and values become the per-layer cache.
            hidden, cache = model.hidden_states(ids, mask, prompt_cache_slots=p + n)
            return hidden[:, -1], _pin_cache(cache)
        cache = KVCache.zeros(cfg, ids.shape[0], p + n)
        cache = _pin_cache(cache.unstacked() if layers is not None else cache)
        return _prefill(model, ids, mask, cache, plan.prefill_chunk, layers)

    # Left padding puts every row's last prompt token at the last position.
    g = plan.shared_prefill
    if g > 1:
        # The n samples of a prompt have the same prompt: run it once and copy its cache.
        last_bd, small = prefill(prompt_ids[::g], prompt_mask[::g])
        last_bd = jnp.repeat(last_bd, g, axis=0)
        cache = _pin_cache(small.repeat_rows(g))
    else:
        last_bd, cache = prefill(prompt_ids, prompt_mask)
    tok, logp = choose(jax.random.fold_in(key, 0), head(last_bd))
    bufs = (constrain(jnp.full((b, n), plan.pad_id, jnp.int32), TOKENS_BT),
            constrain(jnp.zeros((b, n), jnp.float32), TOKENS_BT),
            constrain(jnp.zeros((b, n), jnp.int32), TOKENS_BT))
    done, bufs = emit(0, tok, logp, ~active_b, bufs)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < max_new) & ~jnp.all(done)

    def body(carry):
        i, prev, done, cache, bufs = carry
        hidden, cache = model.hidden_states(prev[:, None], jnp.ones((b, 1), jnp.int32),
                                            cache=cache, layer_weights=layers)
        tok, logp = choose(jax.random.fold_in(key, i), head(hidden[:, 0]))
        done, bufs = emit(i, tok, logp, done, bufs)
        return i + 1, tok, done, cache, bufs

    carry = (jnp.int32(1), tok, done, cache, bufs)
    steps, _, _, _, bufs = jax.lax.while_loop(cond, body, carry)
    return bufs, steps


def _check_shapes(shapes, longest: int, n_new: int, max_len: int, rows: int) -> tuple[int, int]:
    """(prompt_len, new_len) of an explicit `shapes` request, or ValueError naming the gap."""
    want_rows, p_len, n_len = (int(x) for x in shapes)
    if want_rows < rows or p_len < longest or n_len < n_new or p_len + n_len > max_len:
        raise ValueError(f"shapes {tuple(shapes)} do not hold {rows} row(s) of prompts up to "
                         f"{longest} tokens and {n_new} new tokens within {max_len}")
    return p_len, n_len


# -- public entry point ------------------------------------------------------------------------

def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
           eos_ids: Sequence[int] = (), seed: int = 0, mesh: Optional[Mesh] = None,
           pad_id: int = 0, max_cache_len: Optional[int] = None,
           bucket_shapes: bool = True, prefill_chunk: int = 512,
           unstack_layers: bool = True, shapes: Optional[tuple[int, int, int]] = None
           ) -> SampleResult:
    """Sample `num_samples` completions for each prompt (a list of token-id lists).

    temperature 0 is greedy (argmax). Otherwise tokens are drawn from softmax(logits / T)
    truncated to the top_k highest (0 = off), then to the smallest set whose renormalised mass is
    >= top_p (always at least the top token), renormalised. A row stops after emitting any of
    `eos_ids` (that EOS is part of the completion and its mask) or at `max_new_tokens`; the
    program stops when every row has. Returned log-probs are those of the sampled tokens under the
    untruncated softmax(logits / T) (T = 1 for greedy): what GRPO uses as old log-probs.

    mesh: split the batch over ('data', 'fsdp') (padded with dummy rows that are dropped);
    pad_id fills the prompt padding and the completion after EOS; max_cache_len (default the
    model's max_position_embeddings) bounds prompt + max_new_tokens; bucket_shapes rounds the
    prompt and generation lengths up (`bucket`) so few programs are compiled; prefill_chunk
    bounds how many prompt tokens one prefill pass attends with (memory of the scores);
    unstack_layers: prefill and decode over per-layer copies of the layers' weights taken once
    (one extra copy of them held while sampling) and a per-layer cache, rather than scanning the
    stacked weights and cache, whose per-layer slices XLA copies on every step (and, on
    XLA:CPU, the whole cache after each layer's write; see Qwen3.unstacked_layers and
    KVCache.unstacked).
    shapes: (rows, prompt_len, new_len) to pad the batch to exactly, instead of bucketing (a
    server that warms a fixed set of programs up front); the extra rows are inactive (done from
    the first step), and rows >= len(prompts) * num_samples, prompt_len >= the longest prompt,
    max_new_tokens <= new_len and prompt_len + new_len <= max_cache_len are required, and the
    result keeps those padded shapes (inactive rows have an all-zero mask; positions past
    max_new_tokens are masked).
    Raises ValueError naming the value for bad arguments.
    """
    cfg = model.cfg
    max_len = int(max_cache_len or cfg.max_position_embeddings)
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, num_samples=num_samples, prefill_chunk=prefill_chunk)
    prompts = token_lists(prompts)
    eos_ids = tuple(as_int("eos id", e) for e in eos_ids)
    check_against_model(prompts, vocab=cfg.vocab_size, max_len=max_len,
                        max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)
    n_new = int(max_new_tokens)
    longest = max(len(p) for p in prompts)
    if shapes is not None:
        p_len, n_len = _check_shapes(shapes, longest, n_new, max_len,
                                     len(prompts) * num_samples)
    elif bucket_shapes:
        p_len = min(bucket(longest), max_len - n_new)
        n_len = min(bucket(n_new), max_len - p_len)
    else:
        p_len, n_len = longest, n_new
    if p_len > prefill_chunk:  # whole chunks: extra left padding changes nothing
        p_len = -(-p_len // prefill_chunk) * prefill_chunk

    rows = len(prompts) * num_samples
    shards = batch_shards(mesh) if mesh is not None else 1
    padded_rows = -(-max(rows, shapes[0] if shapes else 0) // shards) * shards
    ids = np.full((padded_rows, p_len), pad_id, np.int32)
    mask = np.zeros((padded_rows, p_len), np.int32)
    for r in range(padded_rows):
        pr = prompts[min(r, rows - 1) // num_samples]  # dummy rows copy the last prompt
        ids[r, p_len - len(pr):] = pr
        mask[r, p_len - len(pr):] = 1
    active = np.arange(padded_rows) < rows

    # Shared prefill needs whole groups (no dummy rows) that still split evenly over the mesh.
    share = (num_samples > 1 and padded_rows == rows
             and (rows // num_samples) % shards == 0)
    plan = _Plan(new_len=n_len, greedy=temperature == 0, top_k=int(top_k),
                 use_top_p=top_p < 1.0, pad_id=int(pad_id),
                 prefill_chunk=min(int(prefill_chunk), p_len), top_p_candidates=TOP_P_CANDIDATES,
                 shared_prefill=int(num_samples) if share else 1,
                 unstack_layers=bool(unstack_layers))
    eos = np.asarray(eos_ids if eos_ids else (-1,), np.int32)  # -1 never matches a token
    graphdef, state = nnx.split(model)
    args = [ids, mask, active]
    if mesh is not None:
        state = jax.device_put(state, param_shardings(state, mesh))
        args = [jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in args]
    scalars = (jax.random.key(seed), jnp.float32(temperature if temperature > 0 else 1.0),
               jnp.float32(top_p), jnp.asarray(eos), jnp.int32(n_new))
    if mesh is not None:
        with jax.set_mesh(mesh):
            (tokens, logps, cmask), steps = _generate(graphdef, state, *args, *scalars,
                                                      plan=plan)
    else:
        (tokens, logps, cmask), steps = _generate(graphdef, state, *args, *scalars, plan=plan)

    # With explicit shapes the padded arrays come back as they are: slicing them to a request's
    # own sizes would compile a small program per distinct size.
    keep = rows if shapes is None else padded_rows
    if shapes is None and (padded_rows != rows or n_len != n_new):
        tokens, logps, cmask = (x[:rows, :n_new] for x in (tokens, logps, cmask))
    # On a mesh the prompts come back with the batch sharding the completions have.
    p_ids, p_mask = (args[0], args[1]) if mesh is not None else (jnp.asarray(ids), jnp.asarray(mask))
    if keep != padded_rows:
        p_ids, p_mask = p_ids[:keep], p_mask[:keep]
    return SampleResult(tokens=tokens, logprobs=logps, mask=cmask,
                        lengths=cmask.sum(axis=1).astype(jnp.int32),
                        prompt_ids=p_ids, prompt_mask=p_mask,
                        num_samples=int(num_samples), steps=steps)


def compiled_programs() -> int:
    """How many sampling programs have been compiled in this process (for bucketing checks)."""
    return _generate._cache_size()
