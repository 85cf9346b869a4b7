"""Refill (continuous batching): K decode slots; a finished row's slot takes the next sequence.

The static sampler (`sampler._generate`) decodes every row of the rollout at once and stops when
the longest is done, so with heavy-tailed completion lengths most rows run through every layer
long after their EOS, and the KV cache holds every row at once. Here, as in vLLM's continuous
batching (which verl's and TRL's rollouts use), a fixed number of slots K decode together over a
KV cache of K rows; when a slot's sequence ends (EOS or its own cap), the next pending sequence
is prefilled into that slot's cache row and decoding goes on. All of it is one compiled program
(`_generate_refill`): a `lax.while_loop` whose body decodes one token in every slot and then, in
an inner loop, refills each finished slot while sequences are pending; no host round trip.

Each slot writes its own cache position (`KVCache.index` per row): sequence r's token i goes to
slot P + i of its row, the position the static sampler gives it, so each row's attention sees
the same keys in the same order. A refill prefills one prompt; the samples of a GRPO group
(rows i*n .. i*n+n-1) come one after another, so the last prompt's cache row is kept and copied
for the next sample of the same prompt instead of prefilling it again.

Equality with the static sampler: sequence r's step-i uniform is element r of
`uniform(fold_in(key, i), (rows,))`, exactly the one the static sampler draws for row r, so with
the same seed every sequence gets the same tokens and log-probs, greedy or sampled. The only
difference is floating-point rounding: a matmul over K rows need not round like one over all
rows (XLA picks kernels by shape), which moves log-probs by ~1e-7 and could flip a token only
where two candidates tie to that precision. Outputs keep the layout i*n + j.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from socialr1_jax.model.qwen3 import decoder_layer, KVCache, rms_norm
from socialr1_jax.parallel.sharding import constrain, TOKENS_BT
from socialr1_jax.rollout.draw import head, sample_step
from socialr1_jax.rollout.prefill import pin_cache, prefill, prefill_prompts


def _prompt_row(model, layers, ids_1p, mask_1p, slots: int, chunk: int):
    """One prompt's (per-layer keys, values [1, K, slots, H], last hidden [1, D]).

    The same computation as the static sampler's prefill of that row: one pass of the layers
    without a cache (its keys and values kept) when the prompt fits one chunk, else chunk by chunk
    into a cache of `slots` slots. Straight-line over `layers`: a scan over the stacked weights
    here, inside the loop, would copy every layer's weights at each refill.
    """
    cfg = model.cfg
    p = ids_1p.shape[1]
    if chunk < p:
        cache = pin_cache(KVCache.zeros(cfg, 1, slots).unstacked())
        last, cache = prefill(model, ids_1p, mask_1p, cache, chunk, layers)
        return cache.k_lbksh, cache.v_lbksh, last
    mask_bt = mask_1p.astype(jnp.bool_)
    positions = jnp.maximum(jnp.cumsum(mask_bt, axis=1) - 1, 0)
    mask_bts = jnp.tril(jnp.ones((p, p), jnp.bool_))[None] & mask_bt[:, None, :]
    x = jnp.take(model.embed_vd[...], ids_1p, axis=0).astype(cfg.jnp_dtype)
    pad = ((0, 0), (0, 0), (0, slots - p), (0, 0))
    ks, vs = [], []
    for w in layers:
        x, (k, v) = decoder_layer(cfg, w, x, positions, mask_bts)
        ks.append(jnp.pad(k, pad))
        vs.append(jnp.pad(v, pad))
    last = rms_norm(x, model.final_norm_d[...], cfg.rms_norm_eps)[:, -1]
    return tuple(ks), tuple(vs), last


@dataclasses.dataclass(frozen=True)
class RefillShape:
    """The static part of a refill program besides the sampler's plan."""

    slots: int       # K decode slots (cache rows)
    draw_rows: int   # rows of the static sampler's per-step uniform draw (its padded batch)
    group: int       # samples per prompt (consecutive rows share a prompt)
    first_group: int  # the initial fill shares one prefill per prompt in groups of this many


