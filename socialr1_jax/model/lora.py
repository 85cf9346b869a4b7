"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the
scanned Qwen3 decoder, initialised and scaled as Hugging Face PEFT's `LoraConfig` does.

A target projection W [out, in] (HF's torch layout, the one our weights keep) gains
A [r, in] and B [out, r]; the layer computes x @ W^T + (alpha / r) * (x @ A^T) @ B^T. The
attention projections apply it unmerged; the MLP (`mlp_weights`) and the sampler's decode loop
(`merged_layer`) fold W + s B A into one layer's copy of the weights. The base arrays are never
changed, so they serve both the frozen reference (adapters off) and the adapted policy. A is drawn as PEFT draws it (torch's
`kaiming_uniform_(a=sqrt(5))`, i.e. U(-1/sqrt(in), 1/sqrt(in))) and B is zero, so an adapted
model at step 0 computes exactly the base model's outputs.

The adapters are stacked on the leading layer axis like the base weights (`Layers.stacked()`):
`lora/q_a_lrd` [L, r, D] and `lora/q_b_ljr` [L, N*H, r] of q_proj, and so on. The decoder's scan
slices them with the layer's own weights, so the layers stay scanned. Their partition rules
(parallel/sharding.py) split A along its input dim and B along its output dim exactly as the
base weight's dims are split; the rank axis is replicated.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx


if TYPE_CHECKING:
    from socialr1_jax.model.config import ModelConfig

# HF module name -> (our short name, the base weight it adapts, letters of A and of B).
TARGETS = {
    "q_proj": ("q", "q_lnhd", "lrd", "ljr"),
    "k_proj": ("k", "k_lkhd", "lrd", "ljr"),
    "v_proj": ("v", "v_lkhd", "lrd", "ljr"),
    "o_proj": ("o", "o_ldnh", "lrj", "ldr"),
    "gate_proj": ("gate", "gate_lfd", "lrd", "lfr"),
    "up_proj": ("up", "up_lfd", "lrd", "lfr"),
    "down_proj": ("down", "down_ldf", "lrf", "ldr"),
}
ALL_LINEAR = "all-linear"
MLP_SHORT = ("gate", "up", "down")
MLP_WEIGHTS = ("gate_lfd", "up_lfd", "down_ldf")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """rank r, alpha (scale = alpha / r, PEFT's default without rsLoRA) and the HF modules
    adapted, in TARGETS order. Built by `parse_spec`, which checks the user's values."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0  # PEFT's lora_dropout: on the adapters' input, in train steps only

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def names(self) -> list[str]:
        """Our parameter names under `lora/`, A then B of each target."""
        out = []
        for t in self.targets:
            short, _, a, b = TARGETS[t]
            out += [f"{short}_a_{a}", f"{short}_b_{b}"]
        return out


def parse_spec(rank, alpha, target_modules, dropout=0.0, *, key: str = "model.lora"):
    """A LoraSpec, or None for rank 0 (off); ValueError naming `key` for bad values.

    target_modules: a list of HF names or 'all-linear' (every projection of a layer; never
    the LM head, as in PEFT). dropout in [0, 1): PEFT's lora_dropout (see `Dropout`).
    """
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"{key}.rank={rank!r} must be an integer (0 = LoRA off)")
    if rank == 0:
        return None
    if rank < 0:
        raise ValueError(f"{key}.rank={rank} must be > 0 (or 0 for LoRA off)")
    if not alpha or float(alpha) <= 0:
        raise ValueError(f"{key}.alpha={alpha!r} must be > 0")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{key}.dropout={dropout} must be in [0, 1)")
    names = target_modules
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names or [])
    if names == [ALL_LINEAR]:
        names = list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise ValueError(f"{key}.target_modules: {unknown[0] if unknown else 'empty'!r} is not a "
                         f"module of Qwen3; valid: {', '.join(TARGETS)} or {ALL_LINEAR}")
    return LoraSpec(int(rank), float(alpha), tuple(t for t in TARGETS if t in names),
                    float(dropout))


def shapes(cfg: "ModelConfig", target: str) -> tuple[tuple, tuple]:
    """(A shape, B shape) of one target, each with the leading layer axis."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out_in = {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
              "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}[target]
    n_l, r = cfg.num_layers, cfg.lora.rank
    return (n_l, r, out_in[1]), (n_l, out_in[0], r)


class Adapters(nnx.Module):
    """Every layer's A and B of each target, stacked on a leading layer axis (see the module
    docstring). One random draw per A whatever the depth; B starts at zero."""

    def __init__(self, cfg: "ModelConfig", *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        spec = cfg.lora
        for t, (a_name, b_name) in zip(spec.targets, zip(spec.names()[::2], spec.names()[1::2])):
            a_shape, b_shape = shapes(cfg, t)
            bound = 1.0 / math.sqrt(a_shape[-1])
            a = jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound)
            setattr(self, a_name, nnx.Param(a.astype(pd)))
            setattr(self, b_name, nnx.Param(jnp.zeros(b_shape, pd)))

    def stacked(self) -> dict[str, jax.Array]:
        """{short_a / short_b: [L, ...] array} of every target, for the layer scan."""
        out = {}
        for name in vars(self):
            v = getattr(self, name)
            if isinstance(v, nnx.Param):
                short, ab = name.split("_")[:2]
                out[f"lora_{short}_{ab}"] = v[...]
        return out


def add(cfg: "ModelConfig", w: dict, short: str, x, y):
    """y + scale * (x @ A^T) @ B^T when layer weights `w` hold an adapter `short`, else y.

    x [B, T, in] is the projection's input, y its base output of any shape with B*T*out
    elements in [B, T, ...] order (per-head q / k / v are reshaped back)."""
    a = w.get(f"lora_{short}_a")
    if a is None:
        return y
    if DROP in w:  # a train step with dropout: PEFT's lora_B(lora_A(dropout(x)))
        x = _dropped(cfg, w[DROP], short, x)
    dt, prec = x.dtype, cfg.precision
    low = jnp.einsum("bti,ri->btr", x, a.astype(dt), precision=prec)
    up = jnp.einsum("btr,or->bto", low, w[f"lora_{short}_b"].astype(dt), precision=prec)
    return y + (cfg.lora.scale * up).astype(y.dtype).reshape(y.shape)


def projected(cfg: "ModelConfig", w: dict, x, proj, short: str, name: str):
    """A q / k / v projection `proj(x, W, precision)` of layer weights `w` plus its adapter."""
    return add(cfg, w, short, x, proj(x, w[name].astype(x.dtype), cfg.precision))


def out_projected(cfg: "ModelConfig", w: dict, x_btj):
    """The attention output projection x @ W_o^T plus its adapter; W_o [D, N, H] is used as
    its free reshape [D, N*H] (see `qwen3._heads_proj`)."""
    o_dnh = w["o_ldnh"].astype(x_btj.dtype)
    o_dj = o_dnh.reshape(o_dnh.shape[0], -1)
    return add(cfg, w, "o", x_btj, jnp.einsum("btj,dj->btd", x_btj, o_dj,
                                              precision=cfg.precision))


def attach(model, cfg: "ModelConfig", rngs: nnx.Rngs) -> None:
    """Give a Qwen3 being built its adapters (`model.lora`) when `cfg.lora` is set."""
    if cfg.lora is not None:
        model.lora = Adapters(cfg, rngs=rngs)


def stacked_weights(model) -> dict:
    """`Layers.stacked()` of a Qwen3 plus its adapters' stacked arrays when it has them, and,
    inside a train step with dropout (`Dropout.wrap`), each layer's dropout keys [L, B, 2]."""
    cfg = model.cfg
    adapters = model.lora.stacked() if cfg.lora is not None else {}
    rows = _ROW_KEYS.get()
    if adapters and cfg.lora.dropout and rows is not None:
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))  # every row's key, one layer
        adapters[DROP] = jax.vmap(lambda i: fold(rows, i))(jnp.arange(cfg.num_layers))
    return {**model.layers.stacked(), **adapters}


