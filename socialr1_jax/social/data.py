"""Theory-of-Mind multiple-choice data: one row type for every source, and its loaders.

Every source (ToMBench, ToMBench-Hard, SocialIQA, a generic multiple-choice file, the procedural
ToMi stories) becomes a list of `MCQRow`: `id`, `story`, `question`, `options` (2..26 strings,
option i has letter A+i), `gold` (one capital letter, normalised by `answers.normalize_letter`),
`dimension` (the coarse ToM category, e.g. "Belief"), `ability` (the fine one), `task` and
`source`. The trainer, the rewards and the evaluator take rows as dicts (`MCQRow.as_dict`).
ToMBench's own loader is in `tombench.py`.

Files are read locally; a hub name (e.g. `allenai/social_i_qa`) goes through `datasets` when the
hub is reachable and is never required. CSV, TSV and parquet files are read by `datasets`;
JSONL and JSON by Python's `json`, whose errors name the line and which reads the bare `NaN`
tokens ToMBench's files hold (strict JSON readers such as Arrow's refuse them).

Every mistake in the data a user names (a missing file, a missing column, a row without gold,
an unknown benchmark) raises `DataError`, a `cli.UsageError`: one `error:` line before any model
is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import string
from typing import Any, Iterable, Optional, Sequence

from socialr1_jax.cli import UsageError
from socialr1_jax.social.answers import normalize_letter

LETTERS = string.ascii_uppercase


class DataError(UsageError):
    """A data file, column, row or benchmark the user named cannot be read as multiple choice."""


@dataclasses.dataclass(frozen=True)
class MCQRow:
    """One multiple-choice question; option i has letter `LETTERS[i]`, `gold` is one of them."""

    id: str
    story: str
    question: str
    options: tuple[str, ...]
    gold: str
    dimension: str = ""
    ability: str = ""
    task: str = ""
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        if not 2 <= len(self.options) <= len(LETTERS):
            raise ValueError(f"{len(self.options)} options; a question needs 2..{len(LETTERS)}")
        for i, o in enumerate(self.options):
            if not isinstance(o, str) or not o.strip():
                raise ValueError(f"option {LETTERS[i]} is empty ({o!r})")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("the question is empty")
        if not isinstance(self.gold, str) or self.gold not in LETTERS[:len(self.options)]:
            raise ValueError(f"gold {self.gold!r} is not one of the option letters "
                             f"{LETTERS[:len(self.options)]}")

    @property
    def gold_index(self) -> int:
        """Position of the gold option (0 = A)."""
        return LETTERS.index(self.gold)

    @property
    def gold_text(self) -> str:
        """The text of the gold option."""
        return self.options[self.gold_index]

    def as_dict(self) -> dict:
        """The row as a plain dict (options as a list), as the trainer and rewards take it."""
        d = dataclasses.asdict(self)
        d["options"] = list(self.options)
        return d


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(MCQRow))


def as_row(obj: Any) -> MCQRow:
    """An `MCQRow` from a row or a dict with its fields (extra keys are ignored)."""
    if isinstance(obj, MCQRow):
        return obj
    if not isinstance(obj, dict):
        raise DataError(f"expected a row (MCQRow or dict), got {type(obj).__name__}")
    missing = [k for k in ("id", "question", "options", "gold") if k not in obj]
    if missing:
        raise DataError(f"row {obj.get('id', '?')!r} lacks field(s) {missing}; a row has "
                        f"{list(ROW_FIELDS)}")
    fields = {k: obj[k] for k in ROW_FIELDS if k in obj}
    fields["id"] = str(fields["id"])
    fields.setdefault("story", "")
    try:
        fields["gold"] = normalize_letter(fields["gold"])
        return MCQRow(**fields)
    except ValueError as e:
        raise DataError(f"row {fields['id']!r}: {e}") from None


# -- reading files -------------------------------------------------------------------------------

_DATASETS_BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}),
                      ".parquet": ("parquet", {}), ".arrow": ("arrow", {})}
_JSON_SUFFIXES = (".jsonl", ".json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def iter_jsonl(path: str, error: type[Exception] = None):
    """Yield ("path:line", object) for each object of a JSONL file, blank lines skipped; a line
    that is not a JSON object raises `error` (DataError by default) naming the file and line."""
    error = error or DataError
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def read_jsonl(path: str) -> list[dict]:
    """The objects of a JSONL file (blank lines skipped); errors name the file and line."""
    return [obj for _, obj in iter_jsonl(path)]


def _read_json(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):  # one object per line
        return read_jsonl(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
    if bad:
        raise DataError(f"{path}: item {bad[0]} is not a JSON object")
    return data


def _load_with_datasets(*args, **kwargs):
    import datasets  # imported here: a few seconds, and only table and hub sources need it
    from huggingface_hub.utils import logging as hub_logging

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    hub_logging.set_verbosity_error()  # its retry warnings would bury our one error line
    return datasets.load_dataset(*args, **kwargs)


def _bad_csv_line(path: str, sep: str) -> Optional[str]:
    """Where a CSV / TSV file breaks (datasets' own error hides the line): the first record
    whose field count differs from the header's, as 'line N: ...'; None if none does."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=sep, strict=True)
            header = next(reader, [])
            for rec in reader:
                if rec and len(rec) != len(header):
                    return (f"(line {reader.line_num}: {len(rec)} fields, the header has "
                            f"{len(header)})")
    except (csv.Error, UnicodeDecodeError) as e:
        return f"(line {reader.line_num if 'reader' in locals() else 1}: {e})"
    return None


def read_table(path: str, *, split: Optional[str] = None,
               cache_dir: Optional[str] = None) -> list[dict]:
    """The records of a local JSONL / JSON / CSV / TSV / parquet file, or of a hub data set.

    A path that does not exist and looks like `owner/name` is loaded from the hub with
    `datasets.load_dataset(name, split=split)` (default split "train"); it fails with a
    DataError when the hub cannot be reached.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; give a data file (.jsonl, .json, .csv, .tsv, "
                        ".parquet)")
    if os.path.isfile(path):
        if suffix in _JSON_SUFFIXES:
            return _read_json(path)
        if suffix not in _DATASETS_BUILDERS:
            raise DataError(f"{path}: unknown file type {suffix!r}; expected one of "
                            f"{sorted(_JSON_SUFFIXES + tuple(_DATASETS_BUILDERS))}")
        builder, kw = _DATASETS_BUILDERS[suffix]
        bad = _bad_csv_line(path, kw.get("sep", ",")) if builder == "csv" else None
        if bad:  # found first: datasets' own error names no line (and logs a traceback)
            raise DataError(f"{path}: could not read it as csv {bad}")
        try:
            ds = _load_with_datasets(builder, data_files=path, split="train",
                                     cache_dir=cache_dir, **kw)
        except Exception as e:  # datasets raises many types; the user needs the file named
            raise DataError(f"{path}: could not read it as {builder} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return [dict(r) for r in ds]
    if suffix in _JSON_SUFFIXES or suffix in _DATASETS_BUILDERS or not _HUB_NAME.match(path):
        raise DataError(f"{path}: no such file")
    try:
        ds = _load_with_datasets(path, split=split or "train", cache_dir=cache_dir)
    except Exception as e:
        raise DataError(f"{path}: no such local file, and the hub did not provide it "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "pass a local file (HF_HUB_OFFLINE=1 skips the hub at once)") from None
    return [dict(r) for r in ds]


# -- column mappings -----------------------------------------------------------------------------

GOLD_FORMATS = ("letter", "index1", "index0")


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Which columns of a table hold a row's fields.

    options: one column holding a list of strings, or one column per option in letter order
    (empty trailing cells end the list: a row may have fewer options than columns). gold_format:
    `letter` ("B", "b", "(B)", "B." all read as B), `index1` ("1".."N", SocialIQA's labels) or
    `index0`. story, dimension, ability, task, id: "" when the table has no such column (id then
    is the row's number). strip_option_letters: drop an "A. " / "B)" prefix an option carries when
    its letter is the option's own (the prompt writes the letters).
    """

    story: str = "story"
    question: str = "question"
    options: tuple[str, ...] = ("options",)
    gold: str = "gold"
    gold_format: str = "letter"
    dimension: str = ""
    ability: str = ""
    task: str = ""
    id: str = ""
    strip_option_letters: bool = True

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        if self.gold_format not in GOLD_FORMATS:
            raise DataError(f"gold_format={self.gold_format!r}; expected one of {GOLD_FORMATS}")
        if not self.options or not self.question or not self.gold:
            raise DataError("a column map needs question, options and gold columns")

    def required(self) -> list[str]:
        """The columns a table must have."""
        return [c for c in (self.story, self.question, *self.options, self.gold) if c]


OPTIONAL_COLUMNS = ("dimension", "ability", "task", "id")
# Our own row schema (MCQRow.as_dict); its optional columns are used when the table has them.
MCQ_COLUMNS = ColumnMap(dimension="dimension", ability="ability", task="task", id="id")
SOCIALIQA_COLUMNS = ColumnMap(story="context", question="question",
                              options=("answerA", "answerB", "answerC"), gold="label",
                              gold_format="index1")
# ToMBench-Hard's exact column names are not published with the paper: these are the layouts
# it plausibly has (ToMBench's English columns; ours; lower-case A-D). The first whose columns
# are all present is used, and a `--column` mapping replaces the guess.
TOMBENCH_HARD_LAYOUTS = (
    ColumnMap(story="STORY", question="QUESTION",
              options=("OPTION-A", "OPTION-B", "OPTION-C", "OPTION-D"), gold="ANSWER",
              ability="ABILITY"),
    MCQ_COLUMNS,
    ColumnMap(story="story", question="question", options=("A", "B", "C", "D"), gold="answer",
              dimension="dimension"),
)


def column_map(spec: Sequence[str] | dict, base: ColumnMap = ColumnMap()) -> ColumnMap:
    """A ColumnMap from `key=value` strings (or a dict) over `base`; options as `A,B,C,D`.

    Every column it names must exist in the table (the optional ones too).

    Unknown keys raise DataError with a did-you-mean.
    """
    items = (spec.items() if isinstance(spec, dict)
             else [_split_kv(s) for s in _join_options(spec)])
    names = [f.name for f in dataclasses.fields(ColumnMap)]
    changes: dict[str, Any] = {}
    for key, value in items:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"unknown column key {key!r}{hint} (keys: {', '.join(names)})")
        if key == "options":
            value = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) \
                else tuple(value)
        elif key == "strip_option_letters" and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise DataError(f"strip_option_letters={value!r}: expected true or false")
            value = value.lower() in ("true", "1", "yes")
        changes[key] = value
    return dataclasses.replace(base, **changes)


