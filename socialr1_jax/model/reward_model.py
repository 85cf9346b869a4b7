"""The reward model: a Qwen3 backbone with a scalar head, as transformers'
`Qwen3ForSequenceClassification` with `num_labels=1` computes it.

    r(ids) = w . h[last]      w: `score_cd` [1, D], HF's `score.weight` (a Linear without bias)
                              h: the backbone's final-norm hidden states [B, T, D]
                              last: per row, the rightmost position whose token is not the pad id

`last` is transformers' rule, which serves left- and right-padded batches alike:
argmax_t (t * [id_t != pad_token_id]) (the first maximum, so a row of pads pools position 0).
It looks at the token ids, not the attention mask: a real token equal to the pad id at the end
of a row is skipped, exactly as transformers skips it. The head runs in fp32 on the pooled
hidden state; the scores are raw, unbounded floats.

The backbone is our `Qwen3` with its config's `tie_word_embeddings` set (`backbone_config`): a
reward model never computes logits, so no `lm_head` weight is allocated or expected (a
`Qwen3ForSequenceClassification` checkpoint has none). Parameters are sharded by the policy's
rules (`parallel.sharding.PARAM_RULES`; the head [1, D] splits its D over fsdp).

With LoRA (`with_lora`; docs/lora.md) the backbone gains adapters (`backbone/lora/...`) and the
model splits three ways (`split_lora`) as PEFT's sequence-classification LoRA does with
`modules_to_save=["score"]`: the trainable part is the adapters plus the whole head, the frozen
part every other backbone weight.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from socialr1_jax.model import build
from socialr1_jax.model.config import ModelConfig
from socialr1_jax.model.qwen3 import Qwen3
from socialr1_jax.parallel.sharding import batch_sharding, check_model_fits_mesh, param_shardings


def backbone_config(cfg: ModelConfig) -> ModelConfig:
    """The backbone's config: `cfg` without an LM head of its own (tied, so nothing is stored)."""
    return cfg if cfg.tie_word_embeddings else cfg.replace(tie_word_embeddings=True)


def last_token_index(input_ids_bt, pad_token_id: int):
    """[B] index of the rightmost non-pad token of each row (transformers' pooling rule)."""
    t = input_ids_bt.shape[-1]
    non_pad_bt = (input_ids_bt != pad_token_id).astype(jnp.int32)
    return jnp.argmax(jnp.arange(t, dtype=jnp.int32) * non_pad_bt, axis=-1)


class RewardModel(nnx.Module):
    """Qwen3 backbone + scalar head. `rm(input_ids, attention_mask)` -> scores [B] fp32.

    Build it fresh (`rngs`: the head drawn like transformers' Linear init, normal(init_std)) or
    from parts (`backbone`, `score_cd`: an existing Qwen3 and a [1, D] array).
    """

    def __init__(self, cfg: ModelConfig, *, pad_token_id: int, rngs: Optional[nnx.Rngs] = None,
                 backbone: Optional[Qwen3] = None, score_cd=None):
        if pad_token_id is None or int(pad_token_id) < 0:
            raise ValueError(f"pad_token_id={pad_token_id!r}: a reward model needs the pad id to "
                             "find each row's last token")
        if int(pad_token_id) >= cfg.vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary of "
                             f"{cfg.vocab_size}")
        self.cfg = backbone_config(cfg)
        self.pad_token_id = int(pad_token_id)
        self.backbone = backbone if backbone is not None else Qwen3(self.cfg, rngs=rngs)
        if score_cd is None:
            score_cd = (cfg.init_std * jax.random.normal(
                rngs.params(), (1, cfg.hidden_size), jnp.float32)).astype(cfg.jnp_param_dtype)
        self.score_cd = nnx.Param(score_cd)

    def __call__(self, input_ids, attention_mask=None):
        """Scores [B] fp32 of a left- or right-padded batch (attention_mask: 1 = token)."""
        hidden_btd, _ = self.backbone.hidden_states(input_ids, attention_mask)
        return self.head(hidden_btd, input_ids)

    def head(self, hidden_btd, input_ids_bt):
        """The score of each row's last non-pad position, from the backbone's hidden states."""
        last_b = last_token_index(input_ids_bt, self.pad_token_id)
        h_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
        w_cd = self.score_cd[...]
        return jnp.einsum("bd,cd->bc", h_bd.astype(jnp.float32), w_cd.astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST)[:, 0]