# -- dropout (PEFT's lora_dropout) -------------------------------------------------------------

DROP = "lora_drop"  # the layer weights' entry of a train step's dropout keys (one per row)
_ROW_KEYS = contextvars.ContextVar("lora_dropout_row_keys", default=None)


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Dropout on the adapters' input in a train step, as PEFT applies `lora_dropout`:
    y = x W^T + s B A dropout(x); the base path and every forward outside a train step (the
    sampler, old-policy and reference log-probs, evaluation, serving) are never dropped.

    Each row of the batch has its own key, fold_in(fold_in(key(seed), update), row), and each
    layer and target fold their index into it: the masks depend on (seed, update, row) only,
    not on the micro-batch split, and a resumed run (same update counter) draws the same."""

    seed: int = 0

    def wrap(self, step, batch, loss_fn):
        """(batch with its rows' keys, loss_fn(p, that batch's micro-batch)) for
        `train_step.apply_update`: the loss runs its forward with the rows' keys."""
        rows = jax.tree.leaves(batch)[0].shape[0]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))

        def loss(p, mb_keys):
            mb, k = mb_keys
            token = _ROW_KEYS.set(k)  # read at trace time by `stacked_weights`
            try:
                return loss_fn(p, mb)
            finally:
                _ROW_KEYS.reset(token)

        return (batch, keys), loss


