"""`python -m socialr1_jax.train` with each GRPO phase timed: the job's own `main`, in-process.

    python3 benchmarks/gpu/train_phases.py [--config FILE.yaml] [key=value ...]

The trainer reports one rollout time (sampling, scoring, reference log-probs together) and the
update's. This wrapper runs the same entry point (`socialr1_jax.jobs.train.main`, what
`python -m socialr1_jax.train` calls) after wrapping three of the trainer's calls with timers
that wait for the devices: `Programs.sample` (the rollout's sampling),
`Programs.start_rollout` (sampling + the reference log-prob forward) and `Programs.finish_rollout`
(scoring and advantages), whose sum is the rollout, and `rollout_updates.rollout_updates` (the
update). The timers serialise the phases: with grpo.async_rollout the overlap is lost. Per step it prints one line
`PHASES {"step": i, "sample_s": ..., "rollout_s": ..., "ref_and_scoring_s": ..., "update_s": ...}`.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax

from socialr1_jax import cli
from socialr1_jax.rl import experience as rollout_mod
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.rl import rollout_updates as ru

_current: dict = {}
_step = [0]


def _timed(owner, name: str, key: str, ready):
    """Replace owner.name with a wrapper that records its wall time (devices awaited)."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        jax.block_until_ready(ready(out))
        _current[key] = time.perf_counter() - t0
        if key == "update_s":
            _current["rollout_s"] = _current.pop("start_s") + _current.pop("finish_s")
            line = {"step": _step[0], **_current,
                    "ref_and_scoring_s": _current["rollout_s"] - _current["sample_s"]}
            print("PHASES " + json.dumps(line), flush=True)
            _current.clear()
            _step[0] += 1
        return out

    setattr(owner, name, wrapper)
    return owner, name, inner


def main(argv=None) -> int:
    undo = [_timed(rollout_mod.Programs, "sample", "sample_s", lambda out: out),
            _timed(rollout_mod.Programs, "start_rollout", "start_s",
                   lambda p: (jax.tree.leaves(p.seqs), p.old, p.ref)),
            _timed(rollout_mod.Programs, "finish_rollout", "finish_s",
                   lambda ro: (jax.tree.leaves(ro.batch), ro.rewards)),
            _timed(ru, "rollout_updates", "update_s", lambda out: jax.tree.leaves(out))]
    _step[0] = 0
    try:
        return train_mod.main(argv)
    finally:  # the trainer's own functions back (tests run in one process)
        for owner, name, inner in undo:
            setattr(owner, name, inner)


if __name__ == "__main__":
    sys.exit(cli.run(main))
