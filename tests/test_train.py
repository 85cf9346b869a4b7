"""The main job: GRPO learns the toy task; the embedded default is the tiny CPU config; a run
writes metrics and a checkpoint that the exporter turns into an HF directory."""

import json
import os

import numpy as np
import pytest

from socialr1_jax import train as train_mod


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
