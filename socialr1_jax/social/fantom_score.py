"""FanToM's scoring rules (Kim et al., 2023, `eval_fantom.py`) and its headline report.

Per question (`score_question`):
- free-form belief: correct iff the reply's embedding is closer (cosine) to the accessible
  (character-centred) belief than to the omniscient one; a tie is wrong. Also the token F1 of
  the reply with the closer option (`word_overlap`). With an LLM judge instead (fantom_judge.py)
  the verdict decides; a reply the judge did not answer is `correct=None`: left out of every
  mean and of All*, and counted.
- choice belief: the right letter as "(x)..." / "x)" / "x." / "x:" / "x," at the start, "(x)"
  anywhere, or the bare letter.
- list: every aware name in the reply and no unaware name (case-insensitive substrings).
- yes/no: FanToM's keyword rule (`binary_value`: 1 yes, 0 no, -1 neither); right iff it equals
  the gold (yes = 1, no / no:long = 0).
- fact: token F1 of the lower-cased gold and reply (the F1 itself, not a boolean).

`report(records, target)` gives FanToM's keys over the ToM questions whose
missed_info_accessibility is `target` ("inaccessible": the headline; "accessible": the
control), each as {"score", "n"} with scores as fractions (FanToM prints percents).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np


def token_f1(gold: str, pred: str) -> float:
    """Token F1 over whitespace tokens with multiset overlap (case as given)."""
    g, p = gold.split(), pred.split()
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def binary_value(reply: str) -> int:
    """FanToM's yes/no reading of a reply: 1, 0, or -1 when it says neither."""
    r = reply.lower().strip().strip("\"'").strip()
    if r.startswith(("yes", "true")) or any(k in r for k in (" yes ", " yes,", " yes.",
                                                              " knows ")):
        return 1
    if r.startswith(("no", "false")) or any(k in r for k in (" no ", " no,", " no.",
                                                              " does not know ",
                                                              " doesn't know ")):
        return 0
    return -1


def choice_correct(reply: str, letter: str) -> bool:
    """The right letter of a two-option question, by FanToM's rule."""
    r, x = reply.lower().strip(), letter.lower()
    return (r.startswith((f"({x})", f"{x})", f"{x}.", f"{x}:", f"{x},")) or f"({x})" in r
            or r == x)


def list_result(reply: str, aware: Sequence[str], unaware: Sequence[str]) -> dict:
    """All-or-nothing list scoring, with which way it failed."""
    r = reply.lower()
    missed = [n for n in aware if n.lower() not in r]
    included = [n for n in unaware if n.lower() in r]
    return {"correct": not missed and not included, "missed_aware": missed,
            "included_unaware": included}


def belief_by_similarity(reply: str, sim_correct: float, sim_wrong: float, correct: str,
                         wrong: str) -> dict:
    """Free-form belief: the closer option wins (a tie is wrong); word overlap with it."""
    right = bool(sim_correct > sim_wrong)
    return {"correct": right, "sim_correct": float(sim_correct), "sim_wrong": float(sim_wrong),
            "word_overlap": token_f1(correct if right else wrong, reply)}