def _empty_outputs(rows: int, n: int, pad_id: int):
    """(tokens, logprobs, mask) [rows, n] before any token: pad, 0, 0."""
    return (constrain(jnp.full((rows, n), pad_id, jnp.int32), TOKENS_BT),
            constrain(jnp.zeros((rows, n), jnp.float32), TOKENS_BT),
            constrain(jnp.zeros((rows, n), jnp.int32), TOKENS_BT))


@partial(jax.jit, static_argnames=("graphdef", "plan", "shape"))
def _generate_refill(graphdef, state, prompt_ids, prompt_mask, key, temperature, top_p, eos_ids,
                     max_new_r, *, plan, shape: RefillShape):
    """Refill sampling of every row of prompt_ids [R, P] (left-padded) through K slots.

    max_new_r [R]: each sequence's cap. Returns ((tokens, logprobs, mask) [R, plan.new_len],
    decode iterations, refills).
    """
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    rows, p = prompt_ids.shape
    n, k = plan.new_len, shape.slots
    layers = model.unstacked_layers()
    logits = partial(head, w_vd=model.lm_head_weight(), precision=cfg.precision)
    choose = partial(sample_step, key, temperature=temperature, top_p=top_p, greedy=plan.greedy,
                     top_k=plan.top_k, use_top_p=plan.use_top_p,
                     candidates=plan.top_p_candidates)

    def uniforms(step_k, seq_k):
        """Each slot's uniform: the static sampler's draw for its sequence at its step."""
        if plan.greedy:
            return None
        draw = lambda i, r: jax.random.uniform(  # noqa: E731
            jax.random.fold_in(key, i), (shape.draw_rows,))[r]
        return jax.vmap(draw)(step_k, seq_k)

    def emit(bufs, seq_k, step_k, tok, logp, live):
        """Write each live slot's token at (its sequence, its step); dead slots write nothing."""
        tokens, logps, mask = bufs
        r = jnp.where(live, seq_k, rows)  # out of range: dropped
        tokens = tokens.at[r, step_k].set(tok, mode="drop")
        logps = logps.at[r, step_k].set(logp, mode="drop")
        mask = mask.at[r, step_k].set(1, mode="drop")
        return tokens, logps, mask

    def finished(tok, seq_k, step_k):
        eos = jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
        return eos | (step_k + 1 >= max_new_r[jnp.minimum(seq_k, rows - 1)])

    # The first K sequences fill the slots with one batched prefill.
    first = jnp.minimum(jnp.arange(k), rows - 1)
    last_kd, cache = prefill_prompts(model, prompt_ids[first], prompt_mask[first],
                                     slots=p + n, chunk=plan.prefill_chunk, layers=layers,
                                     group=shape.first_group)
    cache = dataclasses.replace(cache, index=jnp.full((k,), p, jnp.int32))  # one per slot
    seq = jnp.where(jnp.arange(k) < rows, jnp.arange(k), rows).astype(jnp.int32)
    zero = jnp.zeros((k,), jnp.int32)
    tok, logp = choose(logits(last_kd), u_b=uniforms(zero, seq))
    live = seq < rows
    bufs = emit(_empty_outputs(rows, n, plan.pad_id), seq, zero, tok, logp, live)
    live = live & ~finished(tok, seq, zero)
    plen = prompt_mask[first].sum(axis=1).astype(jnp.int32)
    slots = dict(live=live, seq=seq, step=zero + 1, prev=tok, plen=plen)
    empty = jax.tree.map(jnp.zeros_like, _prompt_row_shapes(model, layers, p, n, plan))
    state0 = dict(slots=slots, next=jnp.int32(min(k, rows)), refills=jnp.int32(0), cache=cache,
                  bufs=bufs, kept=(*empty, jnp.int32(-1)), iters=jnp.int32(0))
    refill_all = partial(_refill_loop, model=model, layers=layers, prompt_ids=prompt_ids,
                         prompt_mask=prompt_mask, plan=plan, shape=shape, logits=logits,
                         choose=choose, uniforms=uniforms, emit=emit, finished=finished)
    carry = refill_all(state0)

    def body(c):
        sl, cache = c["slots"], c["cache"]
        # Each slot writes its previous token at its own position P + step - 1.
        cache = dataclasses.replace(cache, index=p + sl["step"] - 1,
                                    next_pos_b=sl["plen"] + sl["step"] - 1)
        hidden, cache = model.hidden_states(sl["prev"][:, None], jnp.ones((k, 1), jnp.int32),
                                            cache=cache, layer_weights=layers)
        tok, logp = choose(logits(hidden[:, 0]), u_b=uniforms(sl["step"], sl["seq"]))
        bufs = emit(c["bufs"], sl["seq"], sl["step"], tok, logp, sl["live"])
        live = sl["live"] & ~finished(tok, sl["seq"], sl["step"])
        # A finished slot keeps its step (its writes stay inside its row) until it is refilled.
        sl = dict(sl, live=live, step=sl["step"] + live.astype(jnp.int32),
                  prev=jnp.where(live, tok, sl["prev"]))
        return refill_all(dict(c, slots=sl, cache=cache, bufs=bufs, iters=c["iters"] + 1))

    carry = jax.lax.while_loop(lambda c: jnp.any(c["slots"]["live"]), body, carry)
    return carry["bufs"], carry["iters"], carry["refills"]


