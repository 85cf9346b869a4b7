"""The one key-and-layout table between HF Qwen3 safetensors names and our parameters.

The loader, both converters, the exporter and the checkpoint checks all go through this module.
Our arrays are HF's tensors reshaped (never transposed), and the layers' weights are stacked on a
leading layer axis: HF's `model.layers.{i}.self_attn.q_proj.weight` [N*H, D] is layer i of our
`layers/q_lnhd` [L, N, H, D]. So each HF tensor is one layer slice of one of our arrays (or a
whole one), both directions are a rename, an index and a free reshape, and round trips are
bitwise exact. This is the only place that knows which HF tensor is which slice.
"""

from __future__ import annotations

import dataclasses

from socialr1_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: its name and shape, and where it lies in our parameters.

    `ours[entry.index].reshape(entry.hf_shape)` is the HF tensor, where `ours` is our parameter
    `entry.path`; `entry.shape` is that slice's shape in our layout.
    """

    hf_name: str
    path: str             # our parameter, as sharding.path_str prints nnx state paths
    layer: int | None     # the slice of a stacked (layers/...) parameter, None for a whole one
    shape: tuple          # the slice in our layout
    hf_shape: tuple       # HF's (same element order)

    @property
    def index(self) -> tuple:
        """The index of this tensor in our parameter: (layer,) or () for a whole one."""
        return () if self.layer is None else (self.layer,)


@dataclasses.dataclass(frozen=True)
class Param:
    """One of our parameters: its path, its full shape and the HF tensors it holds in order."""

    path: str
    shape: tuple
    entries: tuple[Entry, ...]

    @property
    def stacked(self) -> bool:
        """True for a layers/... parameter (one HF tensor per layer slice)."""
        return self.entries[0].layer is not None

    def describe(self) -> str:
        """Its HF name(s) for messages: 'model.layers.{0..35}.mlp.gate_proj.weight'."""
        if not self.stacked or len(self.entries) == 1:
            return self.entries[0].hf_name
        first = self.entries[0].hf_name.split(".", 3)  # model, layers, 0, rest
        return f"model.layers.{{0..{len(self.entries) - 1}}}.{first[3]}"


# (HF name inside a layer, our stacked parameter, HF shape, our per-layer shape) as functions of
# the dims d, n, k, h, f; in HF's order within a layer.
def _layer_table(d, n, k, h, f):
    return (
        ("input_layernorm.weight", "input_norm_ld", (d,), (d,)),
        ("self_attn.q_proj.weight", "q_lnhd", (n * h, d), (n, h, d)),
        ("self_attn.k_proj.weight", "k_lkhd", (k * h, d), (k, h, d)),
        ("self_attn.v_proj.weight", "v_lkhd", (k * h, d), (k, h, d)),
        ("self_attn.o_proj.weight", "o_ldnh", (d, n * h), (d, n, h)),
        ("self_attn.q_norm.weight", "q_norm_lh", (h,), (h,)),
        ("self_attn.k_norm.weight", "k_norm_lh", (h,), (h,)),
        ("post_attention_layernorm.weight", "post_norm_ld", (d,), (d,)),
        ("mlp.gate_proj.weight", "gate_lfd", (f, d), (f, d)),
        ("mlp.up_proj.weight", "up_lfd", (f, d), (f, d)),
        ("mlp.down_proj.weight", "down_ldf", (d, f), (d, f)),
    )


def layout(cfg: ModelConfig) -> list[Entry]:
    """Every HF tensor of a Qwen3 model of this config, in checkpoint order."""
    d, n, k, h, f, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    out = [Entry("model.embed_tokens.weight", "embed_vd", None, (v, d), (v, d))]
    table = _layer_table(d, n, k, h, f)
    for i in range(cfg.num_layers):
        out += [Entry(f"model.layers.{i}.{name}", f"layers/{ours}", i, shape, hf_shape)
                for name, ours, hf_shape, shape in table]
    out.append(Entry("model.norm.weight", "final_norm_d", None, (d,), (d,)))
    if not cfg.tie_word_embeddings:
        out.append(Entry("lm_head.weight", "lm_head_vd", None, (v, d), (v, d)))
    return out


def params(cfg: ModelConfig) -> dict[str, Param]:
    """Our parameters keyed by path, each with its full (stacked) shape and its HF tensors."""
    groups: dict[str, list[Entry]] = {}
    for e in layout(cfg):
        groups.setdefault(e.path, []).append(e)
    return {path: Param(path, ((len(es),) if es[0].layer is not None else ()) + es[0].shape,
                        tuple(es))
            for path, es in groups.items()}


def by_hf_name(cfg: ModelConfig) -> dict[str, Entry]:
    """The HF tensors keyed by HF name."""
    return {e.hf_name: e for e in layout(cfg)}
