"""LoRA in the sft job and in the GRPO job's warm start: the state holds the adapters only, the
checkpoint loads as the adapted model (checked against transformers on the --merge-lora export),
a resume is bit-exact (with adapter dropout) and refuses another base, and a warm start trains
adapters that it merges into RUN/warm_start, the base of GRPO's fresh adapters. Adapter dropout
(model.lora.dropout) changes the training loss only, never a forward outside a train step."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from socialr1_jax import cli, load_model, make_mesh
from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
from socialr1_jax.jobs import sft
from socialr1_jax.jobs.train_config import OptimConfig
from socialr1_jax.model import build
from socialr1_jax.rl import lora_train
from tests.test_lora import IDS, LORA, _args, _base, _ours, _torch

DROPOUT = LORA + ["model.lora.dropout=0.1"]  # PEFT's lora_dropout, in the train steps only

STEPS = 4


def _pairs(path):
    with open(path, "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"Where is the apple {i}?",
                                "response": "In the basket."}) + "\n")
    return str(path)


def _sft(base, out, pairs, *extra):
    args = [f"model.path={base}", f"sft.data.path={pairs}", "sft.data.chat=false",
            f"sft.steps={STEPS}", "sft.batch_size=8", "sft.optim.lr=1e-2", "sft.log_every=100",
            f"run.out_dir={out}", "run.save_every=2", "run.progress=false", *DROPOUT, *extra]
    return cli.run(sft.main, args)


def _rows(run):
    """metrics.jsonl without its wall-clock times."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A 4-step LoRA `sft` command run over a transformers-made base: (folder, base, pairs)."""
    d = tmp_path_factory.mktemp("lora_sft")
    ref = _base(d / "base")
    pairs = _pairs(d / "pairs.jsonl")
    assert _sft(d / "base", d / "run", pairs) == 0
    return d, ref, pairs


def _whole_state(run, model_cfg, step=STEPS):
    """The TrainState saved at `step`, restored as a LoRA state (adapters, moments, counters)."""
    ck = TrainCheckpointer(str(run / "checkpoints"))
    abstract = lora_train.abstract_train_state(model_cfg, OptimConfig(), make_mesh(),
                                               total_updates=STEPS)
    try:
        return ck.restore(abstract, step)[0]
    finally:
        ck.close()


def test_sft_trains_adapters_that_load_and_export(sft_run, tmp_path):
    from transformers import Qwen3ForCausalLM

    from conversion import orbax_to_hf

    d, ref, _ = sft_run
    rows = _rows(d / "run")
    assert len(rows) == STEPS and rows[-1]["loss"] < rows[0]["loss"]
    rec = json.load(open(d / "run" / "checkpoints" / "lora.json"))
    assert rec["rank"] == 4 and rec["dropout"] == 0.1
    assert os.path.abspath(rec["base"]["path"]) == str(d / "base")
    loaded = load_model(str(d / "run"))  # the run folder: its base + the step's adapters
    state = _whole_state(d / "run", loaded.cfg)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    assert leaves and all("lora" in jax.tree_util.keystr(p) for p, _ in leaves)
    ours = _ours(loaded)
    assert cli.run(orbax_to_hf.main, ["--ckpt", str(d / "run"), "--merge-lora", "--out",
                                      str(tmp_path / "merged"), "--no-progress"]) == 0
    merged = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "merged"),
                                              dtype=torch.float32).eval()
    err, moved = np.abs(_torch(merged) - ours).max(), np.abs(_torch(ref) - ours).max()
    print(f"merged export vs ours {err:.2e}, adapted vs base {moved:.2e}")
    assert err <= 1e-4 and moved > 1e-3  # ... and the adapters learned something


def test_sft_resume_is_bit_exact_and_refuses_another_base(sft_run, tmp_path):
    d, _, pairs = sft_run
    shutil.copytree(d / "run", tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "checkpoints" / str(STEPS))
    assert _sft(d / "base", tmp_path / "r", pairs, "run.resume=true") == 0
    assert _rows(tmp_path / "r") == _rows(d / "run")
    cfg = load_model(str(d / "run")).cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 _whole_state(d / "run", cfg), _whole_state(tmp_path / "r", cfg))
    _base(tmp_path / "other", seed=1)
    with pytest.raises(cli.UsageError, match="different base checkpoint"):
        sft.main([f"model.path={tmp_path / 'other'}", f"sft.data.path={pairs}",
                  "sft.data.chat=false", f"sft.steps={STEPS}", "sft.batch_size=8",
                  f"run.out_dir={tmp_path / 'r'}", "run.resume=true",
                  "run.allow_config_change=true", *DROPOUT])


