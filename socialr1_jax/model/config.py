"""The Qwen3 model config: its fields, the named presets, and reading a transformers config.json.

A frozen dataclass; YAML loading with `key=value` overrides is `socialr1_jax.yaml_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

DTYPES = {
    "float32": jnp.float32, "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
    "float16": jnp.float16, "fp16": jnp.float16,
}


def parse_dtype(name: str | Any) -> Any:
    """Map 'bf16' / 'bfloat16' / 'fp32' / a jnp dtype to a jnp dtype; refuse anything else."""
    if not isinstance(name, str):
        return jnp.dtype(name).type
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def dtype_name(dtype: Any) -> str:
    """Canonical name ('float32', 'bfloat16', ...) of a dtype."""
    return jnp.dtype(dtype).name


MATMUL_PRECISIONS = ("", "default", "high", "highest")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a dense Qwen3 decoder.

    `param_dtype` is how weights are stored, `dtype` what matmuls run in: bf16/bf16 on accelerators,
    fp32/fp32 on CPU. `remat` is the per-layer rematerialisation policy used in training
    ('none', 'full': recompute the whole layer, 'dots': keep matmul outputs, recompute the rest).
    `matmul_precision` is the precision of every matmul of the model ('default', 'high',
    'highest', as `jax.lax.Precision`); '' picks by `dtype`: 'highest' for float32 (otherwise
    GPUs and TPUs multiply fp32 operands in reduced precision, and fp32 logits differ from
    torch's by ~1e-2), 'default' for bf16 / fp16 (their operands are exact either way).
    `decode_attention` is how a decode step attends over the KV cache: 'einsum' (dots that read
    the cache in its own dtype: accelerators), 'reduce' (fp32 multiply-reduces: faster on
    XLA:CPU) or 'auto' (by `jax.default_backend()` where the program is traced).
    """

    vocab_size: int = 151936
    hidden_size: int = 2560
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 9728
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 40960
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    init_std: float = 0.02
    matmul_precision: str = ""
    decode_attention: str = "auto"
    lora: Optional[Any] = None  # a model.lora.LoraSpec: adapters on the layers (None = off)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat={self.remat!r}; expected 'none', 'full' or 'dots'")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision={self.matmul_precision!r}; expected one of "
                             f"{MATMUL_PRECISIONS} ('' = by dtype)")
        if self.decode_attention not in ("auto", "einsum", "reduce"):
            raise ValueError(f"decode_attention={self.decode_attention!r}; expected 'auto', "
                             "'einsum' or 'reduce'")
        parse_dtype(self.param_dtype)
        parse_dtype(self.dtype)

    @property
    def jnp_dtype(self):
        return parse_dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return parse_dtype(self.param_dtype)

    @property
    def resolved_matmul_precision(self) -> str:
        """`matmul_precision`, or the default of the compute dtype when it is ''."""
        if self.matmul_precision:
            return self.matmul_precision
        return "highest" if jnp.dtype(self.jnp_dtype) == jnp.float32 else "default"

    @property
    def decode_by_reduce(self) -> bool:
        """Whether decode attention runs as multiply-reduces (`decode_attention`)."""
        if self.decode_attention == "auto":
            return jax.default_backend() == "cpu"
        return self.decode_attention == "reduce"

    @property
    def precision(self) -> jax.lax.Precision:
        """The `precision=` every matmul of the model passes."""
        return jax.lax.Precision(self.resolved_matmul_precision)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count computed from the shapes (the tests check it against the model)."""
        d, h, f = self.hidden_size, self.head_dim, self.intermediate_size
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads) + 2 * h
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head

    def to_hf_config(self) -> dict:
        """The config.json fields transformers' Qwen3Config reads."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "torch_dtype": dtype_name(self.param_dtype),
        }


