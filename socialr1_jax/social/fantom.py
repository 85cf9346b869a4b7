"""FanToM (Kim et al., 2023): its released JSON file, checked, and the questions each set asks.

The file (`fantom_v1.json` of skywalker023/fantom) is a JSON list of conversation sets: `set_id`,
`short_context`, `full_context`, `factQA`, `beliefQAs`, `answerabilityQA_list`,
`answerabilityQAs_binary`, `infoAccessibilityQA_list`, `infoAccessibilityQAs_binary`. A set that
lacks a field, or holds the wrong type, raises DataError naming the file, the set and the field.

`expand(sets, context)` flattens each set in FanToM's order: the fact question; per belief
question the free-form one, then its two-option copy; the answerability list and binaries; the
info-accessibility list and binaries. With the short context, binaries whose gold is `no:long`
(a character absent from the short context) are left out, as FanToM drops them before scoring.
The two options of a choice copy are ordered by a seeded draw per question (FanToM draws from one
global stream, so its order depends on the question's position in the run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import zlib
from typing import Any, Optional, Sequence

from socialr1_jax.social.data import DataError

CONTEXTS = ("short", "full")
ACCESS = ("inaccessible", "accessible")
BINARY_GOLD = ("yes", "no", "no:long")
LIST_FIELDS = {"answerability": ("answerabilityQA_list", "answerabilityQAs_binary"),
               "info_accessibility": ("infoAccessibilityQA_list", "infoAccessibilityQAs_binary")}


@dataclasses.dataclass(frozen=True)
class Question:
    """One question as asked: `kind` is fact, belief, belief_choice, answerability_list,
    answerability_binary, info_accessibility_list or info_accessibility_binary; `correct` /
    `wrong` are FanToM's golds (a sentence, a list of names, yes/no, or for a choice the right
    letter with `options` the two texts as shown)."""

    id: str
    set_id: str
    kind: str
    question_type: str
    prompt: str
    correct: Any
    wrong: Any = None
    tom_type: str = ""
    accessibility: str = ""
    options: tuple = ()


def _err(path, sid, field, msg) -> DataError:
    return DataError(f"{path}: set {sid}: field {field!r}: {msg}")


def _need(obj: dict, key: str, kind, path, sid, where: str = ""):
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise _err(path, sid, where or key, f"expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise _err(path, sid, name, "missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _err(path, sid, name, f"expected {want}, got {type(value).__name__}")
    return value


def _check_access(item, path, sid, where):
    acc = _need(item, "missed_info_accessibility", str, path, sid, where)
    if acc not in ACCESS:
        raise _err(path, sid, f"{where}.missed_info_accessibility", f"{acc!r} is not one of {ACCESS}")


def _check_set(s: Any, i: int, path: str) -> dict:
    if not isinstance(s, dict):
        raise DataError(f"{path}: item {i}: expected a conversation set object, got "
                        f"{type(s).__name__}")
    sid = repr(s.get("set_id", f"#{i}"))
    _need(s, "set_id", str, path, sid)
    for key in ("short_context", "full_context"):
        _need(s, key, str, path, sid)
    fact = _need(s, "factQA", dict, path, sid)
    for key in ("question", "correct_answer"):
        _need(fact, key, str, path, sid, "factQA")
    for j, b in enumerate(_need(s, "beliefQAs", list, path, sid)):
        where = f"beliefQAs[{j}]"
        for key in ("question", "question_type", "tom_type", "correct_answer", "wrong_answer"):
            _need(b, key, str, path, sid, where)
        if not b["question_type"].startswith("tom:belief:"):
            raise _err(path, sid, f"{where}.question_type", f"{b['question_type']!r} does not "
                       "start with 'tom:belief:'")
        _check_access(b, path, sid, where)
    for lst, binary in LIST_FIELDS.values():
        q = _need(s, lst, dict, path, sid)
        _need(q, "question", str, path, sid, lst)
        for key in ("correct_answer", "wrong_answer"):
            names = _need(q, key, list, path, sid, lst)
            if not all(isinstance(n, str) and n.strip() for n in names):
                raise _err(path, sid, f"{lst}.{key}", "every entry must be a non-empty name")
        items = _need(s, binary, list, path, sid)
        for j, b in enumerate(items):
            where = f"{binary}[{j}]"
            _need(b, "question", str, path, sid, where)
            gold = _need(b, "correct_answer", str, path, sid, where)
            if gold not in BINARY_GOLD:
                raise _err(path, sid, f"{where}.correct_answer",
                           f"{gold!r} is not one of {BINARY_GOLD}")
            _check_access(b, path, sid, where)
        if "missed_info_accessibility" in q:
            _check_access(q, path, sid, lst)
        elif not items:  # FanToM reads the list's label from the first binary
            raise _err(path, sid, f"{lst}.missed_info_accessibility",
                       f"missing, and {binary} is empty to read it from")
    return s


def check_sets(sets: Any, path: str = "<data>") -> list[dict]:
    """Check a parsed FanToM file (see the module docstring); returns its sets."""
    if not isinstance(sets, list):
        raise DataError(f"{path}: expected a JSON list of conversation sets, got "
                        f"{type(sets).__name__}")
    if not sets:
        raise DataError(f"{path}: no conversation sets")
    seen = set()
    for i, s in enumerate(sets):
        _check_set(s, i, path)
        if s["set_id"] in seen:
            raise _err(path, repr(s["set_id"]), "set_id", "appears twice")
        seen.add(s["set_id"])
    return sets


def load_fantom(path: str) -> list[dict]:
    """FanToM's sets from a JSON file (or `generated:N[:SEED]`: fantom_gen's conversations)."""
    if path.startswith("generated:"):
        from socialr1_jax.social import fantom_gen

        parts = path.split(":")[1:]
        try:
            n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except (ValueError, IndexError):
            raise DataError(f"--data {path}: expected generated:N[:SEED]") from None
        if n < 1 or len(parts) > 2:
            raise DataError(f"--data {path}: expected generated:N[:SEED] with N >= 1")
        return check_sets(fantom_gen.generate(n, seed=seed), path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            sets = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None
    return check_sets(sets, path)


def _list_access(q: dict, items: Sequence[dict]) -> str:
    return q.get("missed_info_accessibility") or items[0]["missed_info_accessibility"]


def _choice(b: dict, qid: str, seed: int) -> tuple[tuple[str, str], str]:
    rng = random.Random(zlib.crc32(f"{seed}:{qid}".encode()))
    if rng.random() < 0.5:
        return (b["wrong_answer"], b["correct_answer"]), "b"
    return (b["correct_answer"], b["wrong_answer"]), "a"


def set_questions(s: dict, context: str = "short", seed: int = 99) -> list[Question]:
    """The questions one set asks with `context` (short/full), in FanToM's order."""
    ctx = s[f"{context}_context"].strip()
    sid, fact = s["set_id"], s["factQA"]
    out: list[Question] = []

    def add(kind, qtype, prompt, correct, **kw):
        out.append(Question(f"{sid}:{len(out)}", sid, kind, qtype, prompt, correct, **kw))

    add("fact", fact.get("question_type", "fact"),
        f"{ctx}\n\nQuestion: {fact['question']}\nAnswer:", fact["correct_answer"])
    for b in s["beliefQAs"]:
        common = dict(tom_type=b["tom_type"], accessibility=b["missed_info_accessibility"])
        add("belief", b["question_type"], f"{ctx}\n\nQuestion: {b['question']}\nAnswer:",
            b["correct_answer"], wrong=b["wrong_answer"], **common)
        opts, letter = _choice(b, f"{sid}:{len(out)}", seed)
        add("belief_choice", b["question_type"] + ":multiple-choice",
            f"{ctx}\n\nQuestion: {b['question']}\n(a) {opts[0]}\n(b) {opts[1]}\n"
            "Choose an answer from above:", letter, options=opts, **common)
    for name, (lst, binary) in LIST_FIELDS.items():
        q, items = s[lst], s[binary]
        head = (f"Target: {fact['question']}" if name == "answerability" else
                f"Information: {fact['question']} {fact['correct_answer']}")
        add(f"{name}_list", f"tom:{name}:list", f"{ctx}\n\n{head}\nQuestion: {q['question']}"
            "\nAnswer:", list(q["correct_answer"]), wrong=list(q["wrong_answer"]),
            accessibility=_list_access(q, items))
        for b in items:
            if context == "short" and b["correct_answer"] == "no:long":
                continue
            add(f"{name}_binary", f"tom:{name}:binary",
                f"{ctx}\n\n{head}\nQuestion: {b['question']} Answer yes or no.\nAnswer:",
                b["correct_answer"], accessibility=b["missed_info_accessibility"])
    return out