def _join_options(spec: Sequence[str]) -> list[str]:
    """`options=A,B,C,D` put back together where a list split it at its commas (the override
    `data.columns=[story=Story,options=A,B,C,D]`, unquoted): every other item is key=column."""
    out: list[str] = []
    for item in map(str, spec):
        if "=" not in item and out and out[-1].lstrip().startswith("options="):
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def _split_kv(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise DataError(f"column mapping {item!r} is not of the form key=column")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.:)．、]\s*")


def strip_letter(text: str, letter: str) -> str:
    """`text` without a leading "A. " / "A)" / "A、" when its letter is `letter` (the option's own)."""
    m = _LETTER_PREFIX.match(text)
    if m and m.group(1).upper() == letter and text[m.end():].strip():
        return text[m.end():]
    return text


def _gold_letter(value: Any, n_options: int, fmt: str) -> str:
    if fmt == "letter":
        letter = normalize_letter(value)
        if letter in LETTERS[:n_options]:
            return letter
    else:
        s = str(value).strip()
        if not re.fullmatch(r"\d+", s):
            raise ValueError(f"gold {value!r} is not an option number ({fmt})")
        i = int(s) - (1 if fmt == "index1" else 0)
        if 0 <= i < n_options:
            return LETTERS[i]
    raise ValueError(f"gold {value!r} names no option (the row has {n_options})")


