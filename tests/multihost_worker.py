"""One process of the 2-process stand-in for a pod (run by tests/test_multihost.py).

Configured by the SOCIALR1_* environment (coordinator, process count, id) and XLA_FLAGS (the
simulated device count). For each mesh it loads the checkpoint sharded over every process's
devices, feeds only this process's rows of the batch, runs the forward pass, gathers the logits
onto every host and writes them to OUT/logits_<process>.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


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
    for spec in args.meshes.split(","):
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
    np.savez(os.path.join(args.out, f"logits_{info.process_id}.npz"), **result)
    with open(os.path.join(args.out, f"report_{info.process_id}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
