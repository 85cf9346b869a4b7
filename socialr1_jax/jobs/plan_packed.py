"""`memory_plan` with grpo.packed: the packed update and log-prob forward (rl/packed_step.py)
compiled on abstract packed batches instead of the padded programs.

A packed program's shape depends on the rollout: R rows of T tokens (grpo.packed_row_len, 0 =
prompt + completion length), R the first-fit-decreasing count of the step's sequences, bucketed.
With nothing known of the lengths the plan takes the worst case, every sequence at full length
(as many rows as that needs, so at least the padded batch's tokens); `rows` plans a typical
step instead (e.g. the packed row count a run's log reports).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from socialr1_jax.parallel.sharding import batch_sharding, batch_shards


def packed_rows(batch: int, seq_len: int, row_len: int, multiple: int, rows: int = 0) -> int:
    """Rows of a packed update over `batch` sequences of up to `seq_len` tokens in rows of
    `row_len` (0 = seq_len): `rows` when given, else the full-length worst case; a multiple of
    `multiple` (micro-batches x batch shards), as `packed_step.bucket_rows` rounds."""
    from socialr1_jax.rl.packed_step import bucket_rows

    t = row_len or seq_len
    if rows:
        if rows % multiple:
            raise ValueError(f"--packed-rows {rows}: must be a multiple of {multiple} "
                             "(micro-batches x batch shards)")
        return rows
    if t < seq_len:
        raise ValueError(f"grpo.packed_row_len={t} is shorter than prompt + completion = "
                         f"{seq_len}: full-length sequences do not fit; give --packed-rows")
    return bucket_rows(-(-batch // (t // seq_len)), batch, multiple)


def abstract_packed(rows: int, row_len: int, completion_len: int, mesh):
    """A PackedBatch [rows, row_len] of ShapeDtypeStructs laid out over the batch axes."""
    from socialr1_jax.rl.packing import PackedBatch

    sh = batch_sharding(mesh, 2)
    i32 = jax.ShapeDtypeStruct((rows, row_len), jnp.int32, sharding=sh)
    f32 = jax.ShapeDtypeStruct((rows, row_len), jnp.float32, sharding=sh)
    return PackedBatch(ids=i32, segment_ids=i32, positions=i32, targets=i32, loss_mask=i32,
                       old_logp=f32, ref_logp=f32, advantages=f32,
                       completion_len=completion_len)


def lowerers(cfg, mesh, optim, grpo_cfg, *, lora, state, ref_params, batch: int,
             prompt_len: int, completion_len: int, micro_batch: int, ref_micro_batch: int,
             row_len: int = 0, rows: int = 0, logprob_chunk: int = 256):
    """(lower the packed train step, lower the packed reference forward, the setting's packed
    fields): what `memory_plan.plan` measures with grpo.packed. `lora`: a LoraSpec or None
    (the step then trains the adapters over `ref_params`, the frozen base)."""
    from socialr1_jax.rl import lora_train
    from socialr1_jax.rl import packed_step as ps

    t = row_len or prompt_len + completion_len
    shards = batch_shards(mesh)
    micro, ref_micro = batch // micro_batch, batch // ref_micro_batch
    n_train = packed_rows(batch, prompt_len + completion_len, t, micro * shards, rows)
    # The rollout's forward packs the whole rollout, in as many passes as sequences allow.
    n_ref = packed_rows(batch, prompt_len + completion_len, t, ref_micro * shards, rows)
    train_in = abstract_packed(n_train, t, completion_len, mesh)
    ref_in = abstract_packed(n_ref, t, completion_len, mesh)
    if lora is None:
        step = ps.make_packed_train_step(cfg, optim, grpo_cfg, mesh, micro_batches=micro)
    else:
        step = lora_train.LoraStep(lora_train.make_packed_train_step(
            cfg.replace(lora=lora), optim, grpo_cfg, mesh, micro_batches=micro), ref_params)
    logp = ps.make_packed_logprob_fn(cfg, mesh, chunk=logprob_chunk, micro_batches=ref_micro)
    return (lambda: step.lower(state, train_in),
            lambda: logp.lower(ref_params, ref_in.ids, ref_in.segment_ids, ref_in.positions,
                               ref_in.targets),
            dict(packed_rows=n_train, packed_ref_rows=n_ref, packed_row_len=t))
