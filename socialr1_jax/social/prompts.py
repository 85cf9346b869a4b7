"""Prompts for multiple-choice rows: the Social-R1 instruction, a story / question / options
layout, the checkpoint tokenizer's chat template (thinking mode), seeded option shuffles.

The user turn is `PromptConfig.template` filled with the row (by default: the story, the
question, the options as "A. ..." lines, then the instruction the released Social-R1 model was
trained with); `rollout.tokenizer.chat_text` wraps it in the tokenizer's chat template with the
generation prompt and nothing after it, so the model opens its own `<think>`.

Option order can be shuffled per row with a seed (the permutation depends on the seed and the
row's id only, not on the row's position or the batch); the gold letter follows its option.
Prompts longer than `max_prompt_tokens` are never cut: they are dropped and counted
(`on_too_long: drop`) or refused (`error`).
"""

from __future__ import annotations

import dataclasses
import string
import zlib
from typing import Iterable, Optional

import numpy as np

from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.social.data import DataError, LETTERS, MCQRow, as_row

# The user instruction of the released Social-R1 model (Social-R1 paper and model card).
SOCIAL_R1_INSTRUCTION = (
    "You should first think about the reasoning process in the mind and then provide with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<Answer> </Answer> tags, respectively.")

DEFAULT_TEMPLATE = "{story}Question: {question}\n\nOptions:\n{options}\n\n{instruction}"
TEMPLATE_FIELDS = ("story", "question", "options", "instruction")
ON_TOO_LONG = ("drop", "error")


class PromptTooLong(DataError):
    """A prompt has more tokens than `max_prompt_tokens` and `on_too_long` is `error`."""


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How rows become prompts (a section of the trainer's and the evaluator's configs).

    instruction: the task instruction (default: Social-R1's). template: the user turn, with
    fields {story} ("Story: ...\\n\\n", or "" for a row without one), {question}, {options}
    ("A. ..." lines) and {instruction}. shuffle: permute each row's options (seeded by `seed` and
    the row id; the gold letter follows). max_prompt_tokens: the longest prompt, chat template
    included; longer ones are dropped and counted (`on_too_long: drop`) or refused (`error`).
    """

    instruction: str = SOCIAL_R1_INSTRUCTION
    template: str = DEFAULT_TEMPLATE
    shuffle: bool = False
    seed: int = 0
    max_prompt_tokens: int = 2048
    on_too_long: str = "drop"

    def __post_init__(self):
        if self.on_too_long not in ON_TOO_LONG:
            raise ValueError(f"prompt.on_too_long={self.on_too_long!r}; expected one of "
                             f"{ON_TOO_LONG}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"prompt.max_prompt_tokens={self.max_prompt_tokens} must be >= 1")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        unknown = sorted(fields - set(TEMPLATE_FIELDS))
        if unknown or not {"question", "options"} <= fields:
            raise ValueError(f"prompt.template: fields {sorted(fields)}; it must use {{question}} "
                             f"and {{options}} and may use only {list(TEMPLATE_FIELDS)}")


def shuffle_options(row: MCQRow, seed: int) -> tuple[MCQRow, tuple[int, ...]]:
    """`row` with its options permuted (seeded by `seed` and the row id) and the gold remapped.

    Returns (row, order) where option i of the new row is option order[i] of the old one.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(row.id.encode("utf-8"))])
    order = tuple(int(i) for i in rng.permutation(len(row.options)))
    gold = LETTERS[order.index(row.gold_index)]
    return dataclasses.replace(row, options=tuple(row.options[i] for i in order),
                               gold=gold), order


def user_message(row: MCQRow, cfg: PromptConfig = PromptConfig()) -> str:
    """The user turn for `row` (options as given: shuffle first if wanted)."""
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(row.options))
    story = f"Story: {row.story}\n\n" if row.story.strip() else ""
    return cfg.template.format(story=story, question=row.question, options=options,
                               instruction=cfg.instruction)


@dataclasses.dataclass
class PromptSet:
    """Prompts built from rows: the rows as prompted (shuffled options, remapped gold), the chat
    texts and token ids (index-aligned), each row's option order, and the rows left out as too
    long, as (row id, token count)."""

    rows: list[MCQRow]
    texts: list[str]
    ids: list[list[int]]
    orders: list[tuple[int, ...]]
    dropped: list[tuple[str, int]]
    max_prompt_tokens: int

    def __len__(self) -> int:
        return len(self.rows)

    def limited(self, limit: int, on_too_long: str = "drop") -> "PromptSet":
        """The prompts of at most `limit` tokens; longer ones are added to `dropped`, or raise
        PromptTooLong naming the first when `on_too_long` is "error"."""
        keep = [i for i, ids in enumerate(self.ids) if len(ids) <= limit]
        over = [(self.rows[i].id, len(self.ids[i])) for i in range(len(self))
                if len(self.ids[i]) > limit]
        if over and on_too_long == "error":
            raise PromptTooLong(f"row {over[0][0]!r}: its prompt has {over[0][1]} tokens, more "
                                f"than max_prompt_tokens={limit} (raise the limit, or set "
                                "on_too_long=drop to skip such rows)")
        return PromptSet([self.rows[i] for i in keep], [self.texts[i] for i in keep],
                         [self.ids[i] for i in keep], [self.orders[i] for i in keep],
                         self.dropped + over, limit)


def build_prompts(rows: Iterable, tokenizer, cfg: PromptConfig = PromptConfig(), *,
                  max_prompt_tokens: Optional[int] = None) -> PromptSet:
    """Chat prompts for `rows` (MCQRow or dicts) through `tokenizer`'s chat template.

    max_prompt_tokens overrides cfg's limit (the evaluator lowers it to what the model's context
    leaves after the generation budget). Too-long prompts are dropped and listed, or raise
    PromptTooLong naming the row, per `cfg.on_too_long`.
    """
    limit = int(max_prompt_tokens or cfg.max_prompt_tokens)
    prompted, orders = [], []
    for row in rows:
        row = as_row(row)
        order = tuple(range(len(row.options)))
        if cfg.shuffle:
            row, order = shuffle_options(row, cfg.seed)
        prompted.append(row)
        orders.append(order)
    texts = [tk.chat_text(tokenizer, user_message(row, cfg)) for row in prompted]
    # One batched call (the Rust tokenizer's threads); the same ids as `tk.encode` per text.
    all_ids = [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]] \
        if texts else []
    return PromptSet(prompted, texts, all_ids, orders, [], limit).limited(limit, cfg.on_too_long)
