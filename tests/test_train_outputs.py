"""A training checkpoint is used as a converted one is: it carries the tokenizer and
generation_config of the model it started from, converts to HF and loads in transformers with
the same logits, and `generate` and `evaluate` run on it. The periodic held-out evaluation
(eval.every) runs through the evaluator during training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import load_model
from socialr1_jax.jobs import train as train_mod
from tests.hf_fixtures import make_tiny_chat_checkpoint
from tests.tom_data import toy_rows, write_jsonl
from tests.train_args import TOY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three GRPO steps of the toy task (target token 'A' = 65) from a tiny chat checkpoint,
    evaluated on 4 held-out questions before the first step, every 2 steps and at the end."""
    src = tmp_path_factory.mktemp("src")
    make_tiny_chat_checkpoint(src)
    data = write_jsonl(tmp_path_factory.mktemp("data") / "heldout.jsonl", toy_rows(4))
    out = tmp_path_factory.mktemp("train") / "run"
    cfg = train_mod.parse_args(TOY + [f"model.path={src}", "model.vocab_size=0",
                                      f"run.out_dir={out}",
                                "run.progress=false", "run.steps=3", "toy.target_token=65",
                                "toy.eos_id=258", "optim.lr=1e-2", "eval.every=2",
                                f"eval.data={data}", "eval.benchmark=mcq",
                                "eval.max_new_tokens=8", "eval.batch_size=4"])
    lines = []
    result = train_mod.train(cfg, log=lines.append)
    assert result.status == "done"
    return src, out / "checkpoints", result, data, lines


@pytest.mark.slow
def test_training_checkpoint_converts_to_hf_with_the_same_logits(trained, tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from conversion.orbax_to_hf import export

    src, ck, result, _, _ = trained
    # side files of the source: tokenizer, generation_config (eos 258, 256)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (ck / name).is_file(), name
    assert json.loads((ck / "generation_config.json").read_text())["eos_token_id"] == [258, 256]

    model = load_model(str(ck))
    final = jax.tree.map(np.asarray, result.state.params)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(a), b)
    initial = load_model(str(src))
    assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
               zip(jax.tree.leaves(nnx.state(initial)), jax.tree.leaves(nnx.state(model))))

    hf_dir = tmp_path / "hf"
    export(str(ck), str(hf_dir), progress=False)
    hf = Qwen3ForCausalLM.from_pretrained(hf_dir).float().eval()
    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    ids = np.asarray([tok.encode("Where will Sally look for the ball?")], np.int32)
    with torch.no_grad():
        want = hf(torch.as_tensor(ids).long()).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_generate_runs_on_a_training_checkpoint(trained, tmp_path):
    from socialr1_jax.rollout import generate

    _, ck, _, _, _ = trained
    out = tmp_path / "gen.jsonl"
    rows = generate.generate(["--model", str(ck), "--prompt", "Where is the ball?", "--chat",
                              "--chat-format", "qwen",
                              "--max-new-tokens", "8", "--temperature", "0", "--out", str(out)])
    assert len(rows) == 1 and 1 <= rows[0]["completion_tokens"] <= 8
    assert json.loads(out.read_text().splitlines()[0])["completion_ids"] == rows[0]["completion_ids"]


@pytest.mark.slow
def test_evaluate_runs_on_a_training_checkpoint(trained, tmp_path):
    from socialr1_jax.social import evaluate

    _, ck, _, data, _ = trained
    out = tmp_path / "report.json"
    assert evaluate.main(["--model", str(ck), "--benchmark", "mcq", "--data", data,
                          "--max-new-tokens", "8", "--batch-size", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["questions"] == 4 and report["completions"] == 4


@pytest.mark.slow
def test_periodic_evaluation_during_training(trained):
    """eval.every=2 over 3 steps: before the first step, after step 2 and at the end (eval.jsonl,
    TensorBoard, the console and the summary), each on the 4 held-out questions, with the
    accuracy of each dimension (toy rows: Belief, Emotion, Desire, Belief)."""
    from tests.test_train import read_events

    _, ck, result, _, lines = trained
    run = ck.parent
    rows = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]
    assert all(r["eval/questions"] == 4 and 0 <= r["eval/accuracy"] <= 1 for r in rows)
    for r in rows:  # overall = the dimensions' accuracies weighted by their 2, 1, 1 questions
        dims = [r["eval/accuracy/Belief"], r["eval/accuracy/Emotion"], r["eval/accuracy/Desire"]]
        assert all(d in (0, 0.5, 1) for d in dims), r
        assert r["eval/accuracy"] == pytest.approx((2 * dims[0] + dims[1] + dims[2]) / 4)
    assert [m for _, m in result.evaluations] == [{k: v for k, v in r.items() if k != "step"}
                                                 for r in rows]
    shown = read_events(str(run / "tensorboard"), "eval/accuracy")
    assert [(s, v) for _, s, v in shown] == [(r["step"], pytest.approx(r["eval/accuracy"]))
                                            for r in rows]
    assert sum(line.startswith("eval after") for line in lines) == 3
    assert "held-out accuracy" in train_mod.summary(result)
