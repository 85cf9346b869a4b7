"""ToMBench (Chen et al., 2024): the published evaluation set, read from its folder of per-task
JSONL files.

Each file is one task; a row has the story, question and four options in English and in Chinese,
the gold letter, and an ability label ("Belief: Second-order beliefs"). The files' quirks are
handled here: two-option rows (the other two options NaN) keep two options, gold letters such as
"A. " are normalised, an option that repeats its own letter loses it, and the ability labels'
spelling variants fold onto the paper's six dimensions.
"""

from __future__ import annotations

import dataclasses
import os
import re

from socialr1_jax.social.data import ColumnMap, DataError, MCQRow, read_jsonl, rows_from_records

TOMBENCH_GOLD = "答案\nANSWER"
TOMBENCH_ABILITY = "能力\nABILITY"
TOMBENCH_FIELDS = {"en": ("STORY", "QUESTION", "OPTION-"), "zh": ("故事", "问题", "选项")}
TOMBENCH_ROWS = 2860  # the published set (20 task files)
# ToMBench's six ability dimensions (Chen et al., 2024), spelled as the paper spells them.
TOMBENCH_DIMENSIONS = ("Emotion", "Desire", "Intention", "Knowledge", "Belief",
                       "Non-Literal Communication")
_DIM_PREFIX = re.compile(r"(%s)\s*:" % "|".join(re.escape(d) for d in TOMBENCH_DIMENSIONS),
                         re.IGNORECASE)


def tombench_ability(raw: str) -> tuple[str, str]:
    """(dimension, ability) from ToMBench's ability label, with its spelling variants folded.

    The files spell a dimension in two cases ("Non-literal communication" beside
    "Non-Literal Communication") and one label has a trailing space; a few rows carry two labels
    ("Belief: Location false beliefs Belief: Second-order beliefs"): the first names the dimension.
    """
    text = " ".join(str(raw).split())
    canon = {d.lower(): d for d in TOMBENCH_DIMENSIONS}
    text = _DIM_PREFIX.sub(lambda m: canon[m.group(1).lower()] + ":", text)
    m = _DIM_PREFIX.match(text)
    return (canon[m.group(1).lower()] if m else text.split(":")[0].strip()), text


def _tombench_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such ToMBench folder or file")
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jsonl"))
    if not files:
        raise DataError(f"{path}: no .jsonl files (ToMBench's folder holds one per task)")
    return files


def load_tombench(path: str, *, language: str = "en") -> list[MCQRow]:
    """ToMBench from its folder of per-task JSONL files (or one such file), in one language.

    Rows with two options (the other two are NaN) get two; gold letters such as "A. " are
    normalised; option texts lose an "A. " prefix that repeats their letter. id is
    `tombench/<task>/<line>`; task is the file's name.
    """
    if language not in TOMBENCH_FIELDS:
        raise DataError(f"--language {language!r}: ToMBench has {sorted(TOMBENCH_FIELDS)}")
    story_key, question_key, option_prefix = TOMBENCH_FIELDS[language]
    cols = ColumnMap(story=story_key, question=question_key,
                     options=tuple(option_prefix + c for c in "ABCD"), gold=TOMBENCH_GOLD,
                     ability=TOMBENCH_ABILITY)
    rows: list[MCQRow] = []
    for f in _tombench_files(os.fspath(path)):
        task = os.path.splitext(os.path.basename(f))[0]
        part = rows_from_records(read_jsonl(f), cols, where=f, source="tombench")
        for n, r in enumerate(part):
            dim, ability = tombench_ability(r.ability)
            rows.append(dataclasses.replace(r, id=f"tombench/{task}/{n}", dimension=dim,
                                            ability=ability, task=task))
    return rows
