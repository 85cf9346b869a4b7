"""Nothing is lost when a run dies: the real command, killed with SIGKILL or stopped with SIGTERM
in the middle of a run, then resumed, ends with the parameters, optimizer state and metrics of an
uninterrupted run of the same length, bit for bit; no step is logged twice or missing; every
checkpoint on disk restores (none is half-written)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from socialr1_jax import make_mesh
from socialr1_jax.checkpoint.orbax_io import list_steps
from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.rl import train_step as ts
from tests.test_train import read_events
from tests.train_args import TOY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
ARGS = TOY + ["run.progress=false", f"run.steps={STEPS}", "run.save_every=2",
              "run.log_every=100"]
TIMING = {"rollout_s", "update_s", "rewards_s", "tokens_per_s"}


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIALR1_")}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _start(out_dir, *extra):
    log = open(f"{out_dir}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "socialr1_jax.train", *ARGS,
                             f"run.out_dir={out_dir}", *extra], cwd=REPO, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)


def _log(out_dir) -> str:
    with open(f"{out_dir}.log") as f:
        return f.read()[-3000:]


def _logged_steps(out_dir) -> list[int]:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    steps = []
    for line in open(path).read().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass  # a line being written
    return steps


def _interrupt(out_dir, sig, after_step: int) -> subprocess.Popen:
    p = _start(out_dir)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if max(_logged_steps(out_dir), default=-1) >= after_step:
            p.send_signal(sig)
            break
        time.sleep(0.02)
    p.wait(timeout=300)
    return p


def _restore_all(root, cfg, model_cfg, mesh):
    """Every numbered step restores: returns {step: TrainState as numpy}."""
    ck = TrainCheckpointer(root)
    abstract = ts.abstract_train_state(model_cfg, cfg.optim, mesh, total_updates=cfg.total_updates)
    out = {}
    try:
        for step in list_steps(root):
            state, meta = ck.restore(abstract, step)
            assert meta["step"] == step
            out[step] = jax.tree.map(np.asarray, state)
    finally:
        ck.close()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (its final save coincides with a periodic one: exit code 0)."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    p = _start(out)
    assert p.wait(timeout=600) == 0, _log(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(reference, tmp_path, sig):
    out = str(tmp_path / "run")
    p = _interrupt(out, sig, after_step=4)
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL, _log(out)
    else:
        # SIGTERM: the step in hand finishes, a checkpoint of it is saved, exit code 143
        assert p.returncode == 143, _log(out)
        assert "stopped by SIGTERM" in _log(out) and "run.resume=true" in _log(out)
    logged = _logged_steps(out)
    assert 4 <= max(logged) < STEPS - 1, logged  # really in the middle of the run
    cfg = train_mod.parse_args(ARGS)
    model_cfg = cfg.model.preset_config()
    mesh = make_mesh(1, 8, 1)
    saved = _restore_all(os.path.join(out, "checkpoints"), cfg, model_cfg, mesh)
    assert saved, "no checkpoint was complete"
    if sig == signal.SIGTERM:  # the stop saved exactly the steps it logged
        assert max(saved) == len(logged) and logged == list(range(len(logged)))

    r = _start(out, "run.resume=true")
    assert r.wait(timeout=600) == 0, _log(out)
    assert f"resumed {out} at step {max(saved)}" in _log(out)

    ref = _restore_all(os.path.join(reference, "checkpoints"), cfg, model_cfg, mesh)
    got = _restore_all(os.path.join(out, "checkpoints"), cfg, model_cfg, mesh)
    assert max(ref) == max(got) == STEPS
    for a, b in zip(jax.tree.leaves(ref[STEPS]), jax.tree.leaves(got[STEPS])):
        np.testing.assert_array_equal(a, b)  # params, master, optimizer state, counters

    def rows(run, name):
        return [json.loads(x) for x in open(os.path.join(run, name)).read().splitlines()]

    want, have = rows(reference, "metrics.jsonl"), rows(out, "metrics.jsonl")
    assert [m["step"] for m in have] == list(range(STEPS))
    for a, b in zip(want, have):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
               {k: v for k, v in b.items() if k not in TIMING}
    assert rows(out, "samples.jsonl") == rows(reference, "samples.jsonl")
    shown = read_events(os.path.join(out, "tensorboard"), "reward_mean")
    assert [step for _, step, _ in shown] == list(range(STEPS))  # after TensorBoard's purge