def _options(rec: dict, cols: ColumnMap, where: str) -> list[str]:
    if len(cols.options) == 1:
        value = rec[cols.options[0]]
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: column {cols.options[0]!r} should hold a list of options, "
                            f"got {type(value).__name__}")
        values = list(value)
    else:
        values = [rec[c] for c in cols.options]
    while values and _is_missing(values[-1]):  # fewer options than columns
        values.pop()
    for i, v in enumerate(values):
        if _is_missing(v):
            raise DataError(f"{where}: option {LETTERS[i]} is empty but a later one is not")
    return [str(v).strip() for v in values]


def rows_from_records(records: Sequence[dict], cols: ColumnMap, *, where: str,
                      source: str) -> list[MCQRow]:
    """Records (dicts) -> rows through a column map; errors name `where` and the row number."""
    if not records:
        raise DataError(f"{where}: no rows")
    found = list(records[0])
    lacking = [c for c in cols.required() + [c for c in (cols.dimension, cols.ability, cols.task,
                                                          cols.id) if c]
               if c not in records[0]]
    if lacking:
        raise DataError(f"{where}: column(s) {lacking} not found; the columns are {found} "
                        "(map them: evaluate's --column key=name, a training config's "
                        "data.columns=[key=name,...])")
    rows = []
    for n, rec in enumerate(records):
        at = f"{where} row {n + 1}"  # rows count from 1, as every message says
        missing = [c for c in cols.required() if c not in rec]
        if missing:
            raise DataError(f"{at}: column(s) {missing} not found; the row has {list(rec)}")
        options = _options(rec, cols, at)
        if _is_missing(rec[cols.gold]):
            raise DataError(f"{at}: no gold answer in column {cols.gold!r}")
        if cols.strip_option_letters:
            options = [strip_letter(o, LETTERS[i]) for i, o in enumerate(options)]
        get = lambda c: "" if not c or _is_missing(rec.get(c)) else str(rec[c]).strip()  # noqa
        try:
            rows.append(MCQRow(
                id=get(cols.id) or f"{source}/{n}", story=get(cols.story),
                question=get(cols.question), options=tuple(options),
                gold=_gold_letter(rec[cols.gold], len(options), cols.gold_format),
                dimension=get(cols.dimension), ability=get(cols.ability), task=get(cols.task),
                source=source))
        except ValueError as e:
            raise DataError(f"{at}: {e}") from None
    return rows