def expand(sets: Sequence[dict], context: str = "short", seed: int = 99) -> list[Question]:
    """Every set's questions (see `set_questions`)."""
    if context not in CONTEXTS:
        raise DataError(f"--context {context}: expected one of {', '.join(CONTEXTS)}")
    return [q for s in sets for q in set_questions(s, context, seed)]


_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_ANSWER_RE = re.compile(r"<Answer>(.*?)(?:</Answer>|$)", re.DOTALL)


def reply_text(completion: str, *, strip_answer_tags: bool = True) -> Optional[str]:
    """The answer in a completion: after the reasoning (`<think>...</think>`), inside the last
    `<Answer>...</Answer>` when there is one, then FanToM's cut (the text after the last
    "Answer:" or "Choose an answer from above:"), stripped."""
    text = completion.split("</think>")[-1] if "</think>" in completion else \
        _THINK_RE.sub("", completion)
    tags = _ANSWER_RE.findall(text) if strip_answer_tags else []
    if tags:
        text = tags[-1]
    for marker in ("Answer:", "Choose an answer from above:"):
        if marker in text:
            text = text.split(marker)[-1]
    return text.strip()


def not_multiple_choice(data=None, **_):
    """The registry's loader: FanToM is open-ended, so it has no multiple-choice rows."""
    raise DataError("fantom is open-ended: `python -m socialr1_jax.evaluate --benchmark fantom` "
                    "scores it (social/fantom_eval.py); use fantom.load_fantom for its sets")
