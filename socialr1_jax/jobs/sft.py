"""Supervised fine-tuning on (prompt, response) pairs: a format warm start before GRPO.

    python -m socialr1_jax.sft --config sft.yaml [key=value ...]
    python -m socialr1_jax.sft model.path=/ckpt/Qwen3-4B sft.data.path=pairs.jsonl \\
        sft.steps=200 sft.optim.lr=1e-5 run.out_dir=out

R1-style recipes start RL from a model that already writes the reasoning format (a "cold
start"); this is that step. The loss is the mean negative log-likelihood of the response tokens
and of the EOS that closes them; prompt tokens are context only. Each JSONL line holds a prompt
and a response (keys `sft.data.prompt_key` / `sft.data.response_key`); with `sft.data.chat=true`
(the default) the prompt becomes the user turn of the tokenizer's chat template, so the
response follows `<|im_start|>assistant\\n` exactly as a sampled completion would.

The update is the trainer's (`train_step.apply_update`: jitted, sharded over the mesh's batch
axes, state donated, micro-batches accumulated, AdamW, NaN/Inf skipping) with this loss; the
log-probs are `model/logprobs.py`'s chunked ones. The output directory is a checkpoint that
`load_model`, `generate`, `evaluate` and `conversion.orbax_to_hf` read (params, config.json, the
tokenizer files and generation_config.json).

Library: `encode_pairs(...)` -> examples, `train_sft(model, examples, cfg, optim, ...)` ->
SFTResult, `warm_start(model, tokenizer, cfg.sft, ...)` (what the GRPO job calls in-process before
its first step; `sft.data.path=tomi` generates ToMi traces), `save_sft(...)`.
"""

from __future__ import annotations

import dataclasses
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
from socialr1_jax.rl.optimizer import make_optimizer
from socialr1_jax.jobs import run_dir
from socialr1_jax.jobs.console import Console
from socialr1_jax.jobs.train_config import (MeshConfig, ModelSection, OptimConfig, SFTDataSection,
                                           SFTSection)
from socialr1_jax.social.data import iter_jsonl
from socialr1_jax.yaml_config import load_yaml


@dataclasses.dataclass(frozen=True)
class SFTRunSection:
    """out_dir: the checkpoint written at the end (required); progress: a tqdm bar on a TTY."""

    out_dir: str = ""
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`python -m socialr1_jax.sft`'s config (YAML + key=value overrides): the same `sft`
    section as the GRPO job's warm start (steps, batch, lengths, `sft.optim`, `sft.data`)."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: SFTRunSection = dataclasses.field(default_factory=SFTRunSection)

    def __post_init__(self):
        self.model.lora.refuse("the sft job")


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
        raise cli.UsageError(f"sft.data.path={path}: no such file")
    pairs = []
    for where, row in iter_jsonl(path, cli.UsageError):
        for key in (prompt_key, response_key):
            if not isinstance(row.get(key), str):
                raise cli.UsageError(f"{where}: no string field {key!r} (found {sorted(row)})")
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