def load_mcq(path: str, columns: Optional[ColumnMap | Sequence[ColumnMap]] = None, *,
             split: Optional[str] = None, source: str = "mcq",
             cache_dir: Optional[str] = None) -> list[MCQRow]:
    """Rows of a multiple-choice table (file or hub name) through a column map.

    columns: one map, or several candidate layouts of which the first whose columns are all
    present is used (default: our own schema, `MCQ_COLUMNS`).
    """
    records = read_table(path, split=split, cache_dir=cache_dir)
    if not records:
        raise DataError(f"{path}: no rows")
    if isinstance(columns, ColumnMap):  # the user's own map: every column it names must exist
        return rows_from_records(records, columns, where=path, source=source)
    # Known layouts: the first whose required columns are all there; its optional columns only
    # where the table has them.
    layouts = [dataclasses.replace(c, **{k: "" for k in OPTIONAL_COLUMNS
                                         if getattr(c, k) not in records[0]})
               for c in (columns or [MCQ_COLUMNS])]
    for cols in layouts:
        if all(c in records[0] for c in cols.required()):
            return rows_from_records(records, cols, where=path, source=source)
    if len(layouts) == 1:
        return rows_from_records(records, layouts[0], where=path, source=source)
    wanted = "; ".join(str(c.required()) for c in layouts)
    raise DataError(f"{path}: the columns {list(records[0])} match no known layout ({wanted}); "
                    "map them with a column mapping (evaluate's --column key=name, a training "
                    "config's data.columns; keys: story, question, options, gold, "
                    "gold_format, dimension, ability, task, id)")


def load_socialiqa(path: str = "allenai/social_i_qa", *, split: Optional[str] = "validation",
                   columns: Optional[ColumnMap] = None,
                   cache_dir: Optional[str] = None) -> list[MCQRow]:
    """SocialIQA in its HF layout (context, question, answerA..C, label "1".."3").

    Also reads the original AllenAI release, whose labels sit one per line in a file beside the
    questions (`dev.jsonl` + `dev-labels.lst`).
    """
    cols = columns or SOCIALIQA_COLUMNS
    records = read_table(path, split=split, cache_dir=cache_dir)
    labels = os.path.splitext(os.fspath(path))[0] + "-labels.lst"
    if records and cols.gold not in records[0] and os.path.isfile(labels):
        with open(labels, encoding="utf-8") as f:
            gold = [line.strip() for line in f if line.strip()]
        if len(gold) != len(records):
            raise DataError(f"{labels}: {len(gold)} labels for {len(records)} questions in "
                            f"{path}")
        records = [{**r, cols.gold: g} for r, g in zip(records, gold)]
    return rows_from_records(records, cols, where=os.fspath(path), source="socialiqa")


def counts(rows: Iterable[MCQRow], key: str = "ability") -> dict[str, int]:
    """Rows per value of field `key` (e.g. ability, dimension, task), most frequent first."""
    out: dict[str, int] = {}
    for r in rows:
        v = getattr(r, key)
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def to_hf_dataset(rows: Iterable[MCQRow]):
    """The rows as a `datasets.Dataset` (for map / filter / shuffle / save_to_disk)."""
    import datasets

    return datasets.Dataset.from_list([as_row(r).as_dict() for r in rows])


def check_unique_ids(rows: Sequence[MCQRow], where: str) -> None:
    """Refuse two rows with one id (predictions, resumes and reports are keyed by it), naming
    both rows (counted from 1)."""
    first: dict = {}
    for n, row in enumerate(rows, 1):
        if row.id in first:
            raise DataError(f"{where}: rows {first[row.id]} and {n} have the same id {row.id!r}; "
                            "every row needs its own")
        first[row.id] = n
