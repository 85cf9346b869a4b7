"""Per-token log-probs of completions, without materialising fp32 logits for the whole batch.

The LM head is applied to `chunk` completion positions at a time inside `lax.map`, each chunk
rematerialised in the backward pass, so peak memory holds one [B, chunk, V] fp32 block rather
than [B, C, V] (for Qwen3-4B at C = 2048 that is 2.5 GB per sequence avoided).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Concatenate a left-padded prompt and its completion into one [B, P + C] sequence."""
    ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(jnp.int32)
    return ids, mask


def head_logprobs(hidden_btd, w_vd, targets_bt, *, temperature: float = 1.0, chunk: int = 256,
                  with_entropy: bool = False, remat: bool = True, precision=None):
    """log softmax(h W^T / T)[target] per position, chunked over time.

    Returns logp [B, T] in fp32 (and the entropy of the same distribution when asked; it is a
    metric and carries no gradient). remat=False keeps each chunk's logits for the backward pass
    instead of recomputing them: one head matmul less, [B, T, V] fp32 more memory. precision:
    the head matmul's (the model's `cfg.precision`).
    """
    b, t, d = hidden_btd.shape
    chunk = max(1, min(chunk, t))
    pad = -t % chunk
    if pad:
        hidden_btd = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
        targets_bt = jnp.pad(targets_bt, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    h_nbcd = hidden_btd.reshape(b, n, chunk, d).swapaxes(0, 1)
    y_nbc = targets_bt.reshape(b, n, chunk).swapaxes(0, 1)

    def one(args):
        h_bcd, y_bc = args
        logits = jnp.einsum("bcd,vd->bcv", h_bcd, w_vd.astype(h_bcd.dtype), precision=precision,
                            preferred_element_type=jnp.float32) / temperature
        # One exp pass serves the log-sum-exp, its gradient (softmax = e / s) and the entropy.
        m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        e = jnp.exp(logits - m)
        s = jnp.sum(e, axis=-1)
        lse = m[..., 0] + jnp.log(s)
        logp = jnp.take_along_axis(logits, y_bc[..., None], axis=-1)[..., 0] - lse
        if not with_entropy:
            return logp, jnp.zeros_like(logp)
        entropy = jax.lax.stop_gradient(lse - jnp.sum(e * logits, axis=-1) / s)
        return logp, entropy

    if remat:
        one = jax.checkpoint(one)
    logp_nbc, ent_nbc = jax.lax.map(one, (h_nbcd, y_nbc))
    logp = logp_nbc.swapaxes(0, 1).reshape(b, -1)[:, :t]
    ent = ent_nbc.swapaxes(0, 1).reshape(b, -1)[:, :t]
    return (logp, ent) if with_entropy else logp


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *,
                        temperature: float = 1.0, chunk: int = 256, with_entropy: bool = False,
                        remat: bool = True):
    """Log-prob [B, C] of each completion token under `model` at `temperature`.

    prompt_ids/mask [B, P] are left-padded; completion_ids/mask [B, C] are right-padded (mask 1
    up to and including the EOS the model emitted). Values at masked positions are meaningless.
    with_entropy / remat: see `head_logprobs`.
    """
    p = prompt_ids.shape[1]
    ids, mask = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    hidden, _ = model.hidden_states(ids, mask)
    # Position P-1+i predicts completion token i.
    h_completion = hidden[:, p - 1:-1]
    return head_logprobs(h_completion, model.lm_head_weight(), completion_ids,
                         temperature=temperature, chunk=chunk, with_entropy=with_entropy,
                         remat=remat, precision=model.cfg.precision)
