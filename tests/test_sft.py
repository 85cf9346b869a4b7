"""The supervised warm start: the loss counts response tokens only (checked against transformers'
Qwen3 in torch), micro-batches give the same update, the loss falls on a tiny set, and the command
writes a checkpoint that load_model and generate read; bad input is one `error:` line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from socialr1_jax.checkpoint.loading import load_model
from socialr1_jax.jobs import sft, sft_data
from socialr1_jax.rl import sft_step
from socialr1_jax.rl import train_step as ts
from socialr1_jax.jobs.train_config import OptimConfig, SFTSection
from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.social.demo_tokenizer import demo_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples(rng, n, vocab, pad):
    out = []
    for _ in range(n):
        p = rng.integers(3, vocab, size=int(rng.integers(2, 9))).tolist()
        r = rng.integers(3, vocab, size=int(rng.integers(1, 7))).tolist()
        out.append(sft_data.Example(tuple(p), tuple(r)))
    return out


def test_loss_is_response_tokens_only_as_torch_computes_it(tiny_hf):
    import torch
    from transformers import Qwen3ForCausalLM

    model = load_model(tiny_hf)
    pad = 0
    ex = _examples(np.random.default_rng(0), 5, model.cfg.vocab_size, pad)
    batch = sft_data.make_batch(ex, pad)
    # garbage under the masks must not matter
    noisy = sft_step.SFTBatch(batch.prompt_ids, batch.prompt_mask,
                         np.where(batch.response_mask > 0, batch.response_ids, 7),
                         batch.response_mask)
    ours, metrics = sft_step.sft_loss(model, batch, float(batch.response_mask.sum()))
    ours_noisy, _ = sft_step.sft_loss(model, noisy, float(batch.response_mask.sum()))

    ref = Qwen3ForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for e in ex:  # one unpadded sequence at a time: no masking tricks on the torch side
            ids = torch.tensor([list(e.prompt) + list(e.response)])
            logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
            for k, t in enumerate(e.response):
                nll -= float(logp[len(e.prompt) - 1 + k, t])
                count += 1
    assert int(metrics["tokens"]) == count
    np.testing.assert_allclose(float(ours), nll / count, rtol=1e-5)
    np.testing.assert_allclose(float(ours_noisy), float(ours), rtol=1e-6)


def test_micro_batches_give_the_same_update():
    from socialr1_jax.model.build import create_model
    from socialr1_jax.model.config import preset

    cfg = preset("tiny", vocab_size=64)
    model = create_model(cfg, seed=1)
    ocfg = OptimConfig(lr=1e-2, weight_decay=0.0)
    batch = sft_data.make_batch(_examples(np.random.default_rng(1), 8, 64, 0), 0)
    outs = []
    for mbs in (0, 2):
        state = ts.init_train_state(nnx.state(model), ocfg, None)
        step = sft_step.make_sft_step(cfg, ocfg, None, micro_batch_size=mbs)
        state, m = step(state, batch)
        outs.append((jax.tree.leaves(state.params), float(m["loss"]), float(m["grad_norm"])))
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5)
    np.testing.assert_allclose(outs[0][2], outs[1][2], rtol=1e-5)
    for a, b in zip(outs[0][0], outs[1][0]):  # Adam's first step is ~lr * sign(g): near-zero
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)  # grads may differ


def test_loss_falls_on_a_tiny_set():
    from socialr1_jax.model.build import create_model
    from socialr1_jax.model.config import preset

    model = create_model(preset("tiny", vocab_size=64), seed=0)
    ex = _examples(np.random.default_rng(2), 8, 64, 0)
    res = sft.train_sft(model, ex, SFTSection(steps=40, batch_size=8, log_every=100),
                        OptimConfig(lr=1e-2, weight_decay=0.0), pad_id=0, log=lambda s: None)
    assert len(res.history) == 40
    assert res.first_loss > 3.5 and res.last_loss < 0.3 * res.first_loss, (res.first_loss,
                                                                           res.last_loss)


def test_encode_pairs_templates_appends_eos_and_drops_too_long():
    tok = demo_tokenizer()
    pairs = [("Where is the apple?", "<think>Cue: x</think><Answer>A</Answer>"),
             ("the " * 50, "ok")]
    ex, dropped = sft_data.encode_pairs(tok, pairs, max_prompt_len=40)
    assert dropped == 1 and len(ex) == 1
    assert tok.decode(list(ex[0].prompt)) == tk.chat_text(tok, pairs[0][0])
    assert ex[0].response[-1] == tok.eos_token_id
    assert tok.decode(list(ex[0].response[:-1])) == pairs[0][1]
    with pytest.raises(Exception, match="max_prompt_len=40"):
        sft_data.encode_pairs(tok, pairs, max_prompt_len=40, on_too_long="error")


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "socialr1_jax.sft", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


def _sft_args(tmp_path):
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"q": f"Where is the apple {i}?",
                                "a": "<think>Cue: the basket.</think><Answer>A</Answer>"}) + "\n")
    return ["model.preset=tiny", "model.vocab_size=512", "model.tokenizer=demo",
            f"sft.data.path={data}", "sft.data.prompt_key=q", "sft.data.response_key=a",
            "sft.steps=30", "sft.batch_size=8", "sft.optim.lr=1e-2", "sft.optim.weight_decay=0",
            "sft.log_every=1", "run.save_every=5", "run.progress=false"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One uninterrupted `sft` command run: (its folder, its arguments, the process)."""
    tmp_path = tmp_path_factory.mktemp("sft_run")
    args = _sft_args(tmp_path)
    out = tmp_path / "warm"
    return tmp_path, args, out, _run(args + [f"run.out_dir={out}"], tmp_path)


