"""The main job: GRPO learns the toy task; the embedded default is the tiny CPU config; a run
writes metrics and a checkpoint that the exporter turns into an HF directory."""

import json
import os

import numpy as np
import pytest

from socialr1_jax.rl import train as train_mod


def test_embedded_default_is_the_tiny_cpu_config():
    assert train_mod.parse_args([]) == train_mod.parse_args(["--config", "configs/tiny_cpu.yaml"])


def test_grpo_learns_the_toy_task(tmp_path):
    """Reward 1 when the completion starts with token 7 (1/32 by chance): >= 0.9 within 30 steps."""
    cfg = train_mod.parse_args([f"run.out_dir={tmp_path}", "run.progress=false"])
    result = train_mod.train(cfg, log=lambda s: None)
    rewards = [m["reward_mean"] for m in result.history]
    assert result.status == "done" and len(rewards) == 30
    assert rewards[0] < 0.5, rewards[:3]
    assert np.mean(rewards[-5:]) >= 0.9, rewards[-5:]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[-1])["reward_mean"] == rewards[-1]
    ckpts = os.listdir(tmp_path / "checkpoints")
    assert "30" in ckpts, ckpts


def test_social_r1_task_is_refused_clearly():
    cfg = train_mod.parse_args(["--config", "configs/socialr1_qwen3_4b.yaml"])
    with pytest.raises((NotImplementedError, ValueError), match="(?i)social"):
        train_mod.train(cfg, log=lambda s: None)


class NaNAfter:
    """The toy task, but every reward is NaN from step `start` on (a broken reward model)."""

    def __init__(self, task, start):
        self.task, self.start, self.step = task, start, 0
        self.eos_ids, self.pad_id = task.eos_ids, task.pad_id

    def prompts(self, step, n):
        self.step = step
        return self.task.prompts(step, n)

    def rewards(self, prompts, completions, mask, group_size):
        r = self.task.rewards(prompts, completions, mask, group_size)
        return np.full_like(r, np.nan) if self.step >= self.start else r


def test_nan_rewards_stop_the_run_with_the_last_good_state_and_it_resumes(tmp_path):
    import jax

    from socialr1_jax.rl.toy_task import ToyTask

    cfg = train_mod.parse_args([f"run.out_dir={tmp_path}", "run.progress=false", "run.steps=8",
                                "grpo.max_consecutive_skips=3"])
    task = NaNAfter(ToyTask(32, target_token=7, prompt_len=6, eos_id=1), start=2)
    snaps = {}

    def snapshot(step, state, metrics):
        snaps[step] = jax.tree.map(np.asarray, state.params)

    result = train_mod.train(cfg, task=task, log=lambda s: None, on_step=snapshot)
    assert result.status.startswith("stopped at step 4"), result.status
    assert len(result.history) == 5  # steps 0, 1 good; 2, 3, 4 skipped -> stop
    st = result.state
    assert (int(st.step), int(st.skipped), int(st.consecutive_skips)) == (2, 3, 3)
    assert [m["skipped"] for m in result.history] == [0, 0, 1, 1, 1]
    final = jax.tree.leaves(jax.tree.map(np.asarray, st.params))
    for a, b in zip(jax.tree.leaves(snaps[1]), final):  # the last good state, bit for bit
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(snaps[0]), final))

    # The checkpoint written at the stop restores the whole state exactly...
    mesh = train_mod.build_mesh(cfg)
    restored, step = train_mod.restore_train_state(str(tmp_path / "checkpoints"), st,
                                                   result.model_cfg, mesh)
    assert step == 5
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(st)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    # ... and a resumed run continues from it with a working reward.
    cfg2 = train_mod.parse_args([f"run.out_dir={tmp_path}", "run.progress=false", "run.steps=6",
                                 "run.resume=true"])
    again = train_mod.train(cfg2, log=lambda s: None)
    assert again.status == "done" and [m["step"] for m in again.history] == [5]
    assert (int(again.state.step), int(again.state.skipped)) == (3, 3)
    assert "6" in os.listdir(tmp_path / "checkpoints")
