"""Typed configs: HF config.json parsing and YAML + key=value overrides."""

import dataclasses

import pytest

from socialr1_jax.model.config import from_hf_config, ModelConfig, preset
from socialr1_jax.yaml_config import load_yaml

# The fields of Qwen/Qwen3-4B's config.json as published (older transformers format).
QWEN3_4B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 9728,
    "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_qwen3_4b_config_json_matches_preset():
    cfg = from_hf_config(QWEN3_4B_CONFIG)
    assert cfg == preset("qwen3-4b", param_dtype="bfloat16", dtype="bfloat16")
    assert cfg.num_params() == 4_022_468_096


def test_2507_theta_is_read():
    hf = dict(QWEN3_4B_CONFIG, rope_theta=5_000_000, max_position_embeddings=262144)
    cfg = from_hf_config(hf)
    assert cfg.rope_theta == 5_000_000.0 and cfg.max_position_embeddings == 262144


def test_hf_roundtrip_of_our_config():
    cfg = preset("qwen3-8b")
    assert from_hf_config(cfg.to_hf_config()) == cfg


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 5e-7
    warmup: int = 0


@dataclasses.dataclass(frozen=True)
class Run:
    model: ModelConfig = ModelConfig()
    optim: Optim = Optim()
    name: str = "x"
    eos: tuple[int, ...] = (1,)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_layers: 4\n  dtype: bfloat16\noptim:\n  lr: 1.0e-6\nname: run\n")
    run = load_yaml(Run, path, ["optim.warmup=10", "model.remat=full", "eos=[3,4]"])
    assert run.model.num_layers == 4 and run.model.dtype == "bfloat16"
    assert run.model.remat == "full" and run.optim.lr == 1e-6 and run.optim.warmup == 10
    assert run.eos == (3, 4) and run.name == "run"


def test_unknown_key_and_bad_type_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key optim\.lrr \(did you mean optim\.lr\?\)"):
        load_yaml(Run, None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown config key optimm \(did you mean optim\?\)"):
        load_yaml(Run, None, ["optimm.lr=1"])
    with pytest.raises(ValueError, match=r"optim\.warmup"):
        load_yaml(Run, None, ["optim.warmup=abc"])
    with pytest.raises(ValueError, match="remat"):
        load_yaml(Run, None, ["model.remat=sometimes"])
    with pytest.raises(ValueError, match="config file .*nope.yaml does not exist"):
        load_yaml(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML at line"):
        load_yaml(Run, bad)


def test_config_errors_are_usage_errors():
    """A command prints a ConfigError as one `error:` line (cli.UsageError)."""
    from socialr1_jax.cli import UsageError
    from socialr1_jax.yaml_config import ConfigError

    with pytest.raises(UsageError):
        load_yaml(Run, None, ["optim.warmup=abc"])
    assert issubclass(ConfigError, ValueError)
