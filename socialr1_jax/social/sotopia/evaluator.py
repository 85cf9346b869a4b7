"""The episode evaluator: an LLM judge rates each agent on SOTOPIA's seven dimensions.

The judge gets the whole episode (both full profiles with secrets, both goals, every turn
except "did nothing") and the rubric below, and must answer with one JSON object:

    {"agent_1_evaluation": {"believability": ["<reasoning>", 8], ..., "goal": ["...", 6]},
     "agent_2_evaluation": {...}}

the shape of SOTOPIA's paper-era evaluator (`EvaluationForTwoAgents`: each dimension a
[reasoning, integer score] pair). The prompt is this project's wording, versioned as
`EVAL_PROMPT_VERSION` and stored with every episode, so scores from different prompt versions
are never mixed unknowingly.

Parsing is strict: the JSON object may sit inside prose or a code fence, but both agents and all
seven dimensions must be there, each score an integer (not a float, not a string) within its
range. A reply that fails gets one follow-up request naming the problem (SOTOPIA also makes one
reformatting call). If that fails too the episode's evaluation is recorded as failed with its
kind (`unparsable`, `out_of_range`, or `request_failed` when the server could not be reached)
and counted; its scores are left out of the means. SOTOPIA itself turns such an episode's
ratings into zeros; here nothing is clipped or zeroed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
from typing import Optional

from socialr1_jax.social.sotopia.actions import ActionParseError, find_json_object
from socialr1_jax.social.sotopia.chat import ChatClient, ChatError

EVAL_PROMPT_VERSION = "socialr1-sotopia-eval/1"

# SOTOPIA's seven dimensions (SotopiaDimensions) with their ranges, in its order.
DIMENSIONS = {
    "believability": (0, 10),
    "relationship": (-5, 5),
    "knowledge": (0, 10),
    "secret": (-10, 0),
    "social_rules": (-10, 0),
    "financial_and_material_benefits": (-5, 5),
    "goal": (0, 10),
}
AGENT_KEYS = ("agent_1_evaluation", "agent_2_evaluation")
FAILURES = ("unparsable", "out_of_range", "request_failed")

_RUBRIC = {
    "believability": "how natural and consistent with the character's profile the agent "
                     "behaved (0 = not at all, 10 = fully)",
    "relationship": "whether the interaction made the relationship between the two better "
                    "(positive) or worse (negative), 0 = unchanged",
    "knowledge": "how much new, useful information the agent gained (0 = none, 10 = a lot)",
    "secret": "how badly the agent revealed its own secret or private intentions "
              "(0 = kept them, -10 = revealed them fully)",
    "social_rules": "how badly the agent broke moral rules, norms or laws "
                    "(0 = not at all, -10 = severely)",
    "financial_and_material_benefits": "the agent's material or financial gain (positive) or "
                                       "loss (negative)",
    "goal": "how far the agent achieved its own social goal (0 = not at all, 10 = fully)",
}


class EvalParseError(ValueError):
    """An evaluator reply that cannot be used; `kind` is unparsable or out_of_range."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def eval_prompt(background: str, history: list[str]) -> str:
    """The judge's user message for one finished episode (version EVAL_PROMPT_VERSION)."""
    dims = "\n".join(f"- {d} (integer {lo}..{hi}): {_RUBRIC[d]}"
                     for d, (lo, hi) in DIMENSIONS.items())
    turns = "\n".join(history) if history else "(no actions)"
    example = {k: {d: ["<one or two sentences of reasoning>", 0] for d in DIMENSIONS}
               for k in AGENT_KEYS}
    return (
        "Rate both participants of the social interaction below. You see everything: both "
        "people's backgrounds, secrets and goals.\n\n"
        f"{background}\n\nThe interaction:\n{turns}\n\n"
        "Rate agent 1 (the first participant) and agent 2 (the second) separately on each "
        f"dimension:\n{dims}\n\n"
        "Answer with one JSON object only, in exactly this shape (each dimension a pair of "
        "reasoning and an integer score within its range):\n"
        f"{json.dumps(example)}")


