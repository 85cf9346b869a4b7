"""The SFT job's data: (prompt, response) pairs from JSONL or procedural ToMi traces, encoded
through the chat template and padded into `rl.sft_step.SFTBatch`es in a seeded order."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from socialr1_jax import cli
from socialr1_jax.jobs.train_config import SFTDataSection
from socialr1_jax.rl.sft_step import SFTBatch
from socialr1_jax.social.data import iter_jsonl


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