def abstract_reward_model(cfg: ModelConfig, pad_token_id: int) -> RewardModel:
    """The reward model with ShapeDtypeStruct leaves: nothing allocated."""
    return nnx.eval_shape(lambda: RewardModel(cfg, pad_token_id=pad_token_id, rngs=nnx.Rngs(0)))


def reward_model_shardings(cfg: ModelConfig, pad_token_id: int, mesh: Optional[Mesh]):
    """(graphdef, abstract state, tree of NamedSharding or None) of a reward model on `mesh`."""
    graphdef, abstract = nnx.split(abstract_reward_model(cfg, pad_token_id))
    if mesh is None:
        return graphdef, abstract, None
    check_model_fits_mesh(cfg, mesh)
    return graphdef, abstract, param_shardings(abstract, mesh)


def create_reward_model(cfg: ModelConfig, *, pad_token_id: int, mesh: Optional[Mesh] = None,
                        seed: int = 0) -> RewardModel:
    """A random reward model, its parameters created directly in their shardings."""
    graphdef, _, shardings = reward_model_shardings(cfg, pad_token_id, mesh)

    def init():
        return nnx.state(RewardModel(cfg, pad_token_id=pad_token_id, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())


def from_parts(backbone: Qwen3, score_cd, pad_token_id: int) -> RewardModel:
    """A reward model around an existing (loaded, sharded) backbone and a [1, D] head array.

    The backbone's arrays are reused, not copied; an untied backbone's LM head is dropped."""
    cfg = backbone_config(backbone.cfg)
    graphdef, abstract, _ = reward_model_shardings(cfg, pad_token_id, None)
    params = nnx.to_pure_dict(nnx.state(backbone))
    params.pop("lm_head_vd", None)
    nnx.replace_by_pure_dict(abstract, {"backbone": params, "score_cd": score_cd})
    return nnx.merge(graphdef, abstract)


def make_score_fn(model: RewardModel, mesh: Optional[Mesh] = None):
    """Jitted `fn(params, input_ids, attention_mask) -> scores [B]` for `model`'s graph: on a
    mesh the batch is split over the data axes and the parameters keep their rule shardings.

    Call it with `nnx.state(model)`; the batch must be divisible by the mesh's batch shards.
    """
    graphdef = nnx.graphdef(model)

    def fn(params, input_ids, attention_mask):
        return nnx.merge(graphdef, params)(input_ids, attention_mask)

    if mesh is None:
        return jax.jit(fn)
    pshard = param_shardings(nnx.state(model), mesh)
    jitted = jax.jit(fn, in_shardings=(pshard, batch_sharding(mesh, 2), batch_sharding(mesh, 2)),
                     out_shardings=batch_sharding(mesh, 1))

    def call(params, input_ids, attention_mask):
        # Inside the mesh context the backbone's layer-boundary constraints see the mesh.
        with jax.set_mesh(mesh):
            return jitted(params, input_ids, attention_mask)

    return call


def with_settings(model: RewardModel, **changes) -> RewardModel:
    """The same parameters under other static settings of the backbone config (remat, compute
    dtype); nothing is copied."""
    cfg = model.cfg.replace(**changes)
    if cfg == model.cfg:
        return model
    graphdef, _ = nnx.split(abstract_reward_model(cfg, model.pad_token_id))
    return nnx.merge(graphdef, nnx.state(model))


# The trainable part of an adapted reward model: the backbone's adapters and the whole head.
TRAINABLE = nnx.Any(nnx.PathContains("lora"), nnx.PathContains("score_cd"))


def with_lora(model: RewardModel, spec, *, mesh: Optional[Mesh] = None,
              seed: int = 0) -> RewardModel:
    """`model` with fresh LoRA adapters on its backbone (`build.with_lora`: A drawn from `seed`
    as PEFT draws it, B = 0, so its scores equal `model`'s exactly); no array is copied."""
    backbone = build.with_lora(model.backbone, spec, mesh=mesh, seed=seed)
    return from_parts(backbone, model.score_cd[...], model.pad_token_id)


def split_lora(model: RewardModel):
    """(graphdef, frozen base state, trainable state {'backbone': {'lora'}, 'score_cd'}) of an
    adapted reward model; `nnx.merge(graphdef, base, trainable)` puts it back together."""
    graphdef, trainable, base = nnx.split(model, TRAINABLE, ...)
    return graphdef, base, trainable