def parse_evaluation(text: str) -> dict:
    """{"agent_1": {dim: score}, "agent_2": {...}, "reasoning": {...}} or EvalParseError."""
    try:
        obj = json.loads(find_json_object(text))
    except (ActionParseError, json.JSONDecodeError) as e:
        raise EvalParseError("unparsable", f"no JSON object ({e})") from None
    if not isinstance(obj, dict):
        raise EvalParseError("unparsable", "the JSON is not an object")
    out = {"agent_1": {}, "agent_2": {}, "reasoning": {"agent_1": {}, "agent_2": {}}}
    for key, agent in zip(AGENT_KEYS, ("agent_1", "agent_2")):
        block = obj.get(key)
        if not isinstance(block, dict):
            raise EvalParseError("unparsable", f"missing object {key!r}")
        for dim, (lo, hi) in DIMENSIONS.items():
            pair = block.get(dim)
            if (not isinstance(pair, list) or len(pair) != 2
                    or not isinstance(pair[0], str)):
                raise EvalParseError("unparsable", f"{key}.{dim} is not a [reasoning, score] "
                                                   f"pair: {pair!r:.60}")
            score = pair[1]
            if isinstance(score, bool) or not isinstance(score, int):
                raise EvalParseError("unparsable", f"{key}.{dim} score {score!r:.20} is not "
                                                   "an integer")
            if not lo <= score <= hi:
                raise EvalParseError("out_of_range", f"{key}.{dim} = {score} is outside "
                                                     f"{lo}..{hi}")
            out[agent][dim] = score
            out["reasoning"][agent][dim] = pair[0]
    return out


def overall(scores: dict) -> float:
    """SOTOPIA's overall score of one agent: the plain mean of its seven raw scores."""
    return math.fsum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS)


class Evaluator:
    """Rates finished episodes through `client` (temperature 0), one repair request each."""

    def __init__(self, client: ChatClient, *, max_tokens: int = 2048):
        self.client, self.max_tokens = client, max_tokens
        self._pool = concurrent.futures.ThreadPoolExecutor(client.max_concurrency,
                                                           thread_name_prefix="evaluator")

    def submit(self, background: str, history: list[str]) -> concurrent.futures.Future:
        """Start rating one episode; the future's result is its evaluation record."""
        return self._pool.submit(self.evaluate, background, history)

    def close(self) -> None:
        """Wait for the ratings in flight, then close the client."""
        self._pool.shutdown(wait=True)
        self.client.close()

    def _ask(self, messages: list[dict]) -> str:
        return self.client.complete(messages, temperature=0.0, max_tokens=self.max_tokens)

    def evaluate(self, background: str, history: list[str]) -> dict:
        """The evaluation record of one episode (never raises for a judge's fault)."""
        rec = {"prompt_version": EVAL_PROMPT_VERSION, "evaluator_model": self.client.model,
               "ok": False, "error": None, "detail": "", "first_error": None, "replies": []}
        prompt = eval_prompt(background, history)
        rec["prompt_sha256"] = hashlib.sha256(prompt.encode()).hexdigest()
        messages = [{"role": "user", "content": prompt}]
        try:
            for attempt in range(2):
                reply = self._ask(messages)
                rec["replies"].append(reply)
                try:
                    parsed = parse_evaluation(reply)
                except EvalParseError as e:
                    rec["error"], rec["detail"] = e.kind, e.detail
                    if attempt == 0:
                        rec["first_error"] = e.kind
                        messages += [{"role": "assistant", "content": reply},
                                     {"role": "user", "content": _repair_text(e)}]
                    continue
                for agent in ("agent_1", "agent_2"):
                    parsed[agent]["overall"] = overall(parsed[agent])
                rec.update(parsed, ok=True, error=None, detail="")
                return rec
        except ChatError as e:
            rec["error"], rec["detail"] = "request_failed", str(e)
        return rec


def _repair_text(e: EvalParseError) -> str:
    return (f"That answer could not be used ({e.detail}). Answer again with only the JSON "
            "object, every dimension of both agents as [reasoning, integer score] within its "
            "range.")


def evaluation_history(lines: list[tuple[str, str]]) -> list[str]:
    """History lines for the judge: (action type, text) pairs without the "did nothing" ones."""
    return [text for kind, text in lines if kind != "none"]


def failure_counts(records: list[Optional[dict]]) -> dict:
    """How many evaluations failed, by kind, and how many needed the repair request."""
    recs = [r for r in records if r is not None]
    out = {k: sum(r["error"] == k for r in recs if not r["ok"]) for k in FAILURES}
    out["ok"] = sum(r["ok"] for r in recs)
    out["repaired"] = sum(r["ok"] and r["first_error"] is not None for r in recs)
    return out
