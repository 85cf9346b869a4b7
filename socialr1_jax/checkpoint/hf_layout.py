"""The one key-and-layout table between HF Qwen3 safetensors names and our parameter paths.

The loader, both converters and the exporter all go through `layout(cfg)`. Our arrays are HF's
tensors reshaped (never transposed), so both directions are a rename plus a free reshape and
round trips are bitwise exact.
"""

from __future__ import annotations

import dataclasses

from socialr1_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: its HF tensor name and shape, and our path and shape."""

    hf_name: str
    path: str          # "layers/3/attn/q_nhd", as sharding.path_str prints nnx state paths
    shape: tuple       # ours
    hf_shape: tuple    # HF's (same element order)


def layout(cfg: ModelConfig) -> list[Entry]:
    """Every parameter of a Qwen3 model of this config, in checkpoint order."""
    d, n, k, h, f, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    out = [Entry("model.embed_tokens.weight", "embed_vd", (v, d), (v, d))]
    for i in range(cfg.num_layers):
        hf, us = f"model.layers.{i}", f"layers/{i}"
        out += [
            Entry(f"{hf}.input_layernorm.weight", f"{us}/input_norm/scale_d", (d,), (d,)),
            Entry(f"{hf}.self_attn.q_proj.weight", f"{us}/attn/q_nhd", (n, h, d), (n * h, d)),
            Entry(f"{hf}.self_attn.k_proj.weight", f"{us}/attn/k_khd", (k, h, d), (k * h, d)),
            Entry(f"{hf}.self_attn.v_proj.weight", f"{us}/attn/v_khd", (k, h, d), (k * h, d)),
            Entry(f"{hf}.self_attn.o_proj.weight", f"{us}/attn/o_dnh", (d, n, h), (d, n * h)),
            Entry(f"{hf}.self_attn.q_norm.weight", f"{us}/attn/q_norm_scale_h", (h,), (h,)),
            Entry(f"{hf}.self_attn.k_norm.weight", f"{us}/attn/k_norm_scale_h", (h,), (h,)),
            Entry(f"{hf}.post_attention_layernorm.weight", f"{us}/post_norm/scale_d", (d,), (d,)),
            Entry(f"{hf}.mlp.gate_proj.weight", f"{us}/mlp/gate_fd", (f, d), (f, d)),
            Entry(f"{hf}.mlp.up_proj.weight", f"{us}/mlp/up_fd", (f, d), (f, d)),
            Entry(f"{hf}.mlp.down_proj.weight", f"{us}/mlp/down_df", (d, f), (d, f)),
        ]
    out.append(Entry("model.norm.weight", "final_norm/scale_d", (d,), (d,)))
    if not cfg.tie_word_embeddings:
        out.append(Entry("lm_head.weight", "lm_head_vd", (v, d), (v, d)))
    return out


def by_path(cfg: ModelConfig) -> dict[str, Entry]:
    """The table keyed by our parameter path."""
    return {e.path: e for e in layout(cfg)}


def by_hf_name(cfg: ModelConfig) -> dict[str, Entry]:
    """The table keyed by HF tensor name."""
    return {e.hf_name: e for e in layout(cfg)}
