"""LoRA in the reward-model job (train_rm with model.lora.rank > 0): step 0 scores as the full
reward model, a short run trains the adapters and the whole head only (the base's bytes stay),
a resume is bit-exact, the `model` judge and rm_io read the run as the adapted model (and
run.export_hf writes it merged), and a resume over another base is one `error:` line."""

import functools
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from socialr1_jax import cli, load_model
from socialr1_jax.checkpoint import lora_io, rm_io
from socialr1_jax.checkpoint.errors import CheckpointError
from socialr1_jax.jobs import train_rm as tr
from socialr1_jax.model import lora
from socialr1_jax.model.reward_model import make_score_fn, split_lora, with_lora
from tests.hf_fixtures import make_tiny_chat_checkpoint
from tests.rm_fixtures import PAD, make_rm_base
from tests.test_rm_judge import _items
from tests.test_train_rm import TEMPLATE, _args

# Two micro-batches per update, so the resume covers the accumulation too.
LORA = ["model.lora.rank=4", "model.lora.alpha=8", "optim.lr=1e-2", "run.batch_size=16",
        "run.micro_batch_size=8"]
STEPS = 6


def _paths(state) -> list[str]:
    """The parameter paths of an nnx state, e.g. "['backbone']['lora']['q_a_lrd']"."""
    return [jax.tree_util.keystr(p)
            for p, _ in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))]


@functools.partial(jax.jit, static_argnums=0)
def _score(graphdef, params, ids, mask):
    return nnx.merge(graphdef, params)(ids, mask)


def _scores(model, ids, mask) -> np.ndarray:
    """A reward model's scores, jitted (one program per graph: full models share one)."""
    return np.asarray(_score(*nnx.split(model), ids, mask))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny causal LM with the byte tokenizer (pad <|endoftext|> = 256), and pair files."""
    return make_rm_base(tmp_path_factory.mktemp("rm_lora"))


def test_step_zero_is_the_full_reward_model(base):
    """B = 0: the adapted model's scores are the full model's (same backbone, same new head)
    bit for bit; the trained part is the adapters and the head, nothing of the base."""
    rm, _ = rm_io.init_reward_model(str(base / "lm"), pad_token_id=PAD, seed=0)
    adapted = with_lora(rm, lora.parse_spec(4, 8, "all-linear"), seed=3)
    ids, mask = _texts_batch(base / "lm")
    full, ours = _scores(rm, ids, mask), _scores(adapted, ids, mask)
    assert np.array_equal(full, ours) and np.ptp(full) > 0
    _, frozen, trained = split_lora(adapted)
    names = _paths(trained)
    assert "['score_cd']" in names and len(names) == 1 + 14  # 7 targets x (A, B)
    assert all("lora" in n or "score_cd" in n for n in names)
    assert not any("lora" in n or "score" in n for n in _paths(frozen))


@pytest.fixture(scope="module")
def rm_run(base):
    """A 6-step LoRA train_rm run over the tiny causal LM (checkpoints at 3 and 6, an HF
    export; 16 pairs per update in micro-batches of 8): (folder, result)."""
    cfg = tr.parse_args(_args(base, base / "run", f"run.steps={STEPS}", "run.save_every=3",
                              f"run.export_hf={base / 'hf'}", *LORA))
    return base, tr.train_rm(cfg, log=lambda _: None)


def _rows(run):
    """metrics.jsonl without its wall-clock times."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "step_s"} for r in rows]


