"""Supervised fine-tuning on (prompt, response) pairs: a format warm start before GRPO.

    python -m socialr1_jax.sft --config sft.yaml [key=value ...]
    python -m socialr1_jax.sft model.path=/ckpt/Qwen3-4B data.path=pairs.jsonl run.out_dir=out

R1-style recipes start RL from a model that already writes the reasoning format (a "cold
start"); this is that step. The loss is the mean negative log-likelihood of the response tokens
and of the EOS that closes them; prompt tokens are context only. Each JSONL line holds a prompt
and a response (keys configurable); with `data.chat=true` the prompt becomes the user turn of
the tokenizer's chat template, so the response follows `<|im_start|>assistant\\n` exactly as a
sampled completion would.

The update is the trainer's (`train_step.make_update_step`: jitted, sharded over the mesh's batch
axes, state donated, micro-batches accumulated, AdamW, NaN/Inf skipping) with this loss; the
log-probs are `model/logprobs.py`'s chunked ones. The output directory is a checkpoint that
`load_model`, `generate`, `evaluate` and `conversion.orbax_to_hf` read (params, config.json, the
tokenizer files and generation_config.json).

Library: `encode_pairs(...)` -> examples, `train_sft(model, examples, section, optim, ...)` ->
SFTResult (what the GRPO job calls in-process for its warm start), `save_sft(...)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from socialr1_jax import cli
from socialr1_jax.model.logprobs import completion_logprobs
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.train_config import MeshConfig, ModelSection, OptimConfig
from socialr1_jax.yaml_config import load_yaml


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """The warm start's schedule (also the `sft` section of the GRPO job's config).

    steps: optimizer updates (0 = no warm start); batch_size: (prompt, response) pairs per update;
    micro_batch_size: pairs per forward/backward inside an update (0 = the batch); max lengths in
    tokens, with `on_too_long` 'drop' (counted) or 'error'; logprob_chunk: LM-head chunk.
    """

    steps: int = 0
    batch_size: int = 32
    micro_batch_size: int = 0
    max_prompt_len: int = 1024
    max_response_len: int = 1024
    on_too_long: str = "drop"
    logprob_chunk: int = 256
    seed: int = 0
    log_every: int = 25

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"sft.steps={self.steps} must be >= 0")
        for key in ("batch_size", "max_prompt_len", "max_response_len", "logprob_chunk",
                    "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"sft.{key}={getattr(self, key)} must be >= 1")
        if self.micro_batch_size < 0 or (self.micro_batch_size
                                         and self.batch_size % self.micro_batch_size):
            raise ValueError(f"sft.micro_batch_size={self.micro_batch_size} must divide "
                             f"sft.batch_size={self.batch_size}")
        if self.on_too_long not in ("drop", "error"):
            raise ValueError(f"sft.on_too_long={self.on_too_long!r}; expected 'drop' or 'error'")


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """A JSONL file of pairs: `prompt_key` and `response_key` name the fields; `chat` wraps the
    prompt as a user turn of the chat template (else the prompt text is used as written)."""

    path: str = ""
    prompt_key: str = "prompt"
    response_key: str = "response"
    chat: bool = True


@dataclasses.dataclass(frozen=True)
class SFTRunConfig:
    """out_dir: the checkpoint written at the end (required); progress: a tqdm bar on a TTY."""

    out_dir: str = ""
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`python -m socialr1_jax.sft`'s config (YAML + key=value overrides)."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-5))
    sft: SFTSection = dataclasses.field(default_factory=lambda: SFTSection(steps=100))
    data: SFTDataConfig = dataclasses.field(default_factory=SFTDataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: SFTRunConfig = dataclasses.field(default_factory=SFTRunConfig)


# -- data --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Example:
    """One pair as token ids: the (templated) prompt, and the response followed by EOS."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]


