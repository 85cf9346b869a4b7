"""Episode records (JSONL, one finished episode per line) and the summary over them.

A record holds the scenario, which side the tested model played, the models, every turn (the
action, its rendered text, the raw replies, whether it was repaired or malformed), why the
episode ended, the evaluation record (evaluator.Evaluator) and, when the evaluation parsed,
`scores`: the seven dimensions and `overall` for the tested model and for the partner.

`read_records` reads a file back for `--resume`: a last line cut off by a crash is dropped (and
said); any other bad line is an error naming the file and line. `summary` aggregates the
records per agent (the model, the partner): mean, sample standard deviation (ddof 1; 0 for a
single episode) and n per dimension, over the episodes whose evaluation parsed; failed
evaluations are counted by kind, never scored.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Optional

from socialr1_jax.social.sotopia.actions import AGENT_PROMPT_VERSION
from socialr1_jax.social.sotopia.episodes import Episode, action_counts
from socialr1_jax.social.sotopia.evaluator import DIMENSIONS, failure_counts

ROLES = ("model", "partner")
COLUMNS = tuple(DIMENSIONS) + ("overall",)
_TAGS = {"believability": "BEL", "relationship": "REL", "knowledge": "KNO", "secret": "SEC",
         "social_rules": "SOC", "financial_and_material_benefits": "FIN", "goal": "GOAL",
         "overall": "OVERALL"}


class RecordError(ValueError):
    """An episode file that cannot be resumed (names the file and line)."""


def episode_record(ep: Episode, evaluation: dict, names: dict) -> dict:
    """The JSON record of a finished, evaluated episode."""
    side = ep.model_side
    scores = None
    if evaluation["ok"]:
        own, other = f"agent_{side + 1}", f"agent_{2 - side}"
        scores = {"model": evaluation[own], "partner": evaluation[other]}
    return {"episode_id": ep.id, "scenario_id": ep.scenario.id,
            "model_side": f"agent_{side + 1}",
            "models": {f"agent_{side + 1}": names["model"], f"agent_{2 - side}": names["partner"],
                       "evaluator": names["evaluator"]},
            "agent_prompt_version": AGENT_PROMPT_VERSION,
            "scenario": ep.scenario.as_dict(), "turns": ep.turns, "num_turns": len(ep.turns),
            "termination": ep.termination, "actions": action_counts(ep),
            "evaluation": evaluation, "scores": scores}


def read_records(path: str) -> tuple[list[dict], Optional[int]]:
    """(records, byte offset of a cut-off last line or None) of an episode file."""
    with open(path, "rb") as f:
        data = f.read()
    records, offset, cut = [], 0, None
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        last = n == len(lines)
        if line.strip():
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or "episode_id" not in obj:
                    raise ValueError("no episode_id")
                records.append(obj)
            except ValueError as e:
                if last:  # written only in part when the run stopped: run it again
                    cut = offset
                else:
                    raise RecordError(f"{path}:{n}: not an episode record ({e}); fix or "
                                      "remove the line, or start a new file") from None
        offset += len(line) + 1
    return records, cut


def _stats(values: list[float]) -> dict:
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": n}


def summary(records: list[dict]) -> dict:
    """Per agent and dimension mean/std/n; counts of episodes, endings, actions, failures."""
    scored = [r for r in records if r["scores"] is not None]
    out = {role: {c: _stats([float(r["scores"][role][c]) for r in scored]) for c in COLUMNS}
           for role in ROLES}
    ends = Counter(reason for r in records for reason in r["termination"])
    kinds = Counter()
    for r in records:
        kinds.update(r["actions"]["by_type"])
    out["counts"] = {
        "episodes": len(records), "scored": len(scored),
        "evaluation": failure_counts([r["evaluation"] for r in records]),
        "termination": dict(sorted(ends.items())),
        "actions": dict(sorted(kinds.items())),
        "repaired_actions": sum(r["actions"]["repaired"] for r in records),
        "malformed_actions": sum(r["actions"]["malformed"] for r in records),
        "mean_turns": (math.fsum(r["num_turns"] for r in records) / len(records)
                       if records else 0.0)}
    return out


def format_table(summ: dict) -> str:
    """The summary as text: one row per dimension, mean / std / n per agent, then the counts."""
    width = max(len(c) for c in COLUMNS) + 7
    head = f"{'dimension':<{width}}" + "".join(f"{r + ' mean':>14}{'std':>8}{'n':>6}"
                                               for r in ROLES)
    lines = [head]
    for c in COLUMNS:
        cells = []
        for role in ROLES:
            s = summ[role][c]
            cells.append(f"{'-':>14}{'-':>8}{0:>6}" if s["n"] == 0 else
                         f"{s['mean']:>14.2f}{s['std']:>8.2f}{s['n']:>6}")
        lines.append(f"{c + ' (' + _TAGS[c] + ')':<{width}}" + "".join(cells))
    k = summ["counts"]
    ev = k["evaluation"]
    lines += ["", f"{k['episodes']} episode(s), {k['scored']} scored; evaluation: {ev['ok']} "
              f"ok ({ev['repaired']} after the repair request), {ev['unparsable']} unparsable, "
              f"{ev['out_of_range']} out of range, {ev['request_failed']} request failed",
              f"endings: {k['termination']}; mean turns {k['mean_turns']:.1f}",
              f"actions: {k['actions']}; {k['repaired_actions']} repaired, "
              f"{k['malformed_actions']} malformed (played as none)"]
    return "\n".join(lines)