# Numbers from the Qwen3 model cards / config.json files (Qwen/Qwen3-* on the Hugging Face hub).
PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                              intermediate_size=3072, tie_word_embeddings=True),
    "qwen3-1.7b": ModelConfig(hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8,
                              intermediate_size=6144, tie_word_embeddings=True),
    "qwen3-4b": ModelConfig(hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8,
                            intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": ModelConfig(hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8,
                            intermediate_size=12288, tie_word_embeddings=False),
    # Tests and the CPU demo: every code path of the big models (GQA ratio 2, QK-norm, tied head).
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, intermediate_size=128, rope_theta=10_000.0,
                        max_position_embeddings=2048, tie_word_embeddings=True),
    # The ~100M benchmark model of the sampler and GRPO issues (real vocabulary).
    "bench-100m": ModelConfig(vocab_size=151936, hidden_size=512, num_layers=8, num_heads=8,
                              num_kv_heads=4, head_dim=64, intermediate_size=1536,
                              tie_word_embeddings=True),
}


def preset(name: str, **changes) -> ModelConfig:
    """A named preset ('qwen3-4b', 'tiny', ...; any case) with optional field changes."""
    import difflib

    by_lower = {k.lower(): k for k in PRESETS}
    key = by_lower.get(str(name).lower())  # 'Qwen3-4B' as written on the model card
    if key is None:
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
        hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
        raise ValueError(f"unknown model preset {name!r}{hint} (known: {sorted(PRESETS)})")
    base = PRESETS[key]
    return base.replace(**changes) if changes else base


def _rope_theta(hf: dict, where: str) -> float:
    scaling = hf.get("rope_scaling")
    if scaling not in (None, {}):
        rtype = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if rtype not in (None, "default"):
            raise ValueError(f"{where}: rope_scaling={scaling!r} is not implemented; only plain RoPE is")
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        rtype = params.get("rope_type", params.get("type", "default"))
        if rtype not in (None, "default"):
            raise ValueError(f"{where}: rope_parameters.rope_type={rtype!r} (RoPE scaling) is not "
                             "implemented; only plain RoPE is")
        if "rope_theta" in params:
            return float(params["rope_theta"])
    if "rope_theta" not in hf:
        raise ValueError(f"{where}: no rope_theta (nor rope_parameters.rope_theta); refusing to guess")
    return float(hf["rope_theta"])


def from_hf_config(hf: dict | str | os.PathLike, *, where: str | None = None,
                   param_dtype: str | None = None, dtype: str | None = None) -> ModelConfig:
    """Build a ModelConfig from a transformers Qwen3 `config.json` (a dict, a file or a directory).

    Anything that would change the math and is not implemented (MoE, RoPE scaling, sliding window,
    attention bias, another activation) raises ValueError naming the file and the field.
    """
    if not isinstance(hf, dict):
        path = os.fspath(hf)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        where = where or path
        try:
            with open(path) as f:
                hf = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    where = where or "config.json"

    mtype = hf.get("model_type")
    if mtype != "qwen3":
        raise ValueError(f"{where}: model_type={mtype!r}; only dense 'qwen3' is implemented "
                         "(qwen3_moe and others are refused)")
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        if hf.get(key):
            raise ValueError(f"{where}: {key}={hf[key]!r} (mixture of experts) is not implemented")
    if hf.get("attention_bias"):
        raise ValueError(f"{where}: attention_bias=true is not implemented (Qwen3 has none)")
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise ValueError(f"{where}: sliding-window attention (use_sliding_window / layer_types) "
                         "is not implemented")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act={act!r}; only 'silu' (SwiGLU) is implemented")

    required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"]
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    for key in required + ["num_key_value_heads", "head_dim", "max_position_embeddings"]:
        v = hf.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{where}: {key}={v!r} must be a positive integer")
    heads = int(hf["num_attention_heads"])
    weights_dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    pdt = param_dtype or ("bfloat16" if weights_dtype == "bfloat16" else "float32")
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        intermediate_size=int(hf["intermediate_size"]),
        rope_theta=_rope_theta(hf, where),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 40960)),
        param_dtype=dtype_name(parse_dtype(pdt)),
        dtype=dtype_name(parse_dtype(dtype or pdt)),
    )