def make_batch(examples: Sequence[Example], pad_id: int, *, multiple: int = 16) -> SFTBatch:
    """Pad a list of examples into one SFTBatch, lengths rounded up to a multiple of `multiple`
    (a few compiled shapes, little padding)."""
    p_len = -(-max(len(e.prompt) for e in examples) // multiple) * multiple
    r_len = -(-max(len(e.response) for e in examples) // multiple) * multiple
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


def sft_batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
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
    """The jitted, donated update `step(state, batch) -> (state, metrics)` of `sft_loss`, through
    the GRPO step's `apply_update` (micro-batch accumulation, clipping + AdamW, NaN skipping)."""
    from socialr1_jax.model import build

    graphdef, abstract_params = build.abstract_state(model_cfg, mesh)
    optimizer, schedule = make_optimizer(optim_cfg, total_updates)
    ts.check_micro_batch(micro_batch_size, mesh, "sft.micro_batch_size")

    def step(state: ts.TrainState, batch: SFTBatch):
        # the token count of the whole batch, so the micro-batch losses add up to its mean
        tokens = jnp.maximum(batch.response_mask.sum(), 1).astype(jnp.float32)

        def loss_fn(p, mb):
            return sft_loss(nnx.merge(graphdef, p), mb, tokens, chunk=chunk)

        return ts.apply_update(state, batch, loss_fn, optimizer, schedule,
                               micro_batch_size=micro_batch_size,
                               compute_dtype=model_cfg.jnp_param_dtype)

    return ts.jit_update(step, mesh, abstract_params, optim_cfg, SFTBatch,
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
              progress: bool = False, on_step: Optional[Callable[[int, object], None]] = None,
              stop=None) -> SFTResult:
    """`section.steps` updates of `sft_loss` over shuffled batches of `examples`, starting from
    `model` (left unchanged). Returns the new model (same graph, new params) and the metrics.
    on_step(steps_done, params): after each update (snapshots, hooks). stop: a StopSignals
    polled after each update; when it fired, the updates done so far are returned."""
    if not examples:
        raise ValueError("no examples to train on")
    cfg = model.cfg
    graphdef, params = nnx.split(model)
    state = ts.init_train_state(params, optim, mesh, total_updates=section.steps)
    step_fn = make_sft_step(cfg, optim, mesh, micro_batch_size=section.micro_batch_size,
                            total_updates=section.steps, chunk=section.logprob_chunk)
    console = Console(section.steps, log_every=section.log_every, progress=progress,
                      log=None if log is print else log,
                      desc="SFT", line=sft_line, postfix=lambda m: {"loss": f"{m['loss']:.3f}"})
    history = []
    t0 = time.perf_counter()
    try:
        for s, idx in enumerate(sft_batch_order(len(examples), section.steps,
                                                section.batch_size, section.seed)):
            batch = make_batch([examples[i] for i in idx], pad_id)
            if mesh is not None:
                from socialr1_jax.parallel.sharding import batch_sharding
                batch = jax.device_put(batch, batch_sharding(mesh, 2))
            state, m = step_fn(state, batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            m.update(step=s, elapsed_s=time.perf_counter() - t0)
            history.append(m)
            console.step(s, m)
            if on_step is not None:
                on_step(s + 1, state.params)
            if stop is not None and stop.requested():
                break
    finally:
        console.close()
    return SFTResult(model=nnx.merge(graphdef, state.params), history=history)


def sft_line(step: int, steps: int, m: dict) -> str:
    """One console line of an SFT step."""
    return (f"sft step {step:4d} loss {m['loss']:.4f} |g| {m['grad_norm']:.3f} "
            f"lr {m['lr']:.2e} tokens {int(m['tokens'])} t {m['elapsed_s']:.1f}s")


def save_sft(out_dir: str, model, tokenizer, *, step: int, meta: Optional[dict] = None) -> str:
    """Write `model` as a checkpoint `load_model` reads (Orbax params + config.json) with the
    tokenizer files and generation_config.json beside it. Returns the step directory."""
    from socialr1_jax.checkpoint.orbax_io import save_checkpoint
    from socialr1_jax.rollout import tokenizer as tk

    path = save_checkpoint(out_dir, step, nnx.state(model), meta=meta, cfg=model.cfg)
    if jax.process_index() == 0:
        tk.save_tokenizer_files(out_dir, tokenizer)
    return path


# -- the warm start of a GRPO run -------------------------------------------------------------

def warm_start_pairs(data: SFTDataSection, prompt_cfg=None) -> tuple[list[tuple[str, str]], str]:
    """The (prompt, response) strings of `data` and where they came from: a JSONL file, or
    'tomi' (procedural stories of the training split with their Social-R1 traces, each prompt
    the user message of `prompt_cfg`'s layout, the prompt module's default when None)."""
    if data.path != "tomi":
        return read_pairs(data.path, data.prompt_key, data.response_key), data.path
    from socialr1_jax.social import stories
    from socialr1_jax.social.data import as_row
    from socialr1_jax.social.prompts import PromptConfig, user_message

    prompt_cfg = prompt_cfg or PromptConfig()
    if prompt_cfg.shuffle:
        raise cli.UsageError("sft.data.path=tomi writes the options in the trace's order; "
                             "set the prompt's shuffle=false")
    rows = stories.generate(data.rows, seed=data.seed, split="train", traces=True,
                            random_belief=data.random_belief)
    pairs = [(user_message(as_row(r), prompt_cfg), r["trace"]) for r in rows]
    what = (f"{data.rows} ToMi traces (seed {data.seed}"
            + (", false-belief answers left to chance)" if data.random_belief else ")"))
    return pairs, what


def warm_start(model, tokenizer, cfg: SFTSection, *, mesh=None, prompt_cfg=None,
               log: Callable[[str], None] = print, progress: bool = False,
               stop=None) -> SFTResult:
    """Run the `sft` section on `model` (the GRPO job's cold start): read or generate the pairs,
    encode them, `cfg.steps` updates. Errors in the data are UsageErrors naming the key."""
    from socialr1_jax.rollout import tokenizer as tk

    pairs, what = warm_start_pairs(cfg.data, prompt_cfg)
    examples, dropped = encode_pairs(tokenizer, pairs, chat=cfg.data.chat,
                                     max_prompt_len=cfg.max_prompt_len,
                                     max_response_len=cfg.max_response_len,
                                     on_too_long=cfg.on_too_long)
    log(f"warm start: {len(examples)} pairs from {what}"
        + (f" ({dropped} too long, dropped)" if dropped else ""))
    if not examples:
        raise cli.UsageError(f"sft.data.path={cfg.data.path}: every pair is longer than "
                             f"sft.max_prompt_len / sft.max_response_len")
    return train_sft(model, examples, cfg, cfg.optim,
                     pad_id=tk.pad_id(tokenizer, tk.stop_tokens(tokenizer)), mesh=mesh, log=log,
                     progress=progress, stop=stop)


WARM_START_DIR = "warm_start"  # RUN/warm_start: the warm-started checkpoint of a GRPO run


def warm_start_stage(model, tokenizer, cfg: SFTSection, *, mesh=None, prompt_cfg=None,
                     out_dir: str = "", log: Callable[[str], None] = print,
                     progress: bool = False, meta: Optional[dict] = None, stop=None):
    """The GRPO job's cold start: `warm_start` on `model`, saved to OUT/warm_start, or, when that
    checkpoint exists (a resumed run), loaded from it so that the resumed GRPO keeps the same
    reference model. Returns (model, SFTResult or None when loaded).

    A stop signal (`stop`) ends the warm start early: the steps done are saved as
    OUT/warm_start/<steps done>, and a resume, finding fewer than cfg.steps there, runs the
    warm start again from the start (its data order and initialisation are seeded, so the
    result is the uninterrupted one's)."""
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.checkpoint.orbax_io import list_steps

    root = os.path.join(out_dir, WARM_START_DIR) if out_dir else ""
    steps = list_steps(root) if root and os.path.isdir(root) else []
    if steps and steps[-1] >= cfg.steps:
        loaded = load_model(root, mesh=mesh)
        log(f"warm start: loaded {root} (step {steps[-1]})")
        return nnx.merge(nnx.graphdef(model), nnx.state(loaded)), None
    if steps:
        log(f"warm start: {root} holds {steps[-1]} of {cfg.steps} steps (stopped); running it "
            "again from the start")
    res = warm_start(model, tokenizer, cfg, mesh=mesh, prompt_cfg=prompt_cfg, log=log,
                     progress=progress, stop=stop)
    if root and res.history:
        done = len(res.history)
        save_sft(root, res.model, tokenizer, step=done,
                 meta={"loss_first": res.first_loss, "loss_last": res.last_loss,
                       "steps_done": done, "complete": done == cfg.steps, **(meta or {})})
    return res.model, res


def check_batch_fits_mesh(cfg: SFTSection, mesh) -> None:
    """Refuse a batch (or micro-batch) that does not split over the mesh's batch shards."""
    from socialr1_jax.parallel.sharding import batch_shards

    shards = batch_shards(mesh)
    if cfg.batch_size % shards or (cfg.micro_batch_size or cfg.batch_size) % shards:
        raise cli.UsageError(f"sft.batch_size={cfg.batch_size} (micro_batch_size="
                             f"{cfg.micro_batch_size}) must be a multiple of the mesh's {shards} "
                             "batch shards (data x fsdp)")


# -- the command -------------------------------------------------------------------------------

def load_sft_config(path: Optional[str], overrides: Sequence[str]) -> SFTConfig:
    """SFTConfig from YAML + overrides; a bad key or value is a UsageError naming it."""
    try:
        cfg = load_yaml(SFTConfig, path, list(overrides))
    except (ValueError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None
    if cfg.sft.steps < 1:
        raise cli.UsageError(f"sft.steps={cfg.sft.steps}: nothing to train")
    if not cfg.sft.data.path:
        raise cli.UsageError("sft.data.path is required: a JSONL file of (prompt, response) "
                             "pairs, or 'tomi'")
    if not cfg.run.out_dir:
        raise cli.UsageError("run.out_dir is required: where the warm-started checkpoint goes")
    return cfg


def check_out_dir(cfg: SFTConfig) -> None:
    """Refuse a run.out_dir that holds anything already (a rerun would put its step beside the
    old ones, and loaders pick the newest), or that is, holds or lies in an input folder."""
    run_dir.check_outside_inputs(cfg.run.out_dir, {
        "model.path": cfg.model.path,
        "model.tokenizer": "" if cfg.model.tokenizer == "demo" else cfg.model.tokenizer})
    out = cfg.run.out_dir
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise cli.UsageError(f"run.out_dir={cfg.run.out_dir} is a file, not a directory")
        if os.listdir(out):
            raise cli.UsageError(f"run.out_dir={cfg.run.out_dir} is not empty; choose a new "
                                 "folder (sft writes a whole checkpoint)")
    run_dir.check_writable(cfg.run.out_dir)


def main(argv=None) -> int:
    """Read the config and the pairs, train, write the checkpoint; see the module docstring.
    SIGTERM / Ctrl-C save the updates done so far and exit with 143 / 130."""
    import argparse

    from socialr1_jax.jobs.preemption import StopSignals
    from socialr1_jax.jobs.setup import (build_mesh, check_mesh_fits_model, load_policy,
                                         run_tokenizer)
    from socialr1_jax.rollout import tokenizer as tk

    p = cli.ArgumentParser(prog="python -m socialr1_jax.sft", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections model, sft, mesh, run)")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. sft.steps=200 sft.optim.lr=1e-5 sft.data.path=x.jsonl")
    a = p.parse_args(argv)
    cfg = load_sft_config(a.config, a.overrides)
    with StopSignals(notify=print) as stop:
        check_out_dir(cfg)
        tokenizer = run_tokenizer(cfg.model)
        warm_start_pairs(cfg.sft.data)  # a missing or bad file fails before any model is built
        mesh = build_mesh(cfg)
        check_mesh_fits_model(cfg)
        check_batch_fits_mesh(cfg.sft, mesh)
        model = load_policy(cfg, mesh)
        tk.check_vocab(tokenizer, model.cfg.vocab_size)
        result = warm_start(model, tokenizer, cfg.sft, mesh=mesh, progress=cfg.run.progress,
                            stop=stop)
        done = len(result.history)
        if not done:
            print(f"stopped by {stop.name} before the first step; nothing written")
            return stop.exit_code
        path = save_sft(cfg.run.out_dir, result.model, tokenizer, step=done,
                        meta={"sft_loss_first": result.first_loss,
                              "sft_loss_last": result.last_loss, "steps_done": done})
    print(f"loss {result.first_loss:.4f} -> {result.last_loss:.4f} over {done} steps; "
          f"checkpoint: {path}")
    if stop.signum is not None:
        print(f"stopped by {stop.name} after {done} of {cfg.sft.steps} steps")
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
