"""What the content reward model reads: one text per (story, question, reasoning), its tokens,
and the padded batches they are scored in. Shared by the `model` judge and `train_rm`, so a
model is scored on exactly the layout it was trained on.

The text is `template.format(story=..., question=..., options=..., reasoning=...)`. The default
lays the item out as one chat exchange in Qwen's format: the story and question as the user
turn, the reasoning as the assistant's answer:

    <|im_start|>user
    Story:
    {story}

    Question:
    {question}<|im_end|>
    <|im_start|>assistant
    {reasoning}<|im_end|>

so the score is read at the closing `<|im_end|>`. `{options}` (the lettered options, one per
line, "A. ...") may be used too; literal braces are written `{{` `}}`. Special-token strings in
the template map to their ids (the tokenizer's own rule); no BOS is added.

Too long a text keeps its LAST `max_length` tokens: the reasoning and the token the score is read
at survive, the start of the story is dropped; such items are counted (`truncated`).
Batches are right-padded with the model's pad id to a length bucket (powers of two from 32,
capped at `max_length`) and to a fixed row count, so a run compiles a handful of programs.
"""

from __future__ import annotations

import string
from typing import Callable, Sequence

import numpy as np

DEFAULT_TEMPLATE = ("<|im_start|>user\nStory:\n{story}\n\nQuestion:\n{question}<|im_end|>\n"
                    "<|im_start|>assistant\n{reasoning}<|im_end|>")
FIELDS = ("story", "question", "options", "reasoning")
MIN_BUCKET = 32


def template_fields(template: str) -> list[str]:
    """The placeholders of `template`; ValueError when it is malformed, names a field other than
    FIELDS, or lacks {reasoning} (the text the model scores)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"prompt_template is malformed ({e}); write literal braces as "
                         "{{ and }}") from None
    bad = [f for f in names if f not in FIELDS]
    if bad:
        raise ValueError(f"prompt_template has placeholder(s) {['{' + b + '}' for b in bad]}; "
                         f"the fields are {['{' + f + '}' for f in FIELDS]}")
    if "reasoning" not in names:
        raise ValueError("prompt_template has no {reasoning} placeholder: the model would not "
                         "see what it scores")
    return names


def options_text(options: Sequence[str]) -> str:
    """'A. first\\nB. second' from a list of options."""
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def render(template: str, *, story: str, question: str, reasoning: str,
           options: Sequence[str] = ()) -> str:
    """The text of one item."""
    return template.format(story=story, question=question, reasoning=reasoning,
                           options=options_text(options))


def encode_texts(encode: Callable[[str], list[int]], texts: Sequence[str],
                 max_length: int) -> tuple[list[list[int]], int]:
    """(token lists, how many were cut to their last `max_length` tokens)."""
    out, cut = [], 0
    for text in texts:
        ids = list(encode(text))
        if len(ids) > max_length:
            ids, cut = ids[-max_length:], cut + 1
        out.append(ids)
    return out, cut


def bucket_length(n: int, max_length: int) -> int:
    """The padded length of a batch whose longest row has n tokens."""
    t = MIN_BUCKET
    while t < n:
        t *= 2
    return min(t, max_length) if n <= max_length else n


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, length: int,
             num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (ids, mask) int32 [num_rows, length]; rows beyond len(rows) are all pad."""
    n = num_rows or len(rows)
    ids = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def score_rows(score: Callable, rows: Sequence[Sequence[int]], *, pad_id: int, batch_size: int,
               max_length: int) -> np.ndarray:
    """Scores [n] (float64) of token lists with `score(ids, mask) -> [batch_size]`, in batches of
    `batch_size` rows of similar length (sorted, so short rows are not padded to long ones)."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        chunk = [rows[i] for i in idx]
        length = bucket_length(max(len(r) for r in chunk), max_length)
        ids, mask = pad_rows(chunk, pad_id, length, batch_size)
        out[idx] = np.asarray(score(ids, mask), np.float64)[:len(chunk)]
    return out
