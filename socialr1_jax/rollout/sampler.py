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

With `slots=K` the rows go through `rollout.refill` instead: K decode slots, each finished row's
slot prefilled with the next pending sequence inside the same compiled loop (continuous
batching), with the same tokens and log-probs per sequence as here.

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
from jax.experimental import io_callback
from jax.sharding import Mesh

from socialr1_jax.parallel.sharding import (batch_sharding, batch_shards, constrain,
                                            param_shardings, TOKENS_BT)
from socialr1_jax.rollout import refill, stream
from socialr1_jax.rollout.checks import (ArgumentError, as_int, check_against_model, check_sampling,
                                         new_token_caps, token_lists)
# The token choice lives in `draw` (shared with the refill sampler); its names stay importable here.
from socialr1_jax.rollout.draw import (_nucleus_threshold_bisect, argmax_first, head,  # noqa: F401
                                       inverse_cdf_sample, sample_step, truncate_logits,
                                       TOP_P_CANDIDATES)
from socialr1_jax.rollout.prefill import prefill_prompts


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
    # (with slots: decode iterations of the refill loop)
    refills: Optional[jax.Array] = None  # slots: sequences refilled into freed slots


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
    # Hand each step's tokens to the host (`rollout.stream`) from inside the decode loop.
    stream: bool = False


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up: powers of two up to 1024, then multiples of 1024."""
    if n <= minimum:
        return minimum
    if n <= 1024:
        return 1 << (n - 1).bit_length()
    return -(-n // 1024) * 1024



@partial(jax.jit, static_argnames=("graphdef", "plan"))
def _generate(graphdef, state, prompt_ids, prompt_mask, active_b, key, temperature, top_p,
              eos_ids, max_new, stream_id=None, *, plan: _Plan):
    """Prefill + while_loop decode. max_new: the new-token cap, one for all rows or one per row.
    With plan.stream, each step's tokens (-1 for rows already done) go to `stream.deliver`
    under the traced `stream_id`.

    Returns (tokens, logprobs, mask) [B, plan.new_len] and the number of positions generated.
    """
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    b, p = prompt_ids.shape
    n = plan.new_len
    max_new_b = jnp.broadcast_to(jnp.asarray(max_new, jnp.int32), (b,))
    logits = partial(head, w_vd=model.lm_head_weight(), precision=cfg.precision)
    choose = partial(sample_step, temperature=temperature, top_p=top_p, greedy=plan.greedy,
                     top_k=plan.top_k, use_top_p=plan.use_top_p,
                     candidates=plan.top_p_candidates)

    def emit(i, tok, logp, done, bufs):
        """Write step i's token for rows not yet done; a row is done after its EOS or cap."""
        tokens, logps, mask = bufs
        live = ~done
        if plan.stream:
            io_callback(stream.deliver, None, stream_id, i, jnp.where(live, tok, -1),
                        ordered=True)
        tokens = jax.lax.dynamic_update_slice(
            tokens, jnp.where(live, tok, plan.pad_id)[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, jnp.where(live, logp, 0.0)[:, None], (0, i))
        mask = jax.lax.dynamic_update_slice(mask, live.astype(jnp.int32)[:, None], (0, i))
        done = done | jnp.any(tok[:, None] == eos_ids[None, :], axis=-1) | (i + 1 >= max_new_b)
        return done, (tokens, logps, mask)

    # Per-layer weights and cache (see Qwen3.unstacked_layers and KVCache.unstacked): a loop that
    # carries the stacked cache copies it whole after each layer's write.
    layers = model.unstacked_layers() if plan.unstack_layers else None
    # Left padding puts every row's last prompt token at the last position.
    last_bd, cache = prefill_prompts(model, prompt_ids, prompt_mask, slots=p + n,
                                     chunk=plan.prefill_chunk, layers=layers,
                                     group=plan.shared_prefill)
    tok, logp = choose(jax.random.fold_in(key, 0), logits(last_bd))
    bufs = (constrain(jnp.full((b, n), plan.pad_id, jnp.int32), TOKENS_BT),
            constrain(jnp.zeros((b, n), jnp.float32), TOKENS_BT),
            constrain(jnp.zeros((b, n), jnp.int32), TOKENS_BT))
    done, bufs = emit(0, tok, logp, ~active_b, bufs)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < jnp.max(max_new_b)) & ~jnp.all(done)

    def body(carry):
        i, prev, done, cache, bufs = carry
        hidden, cache = model.hidden_states(prev[:, None], jnp.ones((b, 1), jnp.int32),
                                            cache=cache, layer_weights=layers)
        tok, logp = choose(jax.random.fold_in(key, i), logits(hidden[:, 0]))
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

