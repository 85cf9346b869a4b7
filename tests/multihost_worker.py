"""One process of the 2-process stand-in for a pod (run by tests/test_multihost.py).

Configured by the SOCIALR1_* environment (coordinator, process count, id) and XLA_FLAGS (the
simulated device count). For each mesh it loads the checkpoint sharded over every process's
devices, feeds only this process's rows of the batch, runs the forward pass, gathers the logits
onto every host and writes them to OUT/logits_<process>.npz. When the batch has completions, on
the first mesh it also takes the GRPO loss of every aggregation mode padded and packed (each
process packing its own rows, `packed_step.process_plan`) into the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def packed_vs_padded(model, mesh, batch) -> dict:
    """{agg: [padded loss, packed loss]} of the GRPO loss of the npz's scored batch (prompts
    ids/mask, completions, old/ref log-probs, advantages), this process feeding its rows."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from socialr1_jax.model.logprobs import completion_logprobs
    from socialr1_jax.parallel import distributed
    from socialr1_jax.parallel.sharding import batch_shards
    from socialr1_jax.rl import grpo
    from socialr1_jax.rl import packed_step as ps
    from socialr1_jax.rl import train_step as ts
    from socialr1_jax.rl.config import GRPOConfig
    from socialr1_jax.rl.packing import pack

    rows = distributed.process_rows(mesh, batch["ids"].shape[0])
    names = ("ids", "mask", "completion_ids", "completion_mask", "old_logp", "ref_logp",
             "advantages")
    tb = ts.TrainBatch(*distributed.global_batch([batch[k][rows] for k in names], mesh))
    plan = ps.plan_batch(tb.prompt_mask, tb.completion_mask, row_len=16,
                         multiple=batch_shards(mesh), mesh=mesh)
    graphdef, state = nnx.split(model)

    def losses(params, tb, plan):
        m, pb = nnx.merge(graphdef, params), pack(tb, plan)
        lp0 = completion_logprobs(m, tb.prompt_ids, tb.prompt_mask, tb.completion_ids,
                                  tb.completion_mask)
        lp1 = ps.packed_logprobs(m, pb.ids, pb.segment_ids, pb.positions, pb.targets)
        out = {}
        for agg in grpo.AGG_MODES:
            n0 = grpo.batch_normalisers(tb.completion_mask, agg)
            n1 = ps.packed_normalisers(pb, GRPOConfig(group_size=4, beta=0.1, agg=agg))
            l0, _ = grpo.loss(lp0, tb.old_logp, tb.ref_logp, tb.advantages, tb.completion_mask,
                              beta=0.1, agg=agg, num_tokens=n0[0], num_seqs=n0[1],
                              loss_scale_factor=n0[2])
            l1, _ = grpo.loss(lp1, pb.old_logp, pb.ref_logp, pb.advantages, pb.loss_mask,
                              beta=0.1, agg=agg, segment_ids=pb.segment_ids, num_tokens=n1[0],
                              num_seqs=n1[1], loss_scale_factor=n1[2])
            out[agg] = jnp.stack([l0, l1])
        return out

    with jax.set_mesh(mesh):
        out = jax.jit(losses)(state, tb, plan)
    return {"rows": int(plan.rows), **{k: distributed.gather(v).tolist() for k, v in out.items()}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch", required=True, help="npz with ids and mask (the global batch)")
    parser.add_argument("--meshes", required=True, help="comma-separated, e.g. 1x8x1,2x2x2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from socialr1_jax.parallel import distributed

    info = distributed.initialize(initialization_timeout=60)

    import jax
    import numpy as np
    from flax import nnx

    from socialr1_jax import load_model, make_mesh
    from socialr1_jax.parallel.sharding import parse_mesh

    batch = np.load(args.batch)
    result, report = {}, {"process": info.process_id, "processes": info.num_processes,
                          "local_devices": info.local_devices, "global_devices": info.global_devices,
                          "meshes": {}}
    for i, spec in enumerate(args.meshes.split(",")):
        mesh = make_mesh(**parse_mesh(spec))
        model = load_model(args.checkpoint, mesh=mesh)
        rows = distributed.process_rows(mesh, batch["ids"].shape[0])
        # Only this process's rows ever reach this process's devices.
        local = {"ids": batch["ids"][rows], "mask": batch["mask"][rows]}
        glob = distributed.global_batch(local, mesh)
        graphdef, state = nnx.split(model)
        with jax.set_mesh(mesh):
            logits = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m))(
                state, glob["ids"], glob["mask"])
        result[spec] = distributed.gather(logits)
        q = model.layers.q_lnhd[...]
        report["meshes"][spec] = {
            "rows": [rows.start, rows.stop],
            "prompt_part": distributed.process_part(list(range(batch["ids"].shape[0])), mesh),
            "ids_local_shards": sorted({tuple(s.data.shape) for s in glob["ids"].addressable_shards}),
            "ids_global_shape": list(glob["ids"].shape),
            "q_local_shards": sorted({tuple(s.data.shape) for s in q.addressable_shards}),
            "q_is_fully_addressable": bool(q.is_fully_addressable),
            # what the trainer copies to the host for the rewards: this process's rows only
            "local_rows": distributed.local_rows(glob["ids"], mesh).tolist(),
        }
        if i == 0 and "completion_ids" in batch:
            t0 = time.perf_counter()
            report["packed"] = packed_vs_padded(model, mesh, batch)
            report["packed_s"] = time.perf_counter() - t0  # what this check adds to the run
    np.savez(os.path.join(args.out, f"logits_{info.process_id}.npz"), **result)
    with open(os.path.join(args.out, f"report_{info.process_id}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
