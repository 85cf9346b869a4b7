"""The generate CLI end to end on a tiny checkpoint with a tiny offline byte-level tokenizer."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from socialr1_jax import load_model
from socialr1_jax.cli import UsageError
from socialr1_jax.rollout import generate
from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.rollout.sampler import sample
from tests.hf_fixtures import make_tiny_chat_checkpoint, make_tiny_tokenizer
from tests.xla_env import session_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A Jinja chat template of our own (Qwen's turn format plus a marker line), to see it is used.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\nT:{% endif %}")


@pytest.fixture(scope="module")
def chat_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_ckpt")
    make_tiny_chat_checkpoint(d, seed=2)
    return str(d)


def test_chat_text_and_stop_ids(tmp_path, chat_ckpt):
    tok = tk.load_tokenizer(chat_ckpt)
    text = tk.chat_text(tok, "hi there")
    assert text == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    ids = tk.encode(tok, text)
    assert ids[0] == 257 and ids.count(258) == 1 and tok.decode(ids) == text
    assert tk.stop_ids(chat_ckpt, tok) == [258, 256]
    assert tk.pad_id(tok, [258, 256]) == 256
    # The tokenizer's own template wins when it has one.
    make_tiny_tokenizer(tmp_path, chat_template=TEMPLATE)
    templated = tk.load_tokenizer(str(tmp_path))
    assert tk.chat_text(templated, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nT:"
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        tk.load_tokenizer(str(tmp_path / "nowhere"))


def test_generate_writes_jsonl_matching_sample(tmp_path, chat_ckpt, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Anne puts the ball in the box."}) + "\n\n" +
                       json.dumps({"prompt": "Where will Sally look?"}) + "\n")
    out = tmp_path / "out.jsonl"
    generate.main(["--model", chat_ckpt, "--prompts-file", str(prompts), "--chat",
                   "--chat-format", "qwen",
                   "--temperature", "0", "--max-new-tokens", "40", "--num-samples", "2",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert "tokens/s" in err and "wrote 4 completion(s)" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Same ids as calling the sampler directly on the chat-templated, tokenised prompts.
    tok = tk.load_tokenizer(chat_ckpt)
    ids = [tk.encode(tok, tk.chat_text(tok, r["prompt"])) for r in rows[::2]]
    res = sample(load_model(chat_ckpt), ids, max_new_tokens=40, temperature=0,
                 eos_ids=[258, 256], pad_id=256, num_samples=2)
    for r, row in enumerate(rows):
        n = int(res.lengths[r])
        assert row["completion_ids"] == np.asarray(res.tokens)[r, :n].tolist()
        assert row["completion_tokens"] == n and row["prompt_tokens"] == len(ids[r // 2])
        assert row["finish_reason"] == ("eos" if row["completion_ids"][-1] in (258, 256)
                                        else "length")
        body = row["completion_ids"][:-1] if row["finish_reason"] == "eos" else row["completion_ids"]
        assert row["completion"] == tok.decode(body)
    # Greedy: both samples of a prompt are equal; the two prompts differ.
    assert rows[0]["completion_ids"] == rows[1]["completion_ids"] != rows[2]["completion_ids"]
    assert len(rows[0]["completion_ids"]) > 1


def test_generate_bad_prompts_file(tmp_path, chat_ckpt):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(UsageError, match=r"--prompts-file \S+bad.jsonl:2: expected an object with "
                                         r"a \"prompt\""):
        generate.main(["--model", chat_ckpt, "--prompts-file", str(bad)])


@pytest.mark.slow
def test_generate_cli_subprocess_sampling_on_a_mesh(chat_ckpt):
    """`python -m socialr1_jax.generate` in a fresh process, sampled, on a 1x2x2 CPU mesh."""
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=session_flags(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "socialr1_jax.generate", "--model", chat_ckpt, "--prompt",
         "Who knows where the ball is?", "--chat", "--chat-format", "qwen", "--temperature", "0.8",
         "--top-p", "0.9",
         "--top-k", "50", "--max-new-tokens", "24", "--num-samples", "3", "--seed", "1",
         "--mesh", "1x2x2", "--host-devices", "4"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("=== prompt 0 sample") == 3
    stats = re.search(r"(\d+) generated tokens in [\d.]+ s = ([\d.]+) tokens/s", proc.stderr)
    assert stats and int(stats.group(1)) > 3 and float(stats.group(2)) > 0, proc.stderr[-2000:]
