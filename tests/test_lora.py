"""LoRA (model.lora): step 0 is the base model exactly, a LoRA GRPO run's checkpoint loads as the
adapted model, both exports match the references (PEFT over transformers, transformers alone),
resume is bit-exact and refuses another base, bad input is one `error:` line each."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from socialr1_jax import cli, load_model, make_mesh, preset
from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.model import build, lora
from socialr1_jax.rl import lora_train
from tests.hf_fixtures import make_hf_checkpoint, make_tiny_tokenizer
from tests.train_args import TOY

VOCAB = 320  # the tiny tokenizer's 259 ids fit
IDS = np.random.default_rng(0).integers(0, VOCAB, (2, 11))
LORA = ["model.lora.rank=4", "model.lora.alpha=32", "model.lora.target_modules=all-linear"]


def _base(d, seed=0):
    ref = make_hf_checkpoint(d, vocab=VOCAB, seed=seed)
    make_tiny_tokenizer(d)
    return ref


def _args(base, out, steps, *extra):
    return TOY + [f"model.path={base}", "model.vocab_size=0", f"run.out_dir={out}",
                  f"run.steps={steps}", "run.save_every=2", "run.progress=false",
                  "run.log_every=100", *LORA, *extra]


def _train(base, out, steps, *extra):
    return train_mod.train(train_mod.parse_args(_args(base, out, steps, *extra)),
                           log=lambda line: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step LoRA GRPO run of the toy task over a transformers-made base checkpoint."""
    d = tmp_path_factory.mktemp("lora")
    ref = _base(d / "base")
    res = _train(d / "base", d / "run", 4)
    assert res.exit_code == 0, res.status
    return d, ref, res


def _ours(model, ids=IDS):
    return np.asarray(model(jnp.asarray(ids)), np.float32)


def _torch(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.float().numpy()


def test_step_zero_is_the_base_model_exactly():
    model = build.create_model(preset("tiny"))
    adapted = build.with_lora(model, lora.parse_spec(8, 16, "all-linear"), seed=3)
    ids = IDS % model.cfg.vocab_size
    np.testing.assert_array_equal(_ours(adapted, ids), _ours(model, ids))


def test_run_trains_adapters_only_and_kl_starts_at_zero(run):
    d, _, res = run
    assert res.history[0]["kl"] == 0.0
    leaves = jax.tree_util.tree_leaves_with_path(res.state.params)
    assert leaves and all("lora" in jax.tree_util.keystr(p) for p, _ in leaves)
    b = res.state.params["lora"]["q_b_ljr"][...]
    assert float(jnp.abs(b).max()) > 0  # B left zero: the adapters learned
    rec = json.load(open(d / "run" / "checkpoints" / "lora.json"))
    assert rec["rank"] == 4 and rec["base"]["hash"].startswith("sha256:")
    assert os.path.abspath(rec["base"]["path"]) == str(d / "base")


def test_load_model_and_generate_run_the_adapted_model(run, capsys):
    from socialr1_jax.rollout.generate import generate

    d, _, res = run
    loaded = load_model(str(d / "run" / "checkpoints"))
    assert loaded.cfg.lora is not None
    base = load_model(str(d / "base"))
    graphdef, base_state, _ = build.split_lora(build.with_lora(base, loaded.cfg.lora))
    adapters = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), res.state.params)
    trained = build.merge_lora(graphdef, base_state, adapters)
    np.testing.assert_array_equal(_ours(loaded), _ours(trained))
    rows = generate(["--model", str(d / "run" / "checkpoints"), "--prompt", "Hi",
                     "--max-new-tokens", "4", "--seed", "0"])
    assert len(rows) == 1 and rows[0]["completion_tokens"] >= 1


def test_exports_match_transformers_and_peft(run, tmp_path):
    from peft import PeftModel
    from transformers import Qwen3ForCausalLM

    from conversion import orbax_to_hf

    d, ref, _ = run
    ckpt = str(d / "run" / "checkpoints")
    ours = _ours(load_model(ckpt))
    assert cli.run(orbax_to_hf.main, ["--ckpt", ckpt, "--merge-lora", "--out",
                                      str(tmp_path / "merged"), "--no-progress"]) == 0
    merged = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "merged"),
                                              dtype=torch.float32).eval()
    merged_err = np.abs(_torch(merged) - ours).max()
    assert cli.run(orbax_to_hf.main, ["--ckpt", ckpt, "--adapter-only", "--out",
                                      str(tmp_path / "peft")]) == 0
    adapted_vs_base = np.abs(ours - _torch(ref)).max()
    peft_model = PeftModel.from_pretrained(ref, str(tmp_path / "peft")).eval()  # ref adapted
    peft_err = np.abs(_torch(peft_model) - ours).max()
    print(f"merged vs transformers {merged_err:.2e}, adapter vs peft {peft_err:.2e}, "
          f"adapted vs base {adapted_vs_base:.2e}")
    assert merged_err <= 1e-4 and peft_err <= 1e-4
    assert adapted_vs_base > 1e-3  # the comparison sees the adapters


def test_resume_is_bit_exact_and_refuses_another_base(run, tmp_path):
    d, _, res = run
    # The run's folder as it was after step 2 (its step-4 checkpoint removed), resumed to 4.
    shutil.copytree(d / "run", tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "4")
    rest = _train(d / "base", tmp_path / "r", 4, "run.resume=true")
    assert rest.first_step == 2 and rest.exit_code == 0
    ck = TrainCheckpointer(str(d / "run" / "checkpoints"))
    abstract = lora_train.abstract_train_state(res.model_cfg, train_mod.parse_args(TOY).optim,
                                               make_mesh(), total_updates=4)
    whole, _ = ck.restore(abstract, 4)
    ck.close()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 whole, rest.state)
    other = tmp_path / "other"
    _base(other, seed=1)
    with pytest.raises(cli.UsageError, match="different base checkpoint"):
        _train(other, tmp_path / "r", 6, "run.resume=true", "run.allow_config_change=true")