def score_question(q, reply: str) -> dict:
    """The record of one non-free-form question (free-form beliefs: `belief_by_similarity` or
    the judge)."""
    rec = {"id": q.id, "set_id": q.set_id, "kind": q.kind, "question_type": q.question_type,
           "tom_type": q.tom_type, "accessibility": q.accessibility, "reply": reply}
    if q.kind == "fact":
        return rec | {"f1": token_f1(q.correct.lower(), reply.lower())}
    if q.kind == "belief_choice":
        return rec | {"correct": choice_correct(reply, q.correct), "gold": q.correct}
    if q.kind.endswith("_list"):
        return rec | list_result(reply, q.correct, q.wrong)
    if q.kind.endswith("_binary"):
        gold = 1 if q.correct == "yes" else 0
        pred = binary_value(reply)
        return rec | {"correct": pred == gold, "pred": pred, "gold": gold}
    raise ValueError(f"question {q.id}: kind {q.kind!r} is scored by similarity or a judge")


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """F1 per label (labels of both lists; 0 when undefined) averaged with the gold support as
    weights: `average="weighted"`, how FanToM reports its yes/no questions."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if not len(yt):
        return 0.0
    total = 0.0
    for label in np.union1d(yt, yp):
        tp = float(np.sum((yt == label) & (yp == label)))
        pred_n, true_n = float(np.sum(yp == label)), float(np.sum(yt == label))
        f1 = 2 * tp / (pred_n + true_n) if tp else 0.0
        total += f1 * true_n
    return total / len(yt)


def _mean(values) -> dict:
    values = [float(v) for v in values]
    return {"score": float(np.mean(values)) if values else 0.0, "n": len(values)}


def _sets_all(rows: Sequence[dict], keep) -> dict:
    by_set: dict[str, list] = {}
    for r in rows:
        if keep(r):
            by_set.setdefault(r["set_id"], []).append(r["correct"])
    judged = [all(v) for v in by_set.values() if None not in v]
    return _mean(judged) | {"unjudged_sets": sum(None in v for v in by_set.values())}


def report(records: Sequence[dict], target: str = "inaccessible") -> dict:
    """FanToM's metrics over the ToM records labelled `target` (see the module docstring)."""
    rows = [r for r in records if r["kind"] != "fact" and r["accessibility"] == target]

    def of(kind):
        return [r for r in rows if r["kind"] == kind]

    free = [r for r in of("belief") if r["correct"] is not None]
    out = {"all_star": _sets_all(rows, lambda r: True),
           "all": _sets_all(rows, lambda r: r["kind"] != "belief"),
           "belief_choice": _mean(r["correct"] for r in of("belief_choice")),
           "belief_free": _mean(r["correct"] for r in free),
           "belief_true_word_f1": _mean(r["word_overlap"] for r in free if r["correct"])}
    for order in ("first", "second"):
        out[f"belief_free_{order}_order"] = _mean(
            r["correct"] for r in free if r["tom_type"].split(":")[0] == f"{order}-order")
        out[f"belief_choice_{order}_order"] = _mean(
            r["correct"] for r in of("belief_choice")
            if r["tom_type"].split(":")[0] == f"{order}-order")
    for name in ("answerability", "info_accessibility"):
        part = [r for r in rows if r["kind"].startswith(name)]
        out[f"{name}_all"] = _sets_all(part, lambda r: True)
        out[f"{name}_list"] = _mean(r["correct"] for r in of(f"{name}_list"))
        binary = of(f"{name}_binary")
        out[f"{name}_yn_f1"] = {"score": weighted_f1([r["gold"] for r in binary],
                                                     [r["pred"] for r in binary]),
                                "n": len(binary)}
    out["belief_unjudged"] = {"n": sum(r["correct"] is None for r in of("belief"))}
    return out


def fact_f1(records: Sequence[dict]) -> dict:
    """Mean token F1 over every fact question (no accessibility filter, as FanToM)."""
    return _mean(r["f1"] for r in records if r["kind"] == "fact")


HEADLINE = (("all_star", "All*"), ("all", "All"), ("belief_choice", "BeliefQ [Choice]"),
            ("belief_free", "BeliefQ [Dist.]"), ("belief_true_word_f1", "BeliefQ token-F1"),
            ("belief_free_first_order", "  free-form 1st order"),
            ("belief_free_second_order", "  free-form 2nd order"),
            ("belief_choice_first_order", "  choice 1st order"),
            ("belief_choice_second_order", "  choice 2nd order"),
            ("answerability_all", "All AnswerabilityQ"), ("answerability_list",
                                                         "AnswerabilityQ [List]"),
            ("answerability_yn_f1", "AnswerabilityQ [Y/N]"),
            ("info_accessibility_all", "All Info-AccessQ"),
            ("info_accessibility_list", "Info-AccessQ [List]"),
            ("info_accessibility_yn_f1", "Info-AccessQ [Y/N]"))


def format_table(rep: dict) -> str:
    """The FanToM report as a table: each metric for the headline (inaccessible) questions and
    the control (accessible) ones, in percent, with counts."""
    width = max(len(lbl) for _, lbl in HEADLINE)
    lines = [f"{'fantom':<{width}}  {'inaccessible':>12}  {'n':>5}  {'control':>8}  {'n':>5}"]
    for key, label in HEADLINE:
        a, c = rep["overall"][key], rep["control"][key]
        lines.append(f"{label:<{width}}  {100 * a['score']:>11.1f}%  {a['n']:>5d}  "
                     f"{100 * c['score']:>7.1f}%  {c['n']:>5d}")
    f = rep["fact_f1"]
    lines.append(f"{'FactQ token-F1':<{width}}  {100 * f['score']:>11.1f}%  {f['n']:>5d}")
    lines.append(f"{rep['questions']} question(s) in {rep['sets']} set(s) "
                 f"({rep['context']} context, beliefs by {rep['scorer']}); "
                 f"{rep['overall']['belief_unjudged']['n'] + rep['control']['belief_unjudged']['n']}"
                 f" free-form belief(s) unjudged, {rep['dropped_sets']} set(s) dropped as too "
                 f"long; {rep['generated_tokens']} generated tokens in "
                 f"{rep['wall_seconds']:.1f} s")
    return "\n".join(lines)