@pytest.mark.parametrize("job,args,match", [
    ("train", ["sft.lora=true"], "sft.lora=true trains the warm start as LoRA adapters of "
                                 "model.lora; set model.lora.rank > 0"),
    ("sft", ["sft.lora=true", "model.lora.rank=4"], "sft.lora=true is the GRPO job's"),
])
def test_sft_lora_switch_is_refused_where_it_means_nothing(job, args, match, capsys):
    import importlib

    from tests.train_args import TOY

    mod = importlib.import_module(f"socialr1_jax.jobs.{job}")
    code = cli.run(mod.main, (TOY if job == "train" else []) + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_grpo_warm_start_trains_adapters_and_merges_them(sft_run, tmp_path):
    """The warm start of a LoRA GRPO run with sft.lora=true (`warm_start_stage` with the run's
    model.lora, as jobs/train.py calls it) trains adapters, not the whole model, and saves the
    model with them merged as RUN/warm_start, the base of GRPO's fresh adapters
    (lora_setup.base_path) and its KL reference; a resumed run loads it from there."""
    from socialr1_jax.checkpoint import lora_io
    from socialr1_jax.jobs import lora_setup, warm_start
    from socialr1_jax.jobs.train import parse_args
    from socialr1_jax.rollout.tokenizer import load_tokenizer

    d, _, pairs = sft_run
    cfg = parse_args(_args(d / "base", tmp_path / "g", 1, f"sft.data.path={pairs}",
                           "sft.data.chat=false", f"sft.steps={STEPS}", "sft.batch_size=8",
                           "sft.optim.lr=1e-2", "model.lora.dropout=0.1", "sft.lora=true"))
    mesh = make_mesh()
    base, tok = load_model(str(d / "base"), mesh=mesh), load_tokenizer(str(d / "base"))
    assert cfg.sft.lora
    kw = dict(mesh=mesh, out_dir=str(tmp_path / "g"), log=lambda line: None,
              lora=cfg.model.lora.spec(), seed=cfg.model.seed)
    warm, res = warm_start.warm_start_stage(base, tok, cfg.sft, **kw)
    assert res is not None and warm.cfg.lora is None
    # The sft job's run of the same data, seeds and steps, its adapters merged: the same model.
    want = _ours(lora_io.merged_model(load_model(str(d / "run"))))
    np.testing.assert_allclose(_ours(warm), want, atol=1e-5)
    again, res = warm_start.warm_start_stage(base, tok, cfg.sft, **kw)  # a resume: loaded
    assert res is None
    np.testing.assert_array_equal(_ours(again), _ours(warm))
    assert lora_setup.base_path(cfg, str(tmp_path / "g")) == str(tmp_path / "g" / "warm_start")


def test_dropout_changes_the_training_loss_only():
    """p = 0 is the path without dropout exactly; p > 0 drops the adapters' input in a train
    step's forward (each element 0 or x / (1 - p), as torch's dropout) and nowhere else."""
    import jax.numpy as jnp

    from socialr1_jax import preset
    from socialr1_jax.model import lora
    from socialr1_jax.model.qwen3 import Qwen3
    from socialr1_jax.rl.sft_step import SFTBatch, sft_loss

    spec = lambda p: lora.parse_spec(4, 32, "all-linear", p)  # noqa: E731
    cfg = preset("tiny").replace(lora=spec(0.0))
    graphdef, state = nnx.split(Qwen3(cfg, rngs=nnx.Rngs(0)))  # eager: no init program
    state = jax.tree.map(lambda x: x + 0.05, state)  # B != 0: the adapters act
    ids = jnp.asarray(IDS % cfg.vocab_size)
    batch = SFTBatch(ids[:, :5], jnp.ones_like(ids[:, :5]), ids[:, 5:], jnp.ones_like(ids[:, 5:]))
    dropped = nnx.graphdef(build.abstract_model(cfg.replace(lora=spec(0.3))))

    @jax.jit
    def losses(state):
        """(training loss, eval loss) of the same weights under dropout 0 and 0.3."""
        out = []
        for g in (graphdef, dropped):
            fn = lambda st, b, g=g: sft_loss(nnx.merge(g, st), b, 12.0)[0]  # noqa: E731
            rows, loss = lora.Dropout(seed=0).wrap(3, batch, fn)
            out += [loss(state, rows), fn(state, batch)]
        return out

    train0, eval0, train1, eval1 = map(float, losses(state))
    assert train0 == eval0 == eval1 and train1 != train0
    x = jnp.ones((2, 3, 64))
    dropped = np.asarray(lora._dropped(preset("tiny").replace(
        lora=lora.parse_spec(4, 8, "all-linear", 0.3)), jax.random.split(jax.random.PRNGKey(0), 2),
        "q", x))
    ref = torch.nn.functional.dropout(torch.ones(2, 3, 64), p=0.3).numpy()
    assert set(np.unique(dropped)) == set(np.unique(ref))  # {0, 1 / 0.7}
    assert 0.15 < (dropped == 0).mean() < 0.45


@pytest.mark.slow
def test_serve_of_a_lora_run_gives_the_greedy_text_of_its_merged_export(sft_run, tmp_path):
    """`python -m socialr1_jax.serve --model RUN` (a subprocess on 127.0.0.1, through the
    `openai` client) serves the adapted model: the greedy text of transformers' Qwen3 on the
    run's --merge-lora export."""
    import signal

    import openai
    from transformers import Qwen3ForCausalLM

    from conversion import orbax_to_hf
    from socialr1_jax.rollout import tokenizer as tk
    from tests.test_serve_mesh import _free_port, _start, _wait, greedy_text

    d = sft_run[0]
    assert cli.run(orbax_to_hf.main, ["--ckpt", str(d / "run"), "--merge-lora", "--out",
                                      str(tmp_path / "merged"), "--no-progress"]) == 0
    ref = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    tok = tk.load_tokenizer(str(d / "run" / "checkpoints"))
    port, log_path = _free_port(), str(tmp_path / "server.log")
    proc = _start(d / "run", port, log_path, "--max-batch", "1", "--batch-buckets", "1")
    try:
        _wait(proc, f"http://127.0.0.1:{port}", log_path)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=60)
        for prompt in ("Where is the apple 3?", "In"):
            ids = tk.encode(tok, prompt)
            want, n = greedy_text(ref, tok, ids, 12)
            r = client.completions.create(model="m", prompt=ids, max_tokens=12, temperature=0)
            assert r.choices[0].text == want and r.usage.completion_tokens == n
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