@pytest.mark.parametrize("override,match", [
    ("model.lora.target_modules=q_proj,qq_proj", "'qq_proj' is not a module of Qwen3; valid: "
                                                 "q_proj, k_proj"),
    ("model.lora.rank=-2", "model.lora.rank=-2 must be > 0"),
    ("model.lora.dropout=1.5", "model.lora.dropout=1.5 must be in [0, 1)"),
])
def test_bad_lora_settings_are_one_error_line(override, match, capsys):
    code = cli.run(train_mod.main, TOY + ["model.lora.rank=4", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0]


def test_merge_lora_without_adapters_is_one_error_line(tmp_path, capsys):
    from conversion import hf_to_orbax, orbax_to_hf

    _base(tmp_path / "hf")
    assert cli.run(hf_to_orbax.main, ["--hf-dir", str(tmp_path / "hf"), "--out",
                                      str(tmp_path / "ob"), "--no-progress"]) == 0
    capsys.readouterr()
    code = cli.run(orbax_to_hf.main, ["--ckpt", str(tmp_path / "ob"), "--merge-lora", "--out",
                                      str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no LoRA adapters" in err[0], err


def test_every_training_job_takes_lora_and_refuse_names_them():
    """train_rm reads model.lora (tests/test_train_rm_lora.py trains it); `refuse`, for a job
    without LoRA, names the three that have it."""
    from socialr1_jax.jobs import train_rm
    from socialr1_jax.jobs.train_config import LoraSection
    from socialr1_jax.yaml_config import ConfigError

    assert train_rm.parse_args(["model.lora.rank=4"]).model.lora.spec().rank == 4
    with pytest.raises(ConfigError, match=r"GRPO .*SFT .*reward model \(socialr1_jax.train_rm\), "
                                          "not for a job"):
        LoraSection(rank=4).refuse("a job")


def test_memory_plan_of_a_lora_config():
    """`memory_plan --config` reads the 4B LoRA config as written; a LoRA plan's state is the
    adapters (and their moments) only, the base an argument of the train step."""
    import argparse

    from socialr1_jax.jobs import memory_plan
    from socialr1_jax.jobs.plan_config import settings_from_config

    args = argparse.Namespace(meshes=["1x8x1"], mesh_given=False, devices=1, layers=0)
    (s,) = settings_from_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                             "socialr1_qwen3_4b_lora.yaml"), args)
    assert (s["preset"], s["mesh"], s["prompts"], s["group"], s["completion_len"]) == \
        ("qwen3-4b", "1x1x1", 8, 5, 2048)
    assert (s["micro_batch"], s["remat"], s["lora"].rank, len(s["lora"].targets)) == \
        (1, "full", 16, 7)
    assert s["slots"] == 16  # the config's rollout.slots
    spec = lora.parse_spec(1, 8, "q_proj,v_proj")
    plan = memory_plan.plan(preset="tiny", mesh="1x8x1", prompts=4, group=4, prompt_len=8,
                            completion_len=16, micro_batch=8, param_dtype="bfloat16", lora=spec)
    st, (train, ref, rollout) = plan["state_bytes_per_device"], plan["programs"]
    assert st["params"] < st["reference_params"] / 10  # adapters only
    assert st["master"] == 2 * st["params"]  # their fp32 master copy beside the bf16 adapters
    assert train["arguments"] >= st["train_state_total"] + st["reference_params"]
    assert train["resident_besides"] == 0 and ref["resident_besides"] == st["train_state_total"]
    # The sampler gets base + adapters; the adapters' master copy and moments stay resident.
    assert st["reference_params"] + st["params"] <= rollout["arguments"] <= \
        st["reference_params"] + st["params"] + 1024
    assert rollout["resident_besides"] == st["train_state_total"] - st["params"]


def test_adapters_shard_with_their_layer():
    """A is split along its input dim and B along its output dim as the base weight's dims are
    (PARAM_RULES); the rank axis is replicated; the layer axis stays whole (scanned)."""
    from socialr1_jax.parallel.sharding import path_str

    cfg = preset("tiny").replace(lora=lora.parse_spec(4, 8, "all-linear"))
    _, abstract = build.abstract_state(cfg, make_mesh(1, 4, 2))
    spec = {path_str(p).split("/")[-1]: tuple(x.sharding.spec) + (None,) * 4
            for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    # (base, its output-dim axis, its input-dim axis) in our [out..., in...] layout
    for t, (short, base, a_name, b_name) in lora.TARGETS.items():
        out_axis, in_axis = {"q_lnhd": (1, 3), "k_lkhd": (1, 3), "v_lkhd": (1, 3),
                             "o_ldnh": (1, 2), "gate_lfd": (1, 2), "up_lfd": (1, 2),
                             "down_ldf": (1, 2)}[base]
        a, b = spec[f"{short}_a_{a_name}"], spec[f"{short}_b_{b_name}"]
        assert a[:3] == (None, None, spec[base][in_axis]), t
        assert b[:3] == (None, spec[base][out_axis], None), t
        assert spec[base][in_axis] and spec[base][out_axis]  # both dims are split at all
