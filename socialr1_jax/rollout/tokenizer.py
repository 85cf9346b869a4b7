"""A checkpoint's tokenizer, chat template and stop tokens (transformers' tokenizers, offline).

Only the tokenizer is taken from transformers (it wraps the Rust `tokenizers` library); the model
never is. Everything is read from the checkpoint directory, never from the network.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

# Qwen's chat format (Qwen3's tokenizer_config.json): one
# `<|im_start|>{role}\n{content}<|im_end|>\n` per turn and the generation prompt
# `<|im_start|>assistant\n`; used when the tokenizer carries no template.
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


# -- the offline demo tokenizer ----------------------------------------------------------------

# Qwen3's special tokens and their roles: <|endoftext|> pads (and ends documents), <|im_start|> /
# <|im_end|> open and close a chat turn (<|im_end|> is the EOS of a chat reply), <think> and
# </think> bracket the reasoning. As in Qwen3, the three chat specials are `special` (dropped by
# decode(skip_special_tokens=True)) while <think>/</think> are ordinary added tokens (kept).
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_THINK_TOKENS = ("<think>", "</think>")
# The Social-R1 answer tags, one token each in the demo vocabulary (Qwen3 spells them in pieces).
ANSWER_TOKENS = ("<Answer>", "</Answer>")

# Qwen3's chat format, thinking mode (the model opens <think> itself); `enable_thinking=False`
# appends the empty think block Qwen3 adds in non-thinking mode. Written for the demo tokenizer,
# it renders the same text as Qwen3's template for system / user / assistant turns.
DEMO_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\n\n</think>\n\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def build_demo_tokenizer(words: list[str]):
    """A small byte-level tokenizer built offline with `tokenizers`: whole-word tokens for
    `words` (each with and without a leading space), the 256 byte symbols as the fallback for
    anything else (so every text round-trips), Qwen3's special tokens, the answer tags and
    Qwen3's chat template. Returns a transformers `PreTrainedTokenizerFast`.

    Pre-tokenization is GPT-2/Qwen byte-level (a space joins the word after it); the BPE model
    has no merges and `ignore_merges`, so a piece is one token when it is a known word and its
    bytes otherwise.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    pieces = set()
    for w in words:
        for form in (w, " " + w):
            pieces.update(p for p, _ in byte_level.pre_tokenize_str(form))
    pieces.add(byte_level.pre_tokenize_str("\n\n")[0][0])
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False)
                    for s in QWEN_THINK_TOKENS + ANSWER_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = DEMO_CHAT_TEMPLATE
    return fast


def stop_tokens(tokenizer) -> list[int]:
    """Qwen3's stop ids for a chat reply when the tokenizer has them (<|im_end|>, then
    <|endoftext|>), else the tokenizer's EOS."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
           if t in tokenizer.get_vocab()]
    return ids or _as_list(tokenizer.eos_token_id)


def save_tokenizer_files(out_dir: str, tokenizer, eos_ids: Optional[list[int]] = None) -> str:
    """Write the tokenizer (tokenizer.json, tokenizer_config.json, chat template) to `out_dir`
    and, unless one is there, a generation_config.json naming the stop ids (default
    `stop_tokens`), as a real checkpoint has them. Returns `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    gen = os.path.join(out_dir, "generation_config.json")
    if not os.path.exists(gen):
        eos = list(eos_ids) if eos_ids else stop_tokens(tokenizer)
        tmp = f"{gen}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"eos_token_id": eos, "pad_token_id": pad_id(tokenizer, eos)}, f, indent=2)
        os.replace(tmp, gen)
    return out_dir


def check_vocab(tokenizer, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding rows."""
    from socialr1_jax.cli import UsageError

    if len(tokenizer) > vocab_size:
        raise UsageError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                         f"has {vocab_size} rows (model.vocab_size)")