def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
           eos_ids: Sequence[int] = (), seed: int = 0, mesh: Optional[Mesh] = None,
           pad_id: int = 0, max_cache_len: Optional[int] = None,
           bucket_shapes: bool = True, prefill_chunk: int = 512,
           unstack_layers: bool = True, slots: Optional[int] = None,
           shapes: Optional[tuple[int, int, int]] = None,
           on_tokens: Optional[stream.OnTokens] = None) -> SampleResult:
    """Sample `num_samples` completions for each prompt (a list of token-id lists).

    temperature 0 is greedy (argmax). Otherwise tokens are drawn from softmax(logits / T)
    truncated to the top_k highest (0 = off), then to the smallest set whose renormalised mass is
    >= top_p (always at least the top token), renormalised. A row stops after emitting any of
    `eos_ids` (that EOS is part of the completion and its mask) or at `max_new_tokens` (one cap,
    or one per row in the order i*n + j); the program stops when every row has. Returned
    log-probs are those of the sampled tokens under the untruncated softmax(logits / T) (T = 1
    for greedy): what GRPO uses as old log-probs.

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
    slots: None decodes every row at once (one static batch). K: refill (continuous batching,
    `rollout.refill`): K rows decode at a time over a KV cache of K rows (rounded up to the
    mesh's batch shards, at most the number of rows), each finished row's slot prefilled with
    the next sequence; same tokens and log-probs per sequence as the static batch with the same
    seed (up to float rounding), and `SampleResult.refills` counts the refills.
    shapes: (rows, prompt_len, new_len) to pad the batch to exactly, instead of bucketing (a
    server that warms a fixed set of programs up front); the extra rows are inactive (done from
    the first step), and rows >= len(prompts) * num_samples, prompt_len >= the longest prompt,
    max_new_tokens <= new_len and prompt_len + new_len <= max_cache_len are required, and the
    result keeps those padded shapes (inactive rows have an all-zero mask; positions past
    max_new_tokens are masked).
    on_tokens: called on the host as the decode loop runs, once per step in order, with
    (step, tokens [padded rows]) where a row already done (or inactive) holds -1: token
    streaming (a separate compiled program; not with `slots`). The result is unchanged.
    Raises ValueError naming the value for bad arguments.
    """
    cfg = model.cfg
    max_len = int(max_cache_len or cfg.max_position_embeddings)
    rows = len(prompts) * as_int("num_samples", num_samples, minimum=1)
    caps = new_token_caps(max_new_tokens, rows)
    n_new = int(caps.max()) if rows else 1  # no prompts: check_against_model says so
    check_sampling(max_new_tokens=n_new, temperature=temperature, top_k=top_k,
                   top_p=top_p, num_samples=num_samples, prefill_chunk=prefill_chunk)
    _check_slots(slots, unstack_layers, shapes, on_tokens)
    prompts = token_lists(prompts)
    eos_ids = tuple(as_int("eos id", e) for e in eos_ids)
    check_against_model(prompts, vocab=cfg.vocab_size, max_len=max_len,
                        max_new_tokens=n_new, eos_ids=eos_ids, pad_id=pad_id)
    p_len, n_len = _buffer_lengths(max(len(p) for p in prompts), n_new, max_len,
                                   bucket_shapes, prefill_chunk, shapes, rows)
    shards = batch_shards(mesh) if mesh is not None else 1
    padded_rows = -(-max(rows, int(shapes[0]) if shapes else 0) // shards) * shards
    ids, mask = _left_padded(prompts, num_samples, padded_rows, p_len, pad_id)
    plan = _make_plan(rows, padded_rows, shards, p_len, n_len, temperature=temperature,
                      top_k=top_k, top_p=top_p, num_samples=num_samples, pad_id=pad_id,
                      prefill_chunk=prefill_chunk, unstack_layers=unstack_layers,
                      stream=on_tokens is not None)
    eos = np.asarray(eos_ids if eos_ids else (-1,), np.int32)  # -1 never matches a token
    scalars = (jax.random.key(seed), jnp.float32(temperature if temperature > 0 else 1.0),
               jnp.float32(top_p), jnp.asarray(eos))
    if slots is None:
        cap = (jnp.int32(n_new) if np.ndim(max_new_tokens) == 0
               else np.pad(caps, (0, padded_rows - rows), constant_values=1))
        out = _run_static(model, mesh, ids, mask, rows, scalars, cap, plan, on_tokens)
    else:
        out = _run_refill(model, mesh, ids, mask, scalars, caps, plan,
                          slots=int(slots), group=int(num_samples), draw_rows=padded_rows)
    return _result(out, rows=rows, n_new=n_new, cut=shapes is None,
                   keep=rows if shapes is None else padded_rows, num_samples=int(num_samples))


def _result(out, *, rows: int, n_new: int, cut: bool, keep: int,
            num_samples: int) -> SampleResult:
    """The SampleResult of a program's outputs: rows and new tokens cut to the request's own
    sizes, or (explicit shapes: keep = the padded rows) left padded, since slicing them to each
    request's sizes would compile a small program per distinct size."""
    (tokens, logps, cmask), steps, *refills = out[0]
    if cut and tokens.shape != (rows, n_new):
        tokens, logps, cmask = (x[:rows, :n_new] for x in (tokens, logps, cmask))
    # On a mesh the prompts come back with the batch sharding the completions have.
    p_ids, p_mask = out[1]
    if p_ids.shape[0] != keep:
        p_ids, p_mask = p_ids[:keep], p_mask[:keep]
    return SampleResult(tokens=tokens, logprobs=logps, mask=cmask,
                        lengths=cmask.sum(axis=1).astype(jnp.int32),
                        prompt_ids=p_ids, prompt_mask=p_mask,
                        num_samples=num_samples, steps=steps,
                        refills=refills[0] if refills else None)


def _make_plan(rows, padded_rows, shards, p_len, n_len, *, temperature, top_k, top_p,
               num_samples, pad_id, prefill_chunk, unstack_layers, stream=False) -> _Plan:
    """The static plan of a request's program."""
    # Shared prefill needs whole groups (no dummy rows) that still split evenly over the mesh.
    share = (num_samples > 1 and padded_rows == rows
             and (rows // num_samples) % shards == 0)
    return _Plan(new_len=n_len, greedy=temperature == 0, top_k=int(top_k),
                 use_top_p=top_p < 1.0, pad_id=int(pad_id),
                 prefill_chunk=min(int(prefill_chunk), p_len), top_p_candidates=TOP_P_CANDIDATES,
                 shared_prefill=int(num_samples) if share else 1,
                 unstack_layers=bool(unstack_layers), stream=stream)


def _check_slots(slots, unstack_layers, shapes, on_tokens) -> None:
    """Refill's own arguments, and what it cannot be combined with."""
    if slots is None:
        return
    as_int("slots", slots, minimum=1)
    if not unstack_layers:
        raise ArgumentError("slots", slots, "needs unstack_layers=True (the refill loop "
                            "decodes over per-layer weights and cache)")
    if shapes is not None:
        raise ArgumentError("slots", slots, "cannot be combined with explicit shapes")
    if on_tokens is not None:
        raise ArgumentError("slots", slots, "cannot be combined with on_tokens")


def _buffer_lengths(longest, n_new, max_len, bucket_shapes, prefill_chunk, shapes, rows):
    """(prompt length, generation length) of the program's buffers."""
    if shapes is not None:
        p_len, n_len = _check_shapes(shapes, longest, n_new, max_len, rows)
    elif bucket_shapes:
        p_len = min(bucket(longest), max_len - n_new)
        n_len = min(bucket(n_new), max_len - p_len)
    else:
        p_len, n_len = longest, n_new
    if p_len > prefill_chunk:  # whole chunks: extra left padding changes nothing
        p_len = -(-p_len // prefill_chunk) * prefill_chunk
    return p_len, n_len


def _run_refill(model, mesh, ids, mask, scalars, caps, plan, *, slots, group, draw_rows):
    """The refill program over `slots` slots (at most one per row, whole batch shards).

    ids, mask: the rows padded to whole batch shards, so that they shard on a mesh; the dummy
    rows come after the real ones (they change no real sequence's draws) and get one token.
    """
    rows = ids.shape[0]
    caps = np.pad(caps, (0, rows - len(caps)), constant_values=1)
    shards = batch_shards(mesh) if mesh is not None else 1
    shape = _refill_shape(rows, shards, slots, group, draw_rows)
    return _run(refill._generate_refill, model, mesh, (ids, mask),
                (*scalars, caps.astype(np.int32)), plan=plan, shape=shape)


def _refill_shape(rows: int, shards: int, slots: int, group: int, draw_rows: int):
    """K = the slots rounded up to whole batch shards (at most the rows)."""
    k = -(-min(slots, rows) // shards) * shards
    # The first fill shares one prefill per prompt when the slots hold whole groups.
    whole = group > 1 and k % group == 0 and k <= rows and (k // group) % shards == 0
    return refill.RefillShape(slots=k, draw_rows=draw_rows, group=group,
                              first_group=group if whole else 1)


def lower(graphdef, state, *, prompts: int, num_samples: int, prompt_len: int,
          max_new_tokens: int, slots: Optional[int] = None, mesh: Optional[Mesh] = None,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          prefill_chunk: int = 512, unstack_layers: bool = True):
    """The rollout program `sample` would run for `prompts` prompts of `prompt_len` tokens x
    `num_samples`, up to `max_new_tokens` (both lengths bucketed as `sample` does), lowered
    (`jax.stages.Lowered`) without running it: `state` may be abstract (ShapeDtypeStructs
    carrying their shardings, `model.build.abstract_state`). For memory plans
    (`.compile().memory_analysis()`) and cost analyses."""
    _check_slots(slots, unstack_layers, None, None)
    rows = prompts * num_samples
    max_len = nnx.merge(graphdef, state).cfg.max_position_embeddings  # as `sample` bounds it
    if prompt_len + max_new_tokens > max_len:
        raise ArgumentError("max_new_tokens", max_new_tokens, f"with prompt_len {prompt_len} "
                            f"exceeds the model's {max_len} positions")
    p_len, n_len = _buffer_lengths(prompt_len, max_new_tokens, max_len, True, prefill_chunk,
                                   None, rows)
    shards = batch_shards(mesh) if mesh is not None else 1
    padded = -(-rows // shards) * shards
    plan = _make_plan(rows, padded, shards, p_len, n_len, temperature=temperature, top_k=top_k,
                      top_p=top_p, num_samples=num_samples, pad_id=0,
                      prefill_chunk=prefill_chunk, unstack_layers=unstack_layers)

    def arg(shape, dtype):
        sharding = batch_sharding(mesh, len(shape)) if mesh is not None else None
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    ids, mask = arg((padded, p_len), jnp.int32), arg((padded, p_len), jnp.int32)
    scalars = (jax.random.key(0), jnp.float32(temperature or 1.0), jnp.float32(top_p),
               jnp.zeros((1,), jnp.int32))
    if slots is None:
        program, arrays, static = _generate, (ids, mask, arg((padded,), jnp.bool_)), {}
        scalars = (*scalars, jnp.int32(max_new_tokens))
    else:
        program, arrays = refill._generate_refill, (ids, mask)
        static = dict(shape=_refill_shape(padded, shards, slots, num_samples, padded))
        scalars = (*scalars, arg((padded,), jnp.int32))
    if mesh is None:
        return program.lower(graphdef, state, *arrays, *scalars, plan=plan, **static)
    with jax.set_mesh(mesh):
        return program.lower(graphdef, state, *arrays, *scalars, plan=plan, **static)


def _left_padded(prompts, num_samples, padded_rows, p_len, pad_id):
    """ids, mask [padded_rows, p_len]: row i*n+j holds prompt i at the right; dummy rows copy
    the last prompt."""
    rows = len(prompts) * num_samples
    ids = np.full((padded_rows, p_len), pad_id, np.int32)
    mask = np.zeros((padded_rows, p_len), np.int32)
    for r in range(padded_rows):
        pr = prompts[min(r, rows - 1) // num_samples]
        ids[r, p_len - len(pr):] = pr
        mask[r, p_len - len(pr):] = 1
    return ids, mask


def _run_static(model, mesh, ids, mask, rows, scalars, cap, plan, on_tokens=None):
    """The static-batch program; with on_tokens, registered for the call's host callbacks."""
    active = np.arange(ids.shape[0]) < rows
    if on_tokens is None:
        return _run(_generate, model, mesh, (ids, mask, active), (*scalars, cap), plan=plan)
    sid = stream.register(on_tokens)
    try:
        out = _run(_generate, model, mesh, (ids, mask, active),
                   (*scalars, cap, jnp.int32(sid)), plan=plan)
        return jax.block_until_ready(out)  # every callback has run once the outputs are ready
    finally:
        stream.release(sid)


def _run(program, model, mesh, arrays, scalars, **static):
    """program(graphdef, state, *arrays, *scalars) with the arrays over the mesh's batch shards;
    returns (its outputs, (prompt ids, mask) as laid out for it)."""
    graphdef, state = nnx.split(model)
    if mesh is None:
        return program(graphdef, state, *arrays, *scalars, **static), arrays[:2]
    state = jax.device_put(state, param_shardings(state, mesh))
    arrays = [jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in arrays]
    with jax.set_mesh(mesh):
        return program(graphdef, state, *arrays, *scalars, **static), arrays[:2]


def compiled_programs() -> int:
    """How many sampling programs have been compiled in this process (for bucketing checks)."""
    return _generate._cache_size()
