"""Padding-free GRPO batches: a rollout's sequences packed into fixed-length rows.

A padded `TrainBatch` spends its forward on [B, P + C] tokens however short the completions
are; with heavy-tailed lengths most of them are pads. Packing lays the real tokens of every
sequence (its prompt, then its completion) end to end into R rows of T tokens, each sequence
whole inside one row, and marks them with segment ids (1, 2, ... within a row; 0 = pad). The
model then attends only within a segment, positions restart per segment
(`Qwen3.hidden_states(segment_ids=)`), and every per-token quantity of the loss sits at the
packed position whose hidden state predicts the token, so the loss of every aggregation mode
is the padded one (grpo.aggregate reduces per (row, segment) where it reduced per row).

The plan (which token goes where) is a host computation on the sequence lengths only,
first-fit-decreasing over the sequences; the rows are rounded up to a multiple so that shapes
repeat from step to step and jit does not recompile for every rollout. Moving the tokens is a
gather on the devices (`pack`), and its inverse (`unpack`) brings per-token values of packed
rows (a reference forward's log-probs) back to the [B, C] layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PackPlan:
    """Where each packed position's values come from; every array [R, T] int32.

    tok_src: flat index into the [B, P + C] sequence (prompt then completion) of the token at
    that position (0 at pads). loss_src: flat index into the [B, C] completion arrays of the
    token this position predicts, or B * C where it predicts nothing counted by the loss.
    seq_of: the sequence (row of the padded batch) the position belongs to (0 at pads).
    batch, completion_len: B and C of the padded batch (static).
    """

    tok_src: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    loss_src: jax.Array
    seq_of: jax.Array
    batch: int = dataclasses.field(metadata=dict(static=True), default=0)
    completion_len: int = dataclasses.field(metadata=dict(static=True), default=0)

    @property
    def rows(self) -> int:
        return self.tok_src.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PackedBatch:
    """A `TrainBatch` packed by a `PackPlan`: every field [R, T].

    targets: the token each position predicts (where loss_mask); old_logp, ref_logp: that
    token's values; advantages: the sequence's, at every one of its positions (0 at pads).
    completion_len: C of the padded batch (the default K of seq-mean-token-sum-norm).
    """

    ids: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    targets: jax.Array
    loss_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    advantages: jax.Array
    completion_len: int = dataclasses.field(metadata=dict(static=True), default=0)

    @property
    def size(self) -> int:
        return self.ids.shape[0]


def _spans(prompt_mask, completion_mask):
    """(prompt lengths, completion lengths) [B], after checking the layout `pack` relies on:
    prompts left-padded with at least one token, completions right-padded."""
    pm = np.asarray(prompt_mask).astype(bool)
    cm = np.asarray(completion_mask).astype(bool)
    p_b, c_b = pm.sum(axis=1), cm.sum(axis=1)
    p, c = pm.shape[1], cm.shape[1]
    left = np.arange(p)[None, :] >= (p - p_b)[:, None]
    right = np.arange(c)[None, :] < c_b[:, None]
    if not (np.array_equal(pm, left) and np.array_equal(cm, right)) or (p_b < 1).any():
        raise ValueError("packing needs left-padded prompts of >= 1 token and right-padded "
                         "completions (the sampler's layout)")
    return p_b, c_b


def first_fit_decreasing(lengths, row_len: int) -> list[list[int]]:
    """Sequence indices per row: longest first, each into the first row with room."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        if n > row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit a packed row of {row_len}")
        k = next((k for k, f in enumerate(free) if f >= n), None)
        if k is None:
            rows.append([])
            free.append(row_len)
            k = len(rows) - 1
        rows[k].append(i)
        free[k] -= n
    return rows


