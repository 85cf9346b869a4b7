"""The demo pipeline of `python -m socialr1_jax.train`: a base checkpoint -> the warm start (saved to
RUN/warm_start, loaded again on resume) -> GRPO on the Social-R1 task -> held-out evaluations, and
the summary. The slow test runs the README's first command, shortened, and checks that it learns:
mean reward in the last quarter of the GRPO steps above the first quarter, held-out accuracy
after GRPO above the accuracy after the warm start."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from socialr1_jax.rl import train as train_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A base checkpoint like the committed one, pretrained for 2 steps (shape and files only)."""
    from socialr1_jax.social import tomi_base

    out = tmp_path_factory.mktemp("base") / "tomi_base"
    tomi_base.pretrain(str(out), steps=2, batch_size=8, texts=16, log=lambda s: None,
                       progress=False)
    return str(out)


def _cfg(base, out, *extra):
    return train_mod.parse_args([f"model.path={base}", f"run.out_dir={out}", "run.progress=false",
                                 "sft.steps=3", "sft.data.rows=16", "run.steps=2",
                                 "eval.every=2", "eval.limit=8", "eval.batch_size=8",
                                 "eval.max_new_tokens=8", "rollout.max_new_tokens=8",
                                 *extra])


def test_demo_pipeline_writes_the_run_and_resumes_from_the_warm_start(tiny_base, tmp_path):
    from socialr1_jax.checkpoint.orbax_io import list_steps

    out = tmp_path / "run"
    lines = []
    result = train_mod.train(_cfg(tiny_base, out), log=lines.append)
    assert result.exit_code == 0 and len(result.history) == 2
    assert list_steps(str(out / "warm_start")) == [3]
    w = result.warm_start
    assert np.isfinite(w["loss_first"]) and "eval/accuracy" in w["eval_before"]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2]
    text = train_mod.summary(result)
    assert "mean reward: first quarter" in text and "before the warm start" in text
    assert "after 0 GRPO steps" in text and f"run directory: {out}" in text
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and "social_r1/format" in samples[0] and "completion" in samples[0]
    assert any(s.startswith("warm start: 16 pairs") for s in lines), lines

    # A resumed run loads the warm start instead of training it again (same reference model).
    lines.clear()
    again = train_mod.train(_cfg(tiny_base, out, "run.steps=3", "run.resume=true",
                                 "run.allow_config_change=true"), log=lines.append)
    assert again.exit_code == 0 and [h["step"] for h in again.history] == [2]
    assert any("warm start: loaded" in s for s in lines), lines
    assert "loss_first" not in again.warm_start and list_steps(str(out / "warm_start")) == [3]


def test_the_base_checkpoint_is_a_qwen3_with_the_demo_tokenizer(tiny_base):
    from socialr1_jax import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.social.tomi_base import BASE_MODEL

    model = load_model(tiny_base)
    assert model.cfg.replace(param_dtype="float32", dtype="float32") == BASE_MODEL
    tok = tk.load_tokenizer(tiny_base)
    assert tk.encode(tok, "<think>") == tk.encode(tk.demo_tokenizer(), "<think>")
    assert tk.stop_ids(tiny_base, tok) == tk.stop_tokens(tok)


@pytest.mark.slow
def test_readme_demo_learns():
    """The README's first command (the committed base, the embedded config) with fewer GRPO
    steps and held-out questions; run from the repository root on one CPU device."""
    import tempfile

    out = tempfile.mkdtemp(prefix="demo-run-")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([sys.executable, "-m", "socialr1_jax.train", f"run.out_dir={out}/run",
                        "run.progress=false"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(x) for x in open(f"{out}/run/metrics.jsonl")]
    rewards = [s["reward_mean"] for s in steps]
    q = len(rewards) // 4
    assert np.mean(rewards[-q:]) > np.mean(rewards[:q]), rewards
    evals = [json.loads(x) for x in open(f"{out}/run/eval.jsonl")]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == len(steps)
    assert evals[-1]["eval/accuracy"] > evals[0]["eval/accuracy"], evals
    assert "held-out accuracy" in r.stdout