def test_command_writes_a_checkpoint_that_loads_and_generates(sft_run):
    tmp_path, _, out, r = sft_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "8 pairs" in r.stdout and "checkpoint:" in r.stdout, r.stdout
    model = load_model(str(out))  # the run folder loads (its checkpoints/)
    assert model.cfg.vocab_size == 512
    g = subprocess.run([sys.executable, "-m", "socialr1_jax.generate", "--model", str(out),
                        "--prompt", "Where is the apple 3?", "--chat", "--temperature", "0",
                        "--max-new-tokens", "16"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"), timeout=600)
    assert g.returncode == 0, g.stderr[-2000:]
    assert "<think>Cue: the basket.</think><Answer>A</Answer>" in g.stdout, g.stdout


@pytest.mark.parametrize("args, message", [
    (["run.out_dir=o", "model.tokenizer=demo", "sft.steps=2"], "sft.data.path"),
    (["sft.data.path=nowhere.jsonl", "run.out_dir=o", "model.tokenizer=demo", "sft.steps=2"],
     "nowhere.jsonl: no such file"),
    (["sft.data.path=bad.jsonl", "run.out_dir=o", "model.tokenizer=demo", "sft.steps=2"],
     "bad.jsonl:2: no string"),
    (["sft.data.path=bad.jsonl", "run.out_dir=o", "sft.stpes=3"], "sft.stpes"),
    (["sft.data.path=bad.jsonl", "run.out_dir=o", "sft.steps=-1"], "sft.steps=-1"),
    (["sft.data.path=good.jsonl", "model.tokenizer=demo", "sft.steps=2"], "run.out_dir"),
    (["sft.data.path=good.jsonl", "run.out_dir=o", "model.tokenizer=demo",
      "model.vocab_size=512", "sft.steps=2", "sft.batch_size=4"],
     "multiple of the mesh's 8 batch shards"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message, monkeypatch, capsys):
    """In-process through `cli.run`, what `python -m socialr1_jax.sft` calls (the command's
    own process: test_jobs_faults.py and test_faults.py run it so)."""
    from socialr1_jax import cli
    from socialr1_jax.jobs import sft

    (tmp_path / "good.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    monkeypatch.chdir(tmp_path)
    code = cli.run(sft.main, args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not (tmp_path / "o").exists()  # refused before it wrote anything



@pytest.mark.slow
def test_sigterm_saves_and_the_printed_resume_hint_continues_bit_exactly(sft_run, tmp_path):
    """SIGTERM in the middle of `sft` saves the updates done and prints a resume command; that
    command, run as printed, ends with the parameters and metrics of an uninterrupted run. A
    used folder is refused without run.resume=true, and a resume with another config too."""
    import shlex
    import signal
    import time

    _, args, ref, _ = sft_run
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    log = open(tmp_path / "run.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "socialr1_jax.sft", *args, f"run.out_dir={out}"],
                         cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics = out / "metrics.jsonl"
    while p.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=600) == 143, (tmp_path / "run.log").read_text()[-3000:]
    text = (tmp_path / "run.log").read_text()
    done = metrics.read_text().count("\n")
    assert 3 <= done < 30 and "stopped by SIGTERM" in text, text[-3000:]
    hint = [ln for ln in text.splitlines() if ln.startswith("resume with: ")]
    assert len(hint) == 1, text[-3000:]
    cmd = shlex.split(hint[0][len("resume with: "):])
    assert cmd[:3] == ["python", "-m", "socialr1_jax.sft"], cmd
    again = _run(args + [f"run.out_dir={out}"], tmp_path)
    assert again.returncode == 2 and "run.resume=true" in again.stderr, again.stderr[-2000:]
    other = _run(args + [f"run.out_dir={out}", "run.resume=true", "sft.optim.lr=1"], tmp_path)
    assert other.returncode == 2 and "sft.optim.lr" in other.stderr, other.stderr[-2000:]
    r = subprocess.run([sys.executable] + cmd[1:], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed {out} at step {done}" in r.stdout, r.stdout
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [m["step"] for m in rows(out)] == list(range(30))
    for a, b in zip(rows(ref), rows(out)):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    want, got = nnx.state(load_model(str(ref))), nnx.state(load_model(str(out)))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