def dropout_of(cfg: "ModelConfig", seed: int = 0):
    """A `Dropout` for an adapted config with model.lora.dropout > 0, else None."""
    return Dropout(seed) if cfg.lora is not None and cfg.lora.dropout > 0 else None


def _dropped(cfg: "ModelConfig", keys_b, short: str, x):
    """x [B, T, in] with each element zeroed with probability p and the rest scaled by
    1 / (1 - p) (torch's dropout), row b's mask drawn from keys_b[b] and the target."""
    p, tag = cfg.lora.dropout, list(TARGETS).index(f"{short}_proj")
    keep = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, tag), 1.0 - p,
                                                   x.shape[1:]))(keys_b)
    return jnp.where(keep, x / (1.0 - p), 0).astype(x.dtype)


def mlp(cfg: "ModelConfig", w: dict, h_btd, swiglu):
    """The MLP of layer weights `w` on h_btd, with its adapters: merged into the weights for
    `swiglu` (`mlp_weights`) unless a train step drops the adapters' input (`Dropout`), which
    a merged weight cannot express; the adapters then run unmerged beside the base matmuls."""
    dt, prec = h_btd.dtype, cfg.precision
    gate, up, down = (w[n].astype(dt) for n in MLP_WEIGHTS)
    if DROP not in w or not any(f"lora_{s}_a" in w for s in MLP_SHORT):
        return swiglu(h_btd, *mlp_weights(cfg, w, gate, up, down), prec)
    mm = lambda x, m: jnp.einsum("bti,oi->bto", x, m, precision=prec)  # noqa: E731
    g = add(cfg, w, "gate", h_btd, mm(h_btd, gate))
    u = add(cfg, w, "up", h_btd, mm(h_btd, up))
    act = jax.nn.silu(g) * u
    return add(cfg, w, "down", act, mm(act, down))


def per_layer(cfg: "ModelConfig", stacked: dict) -> list[dict]:
    """Each layer's weights of stacked ones, its adapters merged in (`merged_layer`)."""
    return [merged_layer(cfg, {name: w[i] for name, w in stacked.items()})
            for i in range(cfg.num_layers)]


def mlp_weights(cfg: "ModelConfig", w: dict, gate_fd, up_fd, down_df):
    """The MLP's weights with their adapters folded in, W + scale * B @ A, for one layer.

    The MLP is the one place that merges on the fly: `qwen3.swiglu_mlp`'s hand-written
    backward pass (which XLA:CPU runs much faster than autodiff's) then serves adapted layers
    too, and autodiff carries its weight gradients on to A and B. Inside the layer scan only
    one layer's merged MLP exists at a time. With B = 0 the sum is W exactly."""
    out = []
    for short, base in zip(MLP_SHORT, (gate_fd, up_fd, down_df)):
        a = w.get(f"lora_{short}_a")
        if a is not None:
            b = w[f"lora_{short}_b"].astype(base.dtype)
            base = base + cfg.lora.scale * jnp.einsum("or,ri->oi", b, a.astype(base.dtype),
                                                      precision=cfg.precision)
        out.append(base)
    return out


def merged_layer(cfg: "ModelConfig", w: dict) -> dict:
    """One layer's weights with every adapter folded into its base weight (no lora_* keys).

    What the sampler's decode loop runs (`Qwen3.unstacked_layers`): it takes a per-layer copy of
    the weights anyway, so merging there costs no memory, and a decode step then runs the base
    model's matmuls only (benchmarks/results/lora_bench.md)."""
    if not any(k.startswith("lora_") for k in w):
        return w
    out = {k: v for k, v in w.items() if not k.startswith("lora_")}
    for t in cfg.lora.targets:
        short, name = TARGETS[t][:2]
        out[name] = merged_weight(cfg, t, w[name], w[f"lora_{short}_a"],
                                  w[f"lora_{short}_b"]).astype(w[name].dtype)
    return out


def merged_weight(cfg: "ModelConfig", target: str, base, a, b):
    """W + scale * B @ A of one layer in the base weight's own shape (for exports), in fp32."""
    f32 = jnp.float32
    delta = jnp.einsum("or,ri->oi", b.astype(f32), a.astype(f32),
                       precision=jax.lax.Precision.HIGHEST) * cfg.lora.scale
    return base.astype(f32) + delta.reshape(base.shape)
