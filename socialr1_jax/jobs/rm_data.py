"""The reward-model trainer's config and data: typed sections from YAML, and preference pairs.

Config (`load_rm_config(path, overrides)`, YAML + `key=value` overrides like the GRPO job's):

    model:  path (a reward model to continue, or a causal LM (HF or Orbax) that gets a new
            head), tokenizer ('' = beside model.path), param_dtype / dtype / remat, pad_token_id
            (-1 = the checkpoint's config.json, else the tokenizer's), seed (the new head's draw
            and the adapters'), lora (rank > 0: LoRA adapters over the frozen backbone, the
            head trained whole; docs/lora.md)
    data:   train / eval (JSONL; eval '' = hold out eval_fraction of train), prompt_template
            ('' = rm_prompt.DEFAULT_TEMPLATE), max_length, chosen_key / rejected_key
    optim:  AdamW as the GRPO job's (rl/config.OptimConfig), lr 1e-5 by default
    mesh:   data / fsdp / tensor
    run:    batch_size (pairs per update), micro_batch_size, epochs, steps (0 = the epochs),
            eval_every, out_dir (the GRPO job's run-directory layout: config.yaml,
            metrics.jsonl, eval.jsonl, tensorboard/, checkpoints/), save_every, keep,
            async_save, resume, allow_config_change, export_hf, log_every, progress, seed,
            max_consecutive_skips (stop after this many non-finite updates in a row; 3)

Data: one JSON object per line with the template's fields (`story`, `question`, optionally
`options`, a list) and two reasonings, `chosen` (preferred) and `rejected`:

    {"story": "...", "question": "...", "chosen": "Sally did not see ...", "rejected": "..."}

Every row is checked when the file is read (before a model loads); errors name file:line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from socialr1_jax.jobs.train_config import LoraSection, MeshConfig, OptimConfig
from socialr1_jax.social import rm_prompt
from socialr1_jax.social.data import iter_jsonl
from socialr1_jax.yaml_config import check_at_least, load_yaml


@dataclasses.dataclass(frozen=True)
class RMOptimConfig(OptimConfig):
    """OptimConfig with a reward model's learning rate (full fine-tuning of a 4B backbone)."""

    lr: float = 1e-5


@dataclasses.dataclass(frozen=True)
class RMModelSection:
    """The model to train (see the module docstring)."""

    path: str = ""
    tokenizer: str = ""
    param_dtype: str = ""
    dtype: str = ""
    remat: str = "none"
    pad_token_id: int = -1
    seed: int = 0
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)

    def __post_init__(self):
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"model.remat={self.remat!r}; expected 'none', 'full' or 'dots'")


@dataclasses.dataclass(frozen=True)
class RMDataSection:
    """Preference pairs and how they become tokens."""

    train: str = ""
    eval: str = ""
    eval_fraction: float = 0.1
    prompt_template: str = ""
    max_length: int = 2048
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"

    @property
    def template(self) -> str:
        return self.prompt_template or rm_prompt.DEFAULT_TEMPLATE

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")
        if self.max_length < 8:
            raise ValueError(f"data.max_length={self.max_length} must be >= 8")
        try:
            rm_prompt.template_fields(self.template)
        except ValueError as e:
            raise ValueError(f"data.{e}") from None


@dataclasses.dataclass(frozen=True)
class RMRunSection:
    """The schedule and the outputs."""

    batch_size: int = 16
    micro_batch_size: int = 0
    epochs: int = 1
    steps: int = 0
    eval_every: int = 0
    out_dir: str = ""
    save_every: int = 0
    keep: int = 3
    async_save: bool = True
    resume: bool = False
    allow_config_change: bool = False
    export_hf: str = ""
    log_every: int = 10
    progress: bool = True
    seed: int = 0
    max_consecutive_skips: int = 3  # stop after this many non-finite updates in a row

    def __post_init__(self):
        check_at_least(self, "run", 1, "batch_size", "epochs", "log_every", "keep",
                       "max_consecutive_skips", error=ValueError)
        check_at_least(self, "run", 0, "micro_batch_size", "steps", "eval_every", "save_every",
                       error=ValueError)
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"run.micro_batch_size={self.micro_batch_size} does not divide "
                             f"run.batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True)