def _prompt_row_shapes(model, layers, p, n, plan):
    """Shapes of `_prompt_row`'s result (for the kept-prompt buffer's initial zeros)."""
    ids = jax.ShapeDtypeStruct((1, p), jnp.int32)
    return jax.eval_shape(lambda i: _prompt_row(model, layers, i, i, p + n, plan.prefill_chunk),
                          ids)


def _refill_loop(c, *, model, layers, prompt_ids, prompt_mask, plan, shape, logits, choose,
                 uniforms, emit, finished):
    """Prefill the next pending sequence into each finished slot (one at a time, in order)."""
    rows, p = prompt_ids.shape
    n = plan.new_len

    def pending(c):
        return (c["next"] < rows) & ~jnp.all(c["slots"]["live"])

    def one(c):
        sl, cache, r = c["slots"], c["cache"], c["next"]
        s = jnp.argmin(sl["live"])  # the first finished slot
        ids = jax.lax.dynamic_slice_in_dim(prompt_ids, r, 1)
        mask = jax.lax.dynamic_slice_in_dim(prompt_mask, r, 1)
        prompt = r // shape.group
        # The previous refill's prompt row is reused for the next sample of the same prompt.
        k_l, v_l, last, _ = jax.lax.cond(
            c["kept"][3] == prompt, lambda: c["kept"],
            lambda: (*_prompt_row(model, layers, ids, mask, p + n, plan.prefill_chunk), prompt))
        put = lambda big, row: jax.lax.dynamic_update_slice(big, row, (s, 0, 0, 0))  # noqa: E731
        valid = jnp.pad(mask.astype(jnp.bool_), ((0, 0), (0, n)))
        cache = pin_cache(dataclasses.replace(
            cache, k_lbksh=tuple(map(put, cache.k_lbksh, k_l)),
            v_lbksh=tuple(map(put, cache.v_lbksh, v_l)),
            valid_bs=jax.lax.dynamic_update_slice(cache.valid_bs, valid, (s, 0))))
        r1, zero = r[None], jnp.zeros((1,), jnp.int32)
        tok, logp = choose(logits(last), u_b=uniforms(zero, r1))
        bufs = emit(c["bufs"], r1, zero, tok, logp, jnp.ones((1,), jnp.bool_))
        at = lambda a, v: a.at[s].set(v[0].astype(a.dtype))  # noqa: E731
        sl = dict(live=at(sl["live"], ~finished(tok, r1, zero)), seq=at(sl["seq"], r1),
                  step=at(sl["step"], zero + 1), prev=at(sl["prev"], tok),
                  plen=at(sl["plen"], mask.sum(axis=1)))
        return dict(c, slots=sl, cache=cache, bufs=bufs, next=r + 1, refills=c["refills"] + 1,
                    kept=(k_l, v_l, last, prompt))

    return jax.lax.while_loop(pending, one, c)


def compiled_programs() -> int:
    """How many refill programs have been compiled in this process."""
    return _generate_refill._cache_size()
