"""A run directory written by an earlier version (tests/data/old_run: the toy task, 2 GRPO steps,
written by the code of commit 11378c5) still resumes, with the numbers that code gave for step 2.
If a change to the checkpoint layout or the step breaks this, say so in the change: users' runs
on pods hold such checkpoints."""

import json
import os
import shutil

import pytest

from socialr1_jax.jobs import train as train_mod

OLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "old_run")
# Step 2 of `--config OLD/config.yaml run.resume=true run.steps=3 run.allow_config_change=true`,
# as the code that wrote the run computed it.
EXPECTED = os.path.join(OLD, "expected_step2.json")


def test_an_old_run_resumes_with_the_same_numbers(tmp_path):
    run = tmp_path / "old_run"
    shutil.copytree(OLD, run)
    cfg = train_mod.parse_args(["--config", str(run / "config.yaml"), f"run.out_dir={run}",
                                "run.resume=true", "run.steps=3", "run.allow_config_change=true",
                                "run.progress=false"])
    result = train_mod.train(cfg, log=lambda s: None)
    assert result.exit_code == 0 and [h["step"] for h in result.history] == [2]
    got = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    want = json.load(open(EXPECTED))
    assert got["step"] == want["step"] == 2
    for key in ("reward_mean", "loss", "kl", "grad_norm", "accuracy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert sorted(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit()) == [2, 3]