def read_pairs(path: str, prompt_key: str = "prompt",
               response_key: str = "response") -> list[tuple[str, str]]:
    """(prompt, response) strings from a JSONL file; errors name the file, line and key."""
    if not os.path.isfile(path):
        raise cli.UsageError(f"data.path={path}: no such file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise cli.UsageError(f"{path}:{n}: not valid JSON ({e})") from None
            for key in (prompt_key, response_key):
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    found = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise cli.UsageError(f"{path}:{n}: no string field {key!r} (found {found})")
            pairs.append((row[prompt_key], row[response_key]))
    if not pairs:
        raise cli.UsageError(f"{path}: no (prompt, response) pairs")
    return pairs


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], *, chat: bool = True,
                 eos_id: Optional[int] = None, max_prompt_len: int = 1024,
                 max_response_len: int = 1024, on_too_long: str = "drop"
                 ) -> tuple[list[Example], int]:
    """Token ids of the pairs, and how many were dropped for being too long (never cut).

    The response gets `eos_id` appended (default: the tokenizer's EOS, <|im_end|> for Qwen3
    chat), so the model learns to stop where a chat reply ends.
    """
    from socialr1_jax.rollout import tokenizer as tk

    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; pass eos_id")
    out, dropped = [], 0
    for i, (prompt, response) in enumerate(pairs):
        p = tk.encode(tokenizer, tk.chat_text(tokenizer, prompt) if chat else prompt)
        r = tk.encode(tokenizer, response) + [int(eos)]
        if len(p) > max_prompt_len or len(r) > max_response_len:
            if on_too_long == "error":
                raise cli.UsageError(f"pair {i}: {len(p)} prompt / {len(r)} response tokens, "
                                     f"more than sft.max_prompt_len={max_prompt_len} / "
                                     f"sft.max_response_len={max_response_len}")
            dropped += 1
            continue
        out.append(Example(tuple(p), tuple(r)))
    return out, dropped


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SFTBatch:
    """Left-padded prompts [B, P] and right-padded responses [B, R] (mask 1 on real tokens)."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    response_ids: jax.Array
    response_mask: jax.Array


def make_batch(examples: Sequence[Example], pad_id: int, *, bucket: bool = True) -> SFTBatch:
    """Pad a list of examples into one SFTBatch (lengths rounded up to a few sizes)."""
    from socialr1_jax.rollout.sampler import bucket as round_up

    p_len = max(len(e.prompt) for e in examples)
    r_len = max(len(e.response) for e in examples)
    if bucket:
        p_len, r_len = round_up(p_len), round_up(r_len)
    b = len(examples)
    pi = np.full((b, p_len), pad_id, np.int32)
    pm = np.zeros((b, p_len), np.int32)
    ri = np.full((b, r_len), pad_id, np.int32)
    rm = np.zeros((b, r_len), np.int32)
    for k, e in enumerate(examples):
        pi[k, p_len - len(e.prompt):] = e.prompt
        pm[k, p_len - len(e.prompt):] = 1
        ri[k, :len(e.response)] = e.response
        rm[k, :len(e.response)] = 1
    return SFTBatch(pi, pm, ri, rm)


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Indices of each step's batch: shuffled epochs over the n examples, deterministic."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(n).tolist())
    flat = np.asarray(order[:steps * batch_size])
    return [flat[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


# -- the update --------------------------------------------------------------------------------

def sft_loss(model, batch: SFTBatch, num_tokens, *, chunk: int = 256):
    """Sum of -log p(response token) over the batch's real response tokens / `num_tokens`
    (the token count of the whole batch, so micro-batch losses add up to the batch mean)."""
    logp = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                               batch.response_mask, chunk=chunk)
    mask = batch.response_mask.astype(jnp.float32)
    nll = -(logp * mask).sum() / num_tokens
    return nll, {"loss": nll, "tokens": mask.sum()}


def make_sft_step(model_cfg, optim_cfg: OptimConfig, mesh=None, *, micro_batch_size: int = 0,
                  total_updates: int = 1, chunk: int = 256) -> ts.MeshFunction:
    """The jitted, donated update `step(state, batch) -> (state, metrics)` of `sft_loss`."""
    shardings = None
    if mesh is not None:
        from socialr1_jax.parallel.sharding import batch_sharding
        two = batch_sharding(mesh, 2)
        shardings = SFTBatch(two, two, two, two)

    def tokens(batch: SFTBatch):
        return jnp.maximum(batch.response_mask.sum(), 1).astype(jnp.float32)

    return ts.make_update_step(
        model_cfg, optim_cfg, mesh, loss=lambda m, b, n: sft_loss(m, b, n, chunk=chunk),
        batch_shardings_=shardings, batch_stats=tokens, micro_batch_size=micro_batch_size,
        total_updates=total_updates)


@dataclasses.dataclass
class SFTResult:
    """The warm-started model and the metrics of each update."""

    model: object
    history: list[dict]

    @property
    def first_loss(self) -> float:
        return self.history[0]["loss"] if self.history else math.nan

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def train_sft(model, examples: Sequence[Example], section: SFTSection, optim: OptimConfig, *,
              pad_id: int, mesh=None, log: Callable[[str], None] = print,
              progress: bool = False) -> SFTResult:
    """`section.steps` updates of `sft_loss` over shuffled batches of `examples`, starting from
    `model` (left unchanged). Returns the new model (same graph, new params) and the metrics."""
    if not examples:
        raise ValueError("no examples to train on")
    cfg = model.cfg
    graphdef, params = nnx.split(model)
    state = ts.init_train_state(params, optim, mesh, total_updates=section.steps)
    step_fn = make_sft_step(cfg, optim, mesh, micro_batch_size=section.micro_batch_size,
                            total_updates=section.steps, chunk=section.logprob_chunk)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=section.steps, desc="SFT", unit="step", file=sys.stderr)
        log = bar.write
    history = []
    t0 = time.perf_counter()
    try:
        for s, idx in enumerate(batch_order(len(examples), section.steps, section.batch_size,
                                            section.seed)):
            batch = make_batch([examples[i] for i in idx], pad_id)
            if mesh is not None:
                from socialr1_jax.parallel.sharding import batch_sharding
                batch = jax.device_put(batch, batch_sharding(mesh, 2))
            state, m = step_fn(state, batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            m.update(step=s, elapsed_s=time.perf_counter() - t0)
            history.append(m)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}")
            if s % section.log_every == 0 or s == section.steps - 1:
                log(f"sft step {s:4d} loss {m['loss']:.4f} |g| {m['grad_norm']:.3f} "
                    f"lr {m['lr']:.2e} tokens {int(m['tokens'])} t {m['elapsed_s']:.1f}s")
    finally:
        if bar is not None:
            bar.close()
    return SFTResult(model=nnx.merge(graphdef, state.params), history=history)


def save_sft(out_dir: str, model, tokenizer, *, step: int, meta: Optional[dict] = None) -> str:
    """Write `model` as a checkpoint `load_model` reads (Orbax params + config.json) with the
    tokenizer files and generation_config.json beside it. Returns the step directory."""
    from socialr1_jax.checkpoint.orbax_io import save_checkpoint
    from socialr1_jax.rollout import tokenizer as tk

    path = save_checkpoint(out_dir, step, nnx.state(model), meta=meta, cfg=model.cfg)
    if jax.process_index() == 0:
        tk.save_tokenizer_files(out_dir, tokenizer)
    return path


# -- the command -------------------------------------------------------------------------------

def load_sft_config(path: Optional[str], overrides: Sequence[str]) -> SFTConfig:
    """SFTConfig from YAML + overrides; a bad key or value is a UsageError naming it."""
    try:
        cfg = load_yaml(SFTConfig, path, list(overrides))
    except (ValueError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None
    if not cfg.data.path:
        raise cli.UsageError("data.path is required: a JSONL file of (prompt, response) pairs")
    if not cfg.run.out_dir:
        raise cli.UsageError("run.out_dir is required: where the warm-started checkpoint goes")
    if cfg.sft.steps < 1:
        raise cli.UsageError(f"sft.steps={cfg.sft.steps}: nothing to train")
    return cfg


def main(argv=None) -> int:
    """Read the config and the pairs, train, write the checkpoint; see the module docstring."""
    p = cli.ArgumentParser(prog="python -m socialr1_jax.sft", description=__doc__,
                           formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections model, optim, sft, data, mesh, run)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. sft.steps=200 optim.lr=1e-5")
    a = p.parse_args(argv)
    cfg = load_sft_config(a.config, a.overrides)
    from socialr1_jax.rl.train import build_mesh, load_policy
    from socialr1_jax.rollout import tokenizer as tk

    tokenizer = tk.run_tokenizer(cfg.model)
    pairs = read_pairs(cfg.data.path, cfg.data.prompt_key, cfg.data.response_key)
    s = cfg.sft
    examples, dropped = encode_pairs(tokenizer, pairs, chat=cfg.data.chat,
                                     max_prompt_len=s.max_prompt_len,
                                     max_response_len=s.max_response_len,
                                     on_too_long=s.on_too_long)
    print(f"{len(examples)} pairs from {cfg.data.path}" + (f" ({dropped} too long, dropped)"
                                                           if dropped else ""))
    if not examples:
        raise cli.UsageError(f"{cfg.data.path}: every pair is longer than the limits")
    mesh = build_mesh(cfg)
    from socialr1_jax.parallel.sharding import batch_shards
    shards = batch_shards(mesh)
    if s.batch_size % shards or (s.micro_batch_size or s.batch_size) % shards:
        raise cli.UsageError(f"sft.batch_size={s.batch_size} (micro_batch_size="
                             f"{s.micro_batch_size}) must be a multiple of the mesh's {shards} "
                             "batch shards (data x fsdp)")
    model = load_policy(cfg, mesh)
    tk.check_vocab(tokenizer, model.cfg.vocab_size)
    result = train_sft(model, examples, s, cfg.optim,
                       pad_id=tk.pad_id(tokenizer, tk.stop_tokens(tokenizer)), mesh=mesh,
                       progress=cfg.run.progress)
    path = save_sft(cfg.run.out_dir, result.model, tokenizer, step=s.steps,
                    meta={"sft_loss_first": result.first_loss, "sft_loss_last": result.last_loss})
    print(f"loss {result.first_loss:.4f} -> {result.last_loss:.4f} over {s.steps} steps; "
          f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
