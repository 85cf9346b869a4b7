"""`serve` in-process (the real app through Starlette's TestClient, no port): CKPT as an Orbax
checkpoint or a run folder with `--step`, served text equal to transformers' greedy output; a
fault inside the model is a 500 in the OpenAI error shape and the server goes on serving."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from starlette.testclient import TestClient

from conversion import hf_to_orbax
from socialr1_jax.cli import UsageError
from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.serve import __main__ as serve_main
from socialr1_jax.serve.app import create_app, Server, ServerConfig
from socialr1_jax.serve.streaming import TextStream
from tests.hf_fixtures import make_tiny_chat_checkpoint

EOS = (258, 256)
FLAGS = ["--max-batch", "1", "--max-model-len", "32", "--prompt-buckets", "16",
         "--batch-window-ms", "0"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A training run's layout: RUN/checkpoints/<step> (our converter's Orbax root), beside the
    HF directory it came from and transformers' model of it."""
    root = tmp_path_factory.mktemp("serve_faults")
    hf = root / "hf"
    model = make_tiny_chat_checkpoint(hf, seed=3, chat_template=tk.DEMO_CHAT_TEMPLATE, eos=EOS)
    (root / "run").mkdir()
    hf_to_orbax.convert(str(hf), str(root / "run" / "checkpoints"), progress=False)
    return root, model


def _loader(folder, *extra):
    args = serve_main.parse_args(["--model", str(folder), *FLAGS, *extra])
    return args, serve_main.build_loader(args)


def test_model_argument_resolves_runs_orbax_and_steps(run_folder):
    root, _ = run_folder
    args, (name, _) = _loader(root / "run")
    assert name == "run" and args.step == 0  # the run folder -> its checkpoints/, latest step
    args, _ = _loader(root / "run" / "checkpoints", "--step", "0")
    assert args.step == 0
    with pytest.raises(UsageError, match=r"--model .*checkpoints.*step 7"):
        _loader(root / "run", "--step", "7")
    with pytest.raises(UsageError, match=r"--step 0: --model .*hf is an HF directory"):
        _loader(root / "hf", "--step", "0")


class FailOnce:
    """The real engine, except that its first `generate` after warm-up raises (a fault inside
    the model, as an XLA runtime error would)."""

    def __init__(self, engine):
        self.engine, self.armed = engine, False

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *a, **k):
        if self.armed:
            self.armed = False
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory (planted)")
        return self.engine.generate(*a, **k)


def _wait_ready(client, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        r = client.get("/health")
        if r.status_code == 200:
            return
        assert r.json()["status"] == "loading", r.json()
        time.sleep(0.2)
    pytest.fail("the server did not get ready")


def test_orbax_run_serves_transformers_greedy_and_survives_a_model_fault(run_folder):
    root, torch_model = run_folder
    args, (name, load) = _loader(root / "run")
    engines = []

    def load_failing():
        engine, tok = load()
        engines.append(FailOnce(engine))
        return engines[0], tok

    server = Server(ServerConfig(model_name=name), load_failing)
    body = {"model": name, "prompt": "Anne thinks", "max_tokens": 8, "temperature": 0}
    with TestClient(create_app(server)) as client:
        _wait_ready(client)
        engines[0].armed = True
        bad = client.post("/v1/completions", json=body)
        assert bad.status_code == 500
        err = bad.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == "model_error" and "RESOURCE_EXHAUSTED" in err["message"]
        engines[0].armed = True  # a fault once the stream has started: an error event
        streamed = client.post("/v1/completions", json={**body, "stream": True})
        events = [json.loads(line[5:]) for line in streamed.text.splitlines()
                  if line.startswith("data:") and line[5:].strip() != "[DONE]"]
        assert streamed.status_code == 200 and "model_error" == events[-1]["error"]["code"]
        assert streamed.text.rstrip().endswith("data: [DONE]")
        good = client.post("/v1/completions", json=body)  # the worker went on
        assert good.status_code == 200, good.text
        assert client.get("/health").status_code == 200
    tok = tk.load_tokenizer(str(root / "hf"))
    ids = tk.encode(tok, "Anne thinks")
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = torch_model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                   max_new_tokens=8, eos_token_id=list(EOS), pad_token_id=256)
    ref = ref[0, len(ids):].tolist()
    text = tok.decode(ref[:-1] if ref[-1] in EOS else ref)
    assert good.json()["choices"][0]["text"] == text
    assert good.json()["usage"]["completion_tokens"] == len(ref)
    assert os.path.isdir(root / "run" / "checkpoints" / "0")


def test_text_stream_holds_back_partial_characters_and_stop_prefixes(run_folder):
    tok = tk.load_tokenizer(str(run_folder[0] / "hf"))
    ids = tk.encode(tok, "abécd STOP ef")  # é: two byte tokens
    ts = TextStream(tok, EOS, ["STOP"])
    pieces = [ts.push(t) for t in ids]
    assert "".join(pieces) == "abécd " and "�" not in "".join(pieces)
    assert ts.ended and ts.rest("abécd ") == ""
    plain = TextStream(tok, EOS, [])
    pieces = [plain.push(t) for t in ids + [EOS[0]] + ids]  # nothing after an EOS
    assert pieces[:4] == ["a", "b", "", "é"]  # the first byte of é waits for the second
    assert "".join(pieces) == "abécd STOP ef" and plain.rest("abécd STOP ef") == ""


def test_no_token_streaming_sends_the_text_when_the_call_ends(run_folder):
    root, _ = run_folder
    args, (name, load) = _loader(root / "hf", "--no-token-streaming")
    server = Server(ServerConfig(model_name=name), load)
    body = {"model": name, "prompt": "Anne thinks", "max_tokens": 8, "temperature": 0}
    with TestClient(create_app(server)) as client:
        _wait_ready(client)
        assert not server.engine.stream
        plain = client.post("/v1/completions", json=body).json()["choices"][0]
        streamed = client.post("/v1/completions", json={**body, "stream": True})
    events = [json.loads(line[5:]) for line in streamed.text.splitlines()
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    pieces = [e["choices"][0]["text"] for e in events if e["choices"][0]["text"]]
    assert "".join(pieces) == plain["text"] and len(pieces) <= 1
    assert events[-1]["choices"][0]["finish_reason"] == plain["finish_reason"]
