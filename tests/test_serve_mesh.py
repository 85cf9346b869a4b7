"""`python -m socialr1_jax.serve --mesh 2x4x1` on 8 host CPU devices (as a user starts it, a
subprocess on 127.0.0.1): the batch split over the mesh gives the same greedy text as
transformers' Qwen3 on the same tiny checkpoint, through the `openai` client, streamed and not."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from socialr1_jax.rollout import tokenizer as tk
from tests.hf_fixtures import make_tiny_chat_checkpoint
from tests.xla_env import session_flags

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = (258, 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(ckpt, port, log_path, *flags):
    cmd = [sys.executable, "-m", "socialr1_jax.serve", "--model", str(ckpt), "--port",
           str(port), "--served-model-name", "m", "--max-batch", "2", "--batch-buckets", "2",
           "--max-model-len", "48", "--prompt-buckets", "32", "--batch-window-ms", "20", *flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=session_flags(), PYTHONPATH=ROOT)
    with open(log_path, "w") as logf:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)


def _wait(proc, url, log_path, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, open(log_path).read()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("server not ready:\n" + open(log_path).read())


def greedy_text(model, tok, ids, n_new):
    """(text, token count) of transformers' greedy continuation of `ids` (the EOS not in it)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=n_new, eos_token_id=list(EOS),
                             pad_token_id=256)[0, len(ids):].tolist()
    return tok.decode(out[:-1] if out[-1] in EOS else out), len(out)


def test_mesh_server_gives_the_unsharded_greedy_text(tmp_path):
    model = make_tiny_chat_checkpoint(tmp_path, seed=4, chat_template=tk.DEMO_CHAT_TEMPLATE)
    port, log_path = _free_port(), str(tmp_path / "server.log")
    proc = _start(tmp_path, port, log_path, "--mesh", "2x4x1", "--host-devices", "8")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(proc, url, log_path)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        tok = tk.load_tokenizer(str(tmp_path))
        for prompt in ("Anne puts the ball", "Where"):
            ids = tk.encode(tok, prompt)
            want, n = greedy_text(model, tok, ids, 12)
            r = client.completions.create(model="m", prompt=ids, max_tokens=12, temperature=0)
            assert r.choices[0].text == want and r.usage.completion_tokens == n
            parts = client.completions.create(model="m", prompt=ids, max_tokens=12,
                                              temperature=0, stream=True)
            assert "".join(p.choices[0].text for p in parts) == want
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
