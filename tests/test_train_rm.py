"""The pairwise reward-model trainer: the Bradley-Terry loss by hand, micro-batching, a run that
learns a synthetic preference (held-out accuracy up) and exports a model transformers scores the
same, resuming, and the command line's one-line errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.checkpoint import rm_io
from socialr1_jax.model.config import preset
from socialr1_jax.model.reward_model import create_reward_model
from socialr1_jax.jobs import train_rm as tr
from socialr1_jax.rl import rm_step
from socialr1_jax.rl import train_step as ts
from socialr1_jax.jobs.rm_data import RMOptimConfig
from tests.rm_fixtures import PAD, make_rm_base, preference_rows, torch_scores

TEMPLATE = "{question}\n{reasoning}<|im_end|>"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny causal LM with the byte tokenizer (pad <|endoftext|> = 256), and pair files."""
    return make_rm_base(tmp_path_factory.mktemp("rm_base"))


SMALL = preset("tiny", vocab_size=32, num_layers=1)  # pad id 0 in the unit tests


def _batch(rng, b, t, vocab=32):
    def rows():
        ids = rng.integers(1, vocab, (b, t)).astype(np.int32)
        mask = np.ones((b, t), np.int32)
        for i in range(b):
            n = rng.integers(t // 2, t + 1)
            ids[i, n:], mask[i, n:] = 0, 0
        return ids, mask
    return rm_step.PairBatch(*map(jnp.asarray, (*rows(), *rows())))


def test_pair_loss_is_bradley_terry():
    rm = create_reward_model(SMALL, pad_token_id=0, seed=1)
    batch = _batch(np.random.default_rng(0), 6, 12)
    graphdef = nnx.graphdef(rm)

    @jax.jit
    def run(params, batch):
        model = nnx.merge(graphdef, params)
        return (*rm_step.pair_loss(model, batch, 6), model(batch.chosen_ids, batch.chosen_mask),
                model(batch.rejected_ids, batch.rejected_mask))

    loss, m, r_c, r_r = run(nnx.state(rm), batch)
    r_c, r_r = np.asarray(r_c, np.float64), np.asarray(r_r, np.float64)
    expected = np.mean(-np.log(1.0 / (1.0 + np.exp(-(r_c - r_r)))))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx(np.mean(r_c > r_r))
    assert float(m["margin"]) == pytest.approx(np.mean(r_c - r_r), rel=1e-5, abs=1e-7)


def test_micro_batches_give_the_same_update():
    rm = create_reward_model(SMALL, pad_token_id=0, seed=2)
    optim = RMOptimConfig(lr=1e-2, weight_decay=0.0)
    batch = _batch(np.random.default_rng(1), 4, 16)
    out = []
    for micro in (0, 2):
        state = ts.init_train_state(nnx.state(rm), optim, None, total_updates=2)
        state, m = rm_step.make_rm_step(rm, optim, None, micro_batch_size=micro)(state, batch)
        out.append((jax.tree.leaves(state.params), m, int(state.step)))
    (p0, m0, s0), (p1, m1, s1) = out
    assert s0 == s1 == 1
    # Summed micro-batch gradients equal the whole batch's (the norm is taken before clipping;
    # Adam's first step hides a gradient's scale, so the norm is what shows a wrong normaliser).
    for key in ("loss", "grad_norm", "accuracy", "margin"):
        assert float(m0[key]) == pytest.approx(float(m1[key]), rel=1e-5, abs=1e-7), key
    assert float(m0["grad_norm"]) > 0.01
    for a, b in zip(p0, p1):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def _args(base, out, *extra):
    """Command-line overrides on top of base/rm.yaml (the template, braces and a newline, is
    easiest written in YAML)."""
    config = base / "rm.yaml"
    if not config.exists():
        config.write_text(f"data:\n  prompt_template: {json.dumps(TEMPLATE)}\n")
    return [f"--config={config}", f"model.path={base / 'lm'}", f"data.train={base / 'pairs.jsonl'}",
            "data.max_length=128",
            "data.eval_fraction=0.25", "run.batch_size=8", "run.log_every=4", "optim.lr=1e-3",
            "optim.weight_decay=0", f"run.out_dir={out}", *extra]


def test_training_learns_held_out_preferences_and_exports(base, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, hf = tmp_path / "run", tmp_path / "hf"
    cfg = tr.parse_args(_args(base, out, "run.steps=14", f"run.export_hf={hf}"))
    lines = []
    result = tr.train_rm(cfg, log=lines.append)
    assert result.status == "done" and len(result.history) == 14
    losses = [h["loss"] for h in result.history]
    first, last = result.evals[0], result.evals[-1]
    print(f"train loss {losses[0]:.4f} -> {np.mean(losses[-3:]):.4f}; held-out accuracy "
          f"{first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f}, loss "
          f"{first['eval_loss']:.4f} -> {last['eval_loss']:.4f}")
    assert np.mean(losses[-3:]) < 0.5 * losses[0]
    assert last["eval_loss"] < 0.5 * first["eval_loss"]
    assert first["eval_accuracy"] <= 0.6 and last["eval_accuracy"] >= 0.9
    # The GRPO job's run directory: one metrics row per step, evaluations beside them.
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(14)) and "loss" in rows[0]
    evals = [json.loads(line) for line in open(out / "eval.jsonl")]
    assert [e["step"] for e in evals] == [0, 14]
    assert evals[-1]["eval_accuracy"] == last["eval_accuracy"]
    assert (out / "config.yaml").is_file() and not (out / "samples.jsonl").exists()
    assert {"params", "train_state", "meta"} <= set(os.listdir(out / "checkpoints" / "14"))

    # The export loads in transformers and scores held-out texts as our final model does.
    back = AutoModelForSequenceClassification.from_pretrained(hf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    texts = [TEMPLATE.format(question=r["question"], reasoning=r[k])
             for r in preference_rows(4, seed=99) for k in ("chosen", "rejected")]
    rows = [tok.encode(t, add_special_tokens=False)[-128:] for t in texts]
    t = max(map(len, rows))
    ids = np.full((len(rows), t), PAD, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    ours = np.asarray(result.model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(torch_scores(back, ids, mask), ours, atol=1e-4)
    assert (ours[0::2] > ours[1::2]).all()  # it prefers the grounded reasoning on new pairs

    # The Orbax checkpoint is the same model; resuming continues from its step.
    saved = rm_io.load_reward_model(str(out / "checkpoints"))
    np.testing.assert_allclose(np.asarray(saved(jnp.asarray(ids), jnp.asarray(mask))), ours,
                               atol=1e-6)
    cfg2 = tr.parse_args(_args(base, out, "run.steps=16", "run.resume=true"))
    again = tr.train_rm(cfg2, log=lines.append)
    assert [h["step"] for h in again.history] == [14, 15] and int(again.state.step) == 16
    assert any("at step 14 (14 updates)" in line for line in lines)
    assert [json.loads(x)["step"] for x in open(out / "metrics.jsonl")] == list(range(16))


@pytest.mark.parametrize("extra, message", [
    (["data.trian=x"], "unknown config key data.trian (did you mean data.train?)"),
    (["model.path=/no/such/ckpt"], "model.path: /no/such/ckpt is not a checkpoint directory"),
    (["data.train=/no/pairs.jsonl"], "data.train: /no/pairs.jsonl does not exist"),
    (["data.prompt_template='{story} {answer} {reasoning}'"], "placeholder(s) ['{answer}']"),
    (["run.batch_size=3"], "run.batch_size=3 is not a multiple of the mesh's 8 batch shards"),
    (["run.batch_size=800"], "run.batch_size=800 is larger than the 72 training pairs"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["data.prompt_template={question}: {reasoning}"], "override 'data.prompt_template={question}: {reasoning}': not valid YAML"),
])
def test_cli_errors_are_one_line_before_any_model_loads(base, tmp_path, capsys, monkeypatch,
                                                        extra, message):
    monkeypatch.setattr(rm_io, "init_reward_model", lambda *a, **k: pytest.fail("model loaded"))
    rc = cli.run(tr.main, _args(base, tmp_path / "run") + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert message in err, err


@pytest.mark.parametrize("line, message", [
    ('{"story": "s", "question": "q", "chosen": "a"}', ":2: field 'rejected' must be a string (missing)"),
    ('{"story": "s", "question": "q", "chosen": "a", "rejected": 3}', ":2: field 'rejected' must be a string (a int)"),
    ('{"story": "s", "question": "q", "chosen": ', ":2: not valid JSON"),
    ('["a", "b"]', ":2: expected a JSON object, got list"),
])
def test_bad_pair_files_name_the_line(base, tmp_path, capsys, line, message):
    good = json.dumps(preference_rows(1)[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    rc = cli.run(tr.main, _args(base, tmp_path / "run", f"data.train={path}"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{path}{message}" in err and "\n" not in err, err


def test_existing_outputs_are_refused(base, tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    rc = cli.run(tr.main, _args(base, tmp_path / "run", f"run.export_hf={tmp_path / 'hf'}"))
    assert rc == 2 and "run.export_hf" in capsys.readouterr().err
    rc = cli.run(tr.main, _args(base, tmp_path / "run", "run.resume=true"))
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_recipe_config_loads():
    cfg = tr.parse_args(["--config", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                  "rm_qwen3_4b.yaml")])
    assert cfg.model.remat == "full" and cfg.optim.lr == 1e-5 and cfg.run.batch_size == 64
    assert cfg.data.template.endswith("{reasoning}<|im_end|>")


@pytest.mark.slow  # three short runs, ~40 s on 2 cores (compilation)
def test_resumed_run_equals_an_uninterrupted_one(base, tmp_path):
    """3 steps, then a resume to 6, against 6 steps in one go: the same TrainState bit for bit
    (bf16 weights, so the fp32 master copy must come back too; micro-batches; save_every)."""
    common = ("model.param_dtype=bfloat16", "model.dtype=bfloat16", "run.batch_size=16", "run.micro_batch_size=8",
              "run.save_every=2", "data.eval_fraction=0")
    whole = tr.train_rm(tr.parse_args(_args(base, tmp_path / "a", "run.steps=6", *common)),
                        log=lambda _: None)
    out = tmp_path / "b"
    part = tr.train_rm(tr.parse_args(_args(base, out, "run.steps=3", *common)), log=lambda _: None)
    assert int(part.state.step) == 3 and sorted(os.listdir(out / "checkpoints"))[:2] == ["2", "3"]
    rest = tr.train_rm(tr.parse_args(_args(base, out, "run.steps=6", "run.resume=true", *common)),
                       log=lambda _: None)
    assert rest.state.master is not None  # the bf16 run keeps an fp32 master
    for name, a, b in zip(("params", "master", "opt_state", "step", "skipped"),
                          (whole.state.params, whole.state.master, whole.state.opt_state,
                           whole.state.step, whole.state.skipped),
                          (rest.state.params, rest.state.master, rest.state.opt_state,
                           rest.state.step, rest.state.skipped)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            assert np.array_equal(np.asarray(x), np.asarray(y)), name
    assert [h["loss"] for h in whole.history[3:]] == [h["loss"] for h in rest.history]


def test_sigterm_saves_the_update_in_hand_and_the_run_resumes(base, tmp_path, monkeypatch):
    """SIGTERM while step 2 runs: that update finishes, is saved, and the run returns exit code
    143 with a status naming the signal; `run.resume=true` then runs the remaining steps from it."""
    import signal

    out = tmp_path / "run"
    common = ("run.steps=4", "run.log_every=1", "data.eval_fraction=0", "run.progress=false")

    def log(line):
        if line.startswith("step     2 "):  # logged after step 2's update, before the stop check
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = tr.train_rm(tr.parse_args(_args(base, out, *common)), log=log)
    assert stopped.exit_code == 143 and stopped.status == "stopped by SIGTERM after 2 steps"
    assert int(stopped.state.step) == 2 and len(stopped.history) == 2
    assert [d for d in os.listdir(out / "checkpoints") if d.isdigit()] == ["2"]
    steps = [json.loads(ln)["step"] for ln in open(out / "metrics.jsonl")]
    assert steps == [0, 1]
    # The resumed run takes its shapes from the run's config.json and never reads model.path's
    # weights (the restore replaces them all).
    monkeypatch.setattr(rm_io, "init_reward_model", lambda *a, **k: pytest.fail("weights read"))
    rest = tr.train_rm(tr.parse_args(_args(base, out, *common, "run.resume=true")),
                       log=lambda _: None)
    assert rest.exit_code == 0 and rest.status == "done" and int(rest.state.step) == 4
    assert [h["step"] for h in rest.history] == [2, 3]