def test_run_trains_adapters_and_head_only(rm_run):
    d, res = rm_run
    losses = [h["loss"] for h in res.history]
    first, last = res.evals[0], res.evals[-1]
    print(f"LoRA RM: train loss {losses[0]:.4f} -> {np.mean(losses[-2:]):.4f}, held-out loss "
          f"{first['eval_loss']:.4f} -> {last['eval_loss']:.4f}, accuracy "
          f"{first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f}")
    assert res.status == "done" and np.mean(losses[-2:]) < 0.8 * losses[0]
    assert last["eval_loss"] < first["eval_loss"]
    # The TrainState: adapters + head and AdamW's two moments of each (fp32: no master copy);
    # nothing of the base.
    names = _paths(res.state.params)
    assert len(names) == 15 and all("lora" in n or "score_cd" in n for n in names)
    moments = sorted(x.shape for x in jax.tree.leaves(res.state.opt_state) if x.ndim)
    assert moments == sorted(2 * [x.shape for x in jax.tree.leaves(res.state.params)])
    assert res.state.master is None
    rec = json.load(open(d / "run" / "checkpoints" / "lora.json"))
    assert rec["rank"] == 4 and rec["modules_to_save"] == ["score"]
    assert rec["base"] == {"path": str(d / "lm"), "hash": lora_io.content_hash(str(d / "lm"))}
    # The base's bytes are the starting model's; the head and every B moved.
    start, _ = rm_io.init_reward_model(str(d / "lm"), pad_token_id=PAD, seed=0)
    _, base, trained = split_lora(res.model)
    want = nnx.to_pure_dict(nnx.state(start))
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(base)):
        ref = want
        for k in path:
            ref = ref[k.key]
        assert np.asarray(leaf).tobytes() == np.asarray(ref).tobytes(), path
    trained = nnx.to_pure_dict(trained)
    assert not np.array_equal(np.asarray(trained["score_cd"]), np.asarray(want["score_cd"]))
    assert all(np.abs(np.asarray(v)).max() > 0 for k, v in trained["backbone"]["lora"].items()
               if "_b_" in k)
    # The export is the merged model: the same scores as the adapted one.
    ids, mask = _texts_batch(d / "lm")
    ours = _scores(res.model, ids, mask)
    hf = rm_io.load_reward_model(str(d / "hf"))
    assert hf.cfg.lora is None
    np.testing.assert_allclose(_scores(hf, ids, mask), ours, atol=1e-5)
    assert np.abs(_scores(start, ids, mask) - ours).max() > 1e-2  # the training mattered
    with pytest.raises(CheckpointError, match="a LoRA reward model"):
        load_model(str(d / "run"))  # not a causal LM


def _texts_batch(tok_dir):
    """The judge items' texts as the tiny tokenizer encodes them, right-padded with PAD."""
    from socialr1_jax.rollout.tokenizer import encode, load_tokenizer
    from tests.rm_fixtures import padded

    tok = load_tokenizer(str(tok_dir))
    rows = [encode(tok, TEMPLATE.format(question=it.question, reasoning=it.reasoning))
            for it in _items(8)]
    return padded(rows, PAD)


def test_resume_is_bit_exact(rm_run, tmp_path):
    d, res = rm_run
    shutil.copytree(d / "run", tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "checkpoints" / str(STEPS))
    rest = tr.train_rm(tr.parse_args(_args(d, tmp_path / "r", f"run.steps={STEPS}",
                                           "run.save_every=3", "run.resume=true", *LORA)),
                       log=lambda _: None)
    assert [h["step"] for h in rest.history] == [3, 4, 5]
    assert _rows(tmp_path / "r") == _rows(d / "run")
    for name in ("params", "opt_state", "step", "skipped"):
        for x, y in zip(jax.tree.leaves(getattr(res.state, name)),
                        jax.tree.leaves(getattr(rest.state, name))):
            assert np.array_equal(np.asarray(x), np.asarray(y)), name


def test_rm_judge_scores_the_lora_run_as_the_adapted_model(rm_run):
    from socialr1_jax.social import rm_prompt
    from socialr1_jax.social.judge_kinds import build_judge
    from socialr1_jax.social.judges import JudgeConfig
    d, res = rm_run
    cfg = JudgeConfig(kind="model", checkpoint=str(d / "run" / "checkpoints"), batch_size=8,
                      prompt_template=TEMPLATE, fallback=None)
    with build_judge(cfg, "content") as judge:
        items = _items(6)
        got = judge.score(items).scores
        texts = judge.texts(items)
        assert judge.model.cfg.lora is not None  # the adapted model, not merged
        mesh = judge.mesh
    # The training's model, scored in-process by the same program on the judge's mesh.
    rows, _ = rm_prompt.encode_texts(judge._encode, texts, cfg.max_length)
    fn, params = make_score_fn(res.model, mesh), nnx.state(res.model)
    want = rm_prompt.score_rows(lambda ids, mask: fn(params, ids, mask), rows, pad_id=PAD,
                                batch_size=8, max_length=cfg.max_length)
    print(f"judge vs in-process adapted model: max difference {np.abs(got - want).max():.2e}")
    np.testing.assert_array_equal(got, want)
    assert np.ptp(want) > 1e-3


def test_resume_over_another_base_is_one_error_line(rm_run, tmp_path, capsys):
    d, _ = rm_run
    make_tiny_chat_checkpoint(tmp_path / "other", seed=1, init_std=0.02)
    shutil.copytree(d / "run", tmp_path / "r")
    capsys.readouterr()  # transformers' progress bars
    rc = cli.run(tr.main, _args(d, tmp_path / "r", f"run.steps={STEPS}", "run.resume=true",
                                f"model.path={tmp_path / 'other'}",
                                "run.allow_config_change=true", *LORA))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: run.resume: "), err
    assert "different base checkpoint" in err[0], err
