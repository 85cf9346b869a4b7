"""A checkpoint's tokenizer, chat template and stop tokens (transformers' tokenizers, offline).

Only the tokenizer is taken from transformers (it wraps the Rust `tokenizers` library); the model
never is. Everything is read from the checkpoint directory, never from the network.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Qwen's chat format (SPEC.md): one `<|im_start|>{role}\n{content}<|im_end|>\n` per turn and the
# generation prompt `<|im_start|>assistant\n`; used when the tokenizer carries no template.
QWEN_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
QWEN_GENERATION_PROMPT = "<|im_start|>assistant\n"


def load_tokenizer(path: str):
    """The tokenizer saved in checkpoint directory `path` (tokenizer.json etc.), offline."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not any(os.path.exists(os.path.join(path, f))
               for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / "
                                "tokenizer_config.json); save the tokenizer with the checkpoint")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def chat_text(tokenizer, user: str) -> str:
    """`user` as a one-turn chat ready for the assistant's answer.

    The tokenizer's own chat template when it has one (Qwen3's, whose default thinking mode
    appends nothing after the generation prompt), else Qwen's format written out.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return QWEN_TURN.format(role="user", content=user) + QWEN_GENERATION_PROMPT


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as written (special-token strings map to their ids, no BOS added)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def stop_ids(path: str, tokenizer=None) -> list[int]:
    """EOS ids: generation_config.json's eos_token_id, else config.json's, else the tokenizer's.

    Returns [] (and says so on stderr) when none of them names one.
    """
    path = os.fspath(path)
    for name in ("generation_config.json", "config.json"):
        f = os.path.join(path, name)
        if os.path.exists(f):
            with open(f) as fh:
                try:
                    ids = _as_list(json.load(fh).get("eos_token_id"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}: not valid JSON ({e})") from None
            if ids:
                return ids
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return [int(tokenizer.eos_token_id)]
    print(f"warning: {path} names no eos_token_id (generation_config.json, config.json, "
          "tokenizer); generation stops only at max_new_tokens", file=sys.stderr)
    return []


def pad_id(tokenizer, eos: list[int]) -> int:
    """The tokenizer's pad id, else the first EOS id, else 0 (pads are masked out anyway)."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return eos[0] if eos else 0