class RMTrainConfig:
    """Everything `python -m socialr1_jax.train_rm` needs."""

    model: RMModelSection = dataclasses.field(default_factory=RMModelSection)
    data: RMDataSection = dataclasses.field(default_factory=RMDataSection)
    optim: RMOptimConfig = dataclasses.field(default_factory=RMOptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    run: RMRunSection = dataclasses.field(default_factory=RMRunSection)


def load_rm_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> RMTrainConfig:
    """An RMTrainConfig from YAML `path` (optional) with `key=value` overrides on top."""
    return load_yaml(RMTrainConfig, path, list(overrides))


# ----------------------------------------------------------------------------- pairs
class PairDataError(ValueError):
    """A preference file that cannot be used (names the file and line)."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference: the two texts the model scores (the template filled with each reasoning)."""

    chosen: str
    rejected: str
    id: str


def read_pairs(path: str, data: RMDataSection) -> list[Pair]:
    """The pairs of a JSONL file, every row checked (fields present, strings, distinct)."""
    fields = rm_prompt.template_fields(data.template)
    need = [f for f in fields if f not in ("reasoning", "options")]
    pairs = []
    for where, row in iter_jsonl(path, PairDataError):
        for key in need + [data.chosen_key, data.rejected_key]:
            if not isinstance(row.get(key), str):
                got = "missing" if key not in row else f"a {type(row[key]).__name__}"
                raise PairDataError(f"{where}: field {key!r} must be a string ({got})")
        options = row.get("options", [])
        if "options" in fields and not (isinstance(options, list)
                                        and all(isinstance(o, str) for o in options)):
            raise PairDataError(f"{where}: field 'options' must be a list of strings")
        kw = dict(story=row.get("story", ""), question=row.get("question", ""),
                  options=options)
        chosen = rm_prompt.render(data.template, reasoning=row[data.chosen_key], **kw)
        rejected = rm_prompt.render(data.template, reasoning=row[data.rejected_key], **kw)
        pairs.append(Pair(chosen, rejected, str(row.get("id", where))))
    if not pairs:
        raise PairDataError(f"{path}: no preference pairs (empty file)")
    return pairs


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): a seeded shuffle, `fraction` of the pairs (at least one) held out."""
    if fraction <= 0:
        return pairs, []
    order = np.random.default_rng(seed).permutation(len(pairs))
    k = max(1, int(round(fraction * len(pairs))))
    if k >= len(pairs):
        raise PairDataError(f"data.eval_fraction={fraction} leaves no training pair out of "
                            f"{len(pairs)}")
    return [pairs[i] for i in order[k:]], [pairs[i] for i in order[:k]]


def load_data(data: RMDataSection, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, held-out pairs) as the config says; PairDataError on bad input."""
    if not data.train:
        raise PairDataError("data.train is empty; give the JSONL file of preference pairs")
    if not os.path.isfile(data.train):
        raise PairDataError(f"data.train: {data.train} does not exist")
    if data.eval and not os.path.isfile(data.eval):
        raise PairDataError(f"data.eval: {data.eval} does not exist")
    train = read_pairs(data.train, data)
    if data.eval:
        return train, read_pairs(data.eval, data)
    return split_pairs(train, data.eval_fraction, seed)


@dataclasses.dataclass
class Tokenized:
    """Token lists of the chosen and rejected texts, and how many were cut to max_length."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    truncated: int

    def __len__(self):
        return len(self.chosen)


def tokenize_pairs(encode, pairs: Sequence[Pair], max_length: int) -> Tokenized:
    """Encode both sides of every pair (rm_prompt.encode_texts: the last max_length tokens)."""
    chosen, a = rm_prompt.encode_texts(encode, [p.chosen for p in pairs], max_length)
    rejected, b = rm_prompt.encode_texts(encode, [p.rejected for p in pairs], max_length)
    return Tokenized(chosen, rejected, a + b)


def pair_arrays(data: Tokenized, idx: Sequence[int], pad_id: int,
                max_length: int) -> tuple[np.ndarray, ...]:
    """(chosen_ids, chosen_mask, rejected_ids, rejected_mask) of pairs `idx`, right-padded to one
    length bucket."""
    rows_c = [data.chosen[i] for i in idx]
    rows_r = [data.rejected[i] for i in idx]
    length = rm_prompt.bucket_length(max(len(r) for r in rows_c + rows_r), max_length)
    return (*rm_prompt.pad_rows(rows_c, pad_id, length), *rm_prompt.pad_rows(rows_r, pad_id, length))


def pair_batch_order(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The pair indices of update `step`: epochs of seeded permutations, the last partial batch
    of each epoch dropped (a fixed batch shape)."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size:(k + 1) * batch_size]