def pack_plan(prompt_mask, completion_mask, *, row_len: int = 0, rows_multiple: int = 1,
              rows=0) -> PackPlan:
    """The packing of a padded batch's sequences (host arrays or device arrays brought over).

    row_len: tokens per row (0 = P + C, which any sequence fits). The row count is the
    first-fit-decreasing one rounded up to a multiple of `rows_multiple` (micro-batches x batch
    shards), or `rows` when given: a count, or a function of the count needed (a bucketing);
    ValueError if the sequences do not fit.
    """
    p_b, c_b = _spans(prompt_mask, completion_mask)
    b, p = np.shape(prompt_mask)
    c = np.shape(completion_mask)[1]
    t = row_len or p + c
    assignment = first_fit_decreasing(p_b + c_b, t)
    n_rows = -(-len(assignment) // rows_multiple) * rows_multiple
    if callable(rows):
        rows = rows(len(assignment))
    if rows:
        if rows < len(assignment) or rows % rows_multiple:
            raise ValueError(f"rows={rows}: the sequences need {len(assignment)} rows of {t} "
                             f"(and a multiple of {rows_multiple})")
        n_rows = rows
    tok, seg, pos = (np.zeros((n_rows, t), np.int32) for _ in range(3))
    loss = np.full((n_rows, t), b * c, np.int32)
    seq = np.zeros((n_rows, t), np.int32)
    for r, members in enumerate(assignment):
        at = 0
        for k, i in enumerate(members, start=1):
            n, first = int(p_b[i] + c_b[i]), p - int(p_b[i])
            span = slice(at, at + n)
            tok[r, span] = i * (p + c) + np.arange(first, p + int(c_b[i]))
            seg[r, span], pos[r, span], seq[r, span] = k, np.arange(n), i
            # The position before completion token j (the prompt's last token for j = 0)
            # predicts it.
            j0 = at + int(p_b[i]) - 1
            loss[r, j0:j0 + int(c_b[i])] = i * c + np.arange(int(c_b[i]))
            at += n
    return PackPlan(tok_src=tok, segment_ids=seg, positions=pos, loss_src=loss, seq_of=seq,
                    batch=int(b), completion_len=int(c))


def shift_plan(plan: PackPlan, start: int, batch: int, seq_len: int) -> PackPlan:
    """A plan of rows start : start + plan.batch of a batch of `batch` sequences of `seq_len`
    (P + C) tokens, re-indexed into the whole batch: what one process's plan of the rows it
    holds becomes in the global plan (`packed_step.process_plan`). Host arrays in and out."""
    b, c = plan.batch, plan.completion_len
    seg = np.asarray(plan.segment_ids)
    loss = np.asarray(plan.loss_src)
    return PackPlan(
        tok_src=np.where(seg > 0, np.asarray(plan.tok_src) + start * seq_len, 0).astype(np.int32),
        segment_ids=seg, positions=np.asarray(plan.positions),
        # The local "predicts nothing" index (b * c) becomes the global one.
        loss_src=np.where(loss < b * c, loss + start * c, batch * c).astype(np.int32),
        seq_of=np.where(seg > 0, np.asarray(plan.seq_of) + start, 0).astype(np.int32),
        batch=int(batch), completion_len=int(c))


def concat_plans(plans) -> PackPlan:
    """Global plans (`shift_plan`) of disjoint rows, their packed rows stacked in order: the
    one-host picture of what the processes' blocks of one global plan are."""
    fields = ("tok_src", "segment_ids", "positions", "loss_src", "seq_of")
    return PackPlan(**{k: np.concatenate([np.asarray(getattr(p, k)) for p in plans])
                       for k in fields}, batch=plans[0].batch,
                    completion_len=plans[0].completion_len)


def _flat_take(x, idx_rt, fill=0):
    """x.reshape(-1)[idx], `fill` where idx is out of range (no sequence there)."""
    return jnp.take(x.reshape(-1), idx_rt, mode="fill", fill_value=fill)


def pack_inputs(prompt_ids, completion_ids, plan: PackPlan):
    """(ids, segment_ids, positions, targets) [R, T] of the packed rows: what a log-prob
    forward on them takes (`packed_step.packed_logprobs`)."""
    ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    return (_flat_take(ids, plan.tok_src), plan.segment_ids, plan.positions,
            _flat_take(completion_ids, plan.loss_src))


def pack(batch, plan: PackPlan) -> PackedBatch:
    """`batch` (a TrainBatch) laid out by `plan`: a gather, traceable inside jit."""
    ids, segment_ids, positions, targets = pack_inputs(batch.prompt_ids, batch.completion_ids,
                                                       plan)
    loss_mask = plan.loss_src < plan.batch * plan.completion_len
    return PackedBatch(
        ids=ids, segment_ids=segment_ids, positions=positions, targets=targets,
        loss_mask=loss_mask.astype(jnp.int32),
        old_logp=_flat_take(batch.old_logp.astype(jnp.float32), plan.loss_src, 0.0),
        ref_logp=_flat_take(batch.ref_logp.astype(jnp.float32), plan.loss_src, 0.0),
        advantages=jnp.where(plan.segment_ids > 0, jnp.take(
            batch.advantages.astype(jnp.float32), plan.seq_of), 0.0),
        completion_len=plan.completion_len)


def unpack(values_rt, plan: PackPlan):
    """Per-token values of packed rows (at the positions that predict a completion token) back
    in the padded [B, C] layout; 0 where the padded batch has no token."""
    b, c = plan.batch, plan.completion_len
    out = jnp.zeros((b * c,), values_rt.dtype)
    return out.at[plan.loss_src.reshape(-1)].set(values_rt.reshape(-1), mode="drop").reshape(b, c)
