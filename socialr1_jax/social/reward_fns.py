"""Reward functions at the string level, the way TRL users write them, and the set a run uses.

A reward function is any callable

    fn(prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]

(one float per completion; `rows[i]` is the data row completion i answers, with at least `gold`,
`story`, `question`, `options`, `id`). A function that also takes `step` (or **kwargs) gets the
global training step as `step=`. A function may return a `RewardList` (a list of floats that also
carries per-term values), and each term is then logged as a metric.

A run names its functions in config (`RewardSetConfig.functions`): `social_r1` is the built-in
Social-R1 reward (`SocialR1Reward`, its judges from `struct_judge` / `content_judge`), anything
else is `module:function`. Their weighted sum is the score of a completion. The trainer's entry
point:

    rewards = RewardSet.from_config(cfg.reward)    # builds the judges; API keys checked here
    rewards.check()                                # fail fast on an unreachable judge
    scores, metrics = rewards.score(prompts, completions, rows, step)
    future = rewards.submit(prompts, completions, rows, step)   # or overlap with device work
    batch = future.result()                        # RewardBatch(scores, metrics, terms)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import inspect
import logging
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from socialr1_jax.social.judge_kinds import build_judge
from socialr1_jax.social.judges import Judge, JudgeConfig, JudgeItem, JudgeUnavailable
from socialr1_jax.social.rewards import (TERMS, RewardConfig, check_variant, parse_completion,
                                         score_parsed)
from socialr1_jax.social.answers import normalize_letter

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float]]


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned the wrong number of scores or a non-number
    (the message names the function and, where it can, the item)."""


class RewardList(list):
    """A list of floats (what a reward function returns) with `terms`: name -> per-item values,
    and `metrics`: name -> one number for the batch (e.g. judge failure counts)."""

    def __init__(self, values, terms: Optional[dict] = None, metrics: Optional[dict] = None):
        super().__init__(values)
        self.terms = dict(terms or {})
        self.metrics = dict(metrics or {})


@dataclasses.dataclass(frozen=True)
class RewardSetConfig:
    """The rewards of a run: `functions` ('social_r1' or 'module:function'), their `weights`
    (empty = all 1.0), the Social-R1 reward's numbers (`social`) and its two judges. A failed
    structure call scores 0 by default; a failed content call -2 (adj_cont = 0)."""

    functions: tuple[str, ...] = ("social_r1",)
    weights: tuple[float, ...] = ()
    social: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    struct_judge: JudgeConfig = dataclasses.field(default_factory=JudgeConfig)
    content_judge: JudgeConfig = dataclasses.field(
        default_factory=lambda: JudgeConfig(fallback=-2.0))

    def __post_init__(self):
        if not self.functions:
            raise ValueError("reward.functions is empty; name at least one (e.g. social_r1)")
        if self.weights and len(self.weights) != len(self.functions):
            raise ValueError(f"reward.weights has {len(self.weights)} entries for "
                             f"{len(self.functions)} reward.functions")
        if any(not math.isfinite(w) for w in self.weights):
            raise ValueError(f"reward.weights={list(self.weights)} must be finite")
        if len(set(self.functions)) != len(self.functions):
            raise ValueError(f"reward.functions={list(self.functions)} names one twice")


def _row_id(row: Any, i: int) -> str:
    rid = row.get("id") if isinstance(row, dict) else None
    return f"#{i} (id {rid})" if rid not in (None, "") else f"#{i}"


class SocialR1Reward:
    """The Social-R1 reward as a reward function (see `rewards.py` for the formula).

    Only completions in the right format are sent to the judges (a gated score is 0 whatever
    they say), both judges at once. Returns a `RewardList` whose terms are `rewards.TERMS` and whose
    metrics are the judges' counters (`judge/struct/...`, `judge/content/...`).
    """

    def __init__(self, cfg: RewardConfig, struct_judge: Optional[Judge] = None,
                 content_judge: Optional[Judge] = None):
        use_s, use_c, _ = check_variant(cfg.variant)
        if use_s and struct_judge is None:
            raise ValueError(f"variant {cfg.variant} needs a structure judge")
        if use_c and content_judge is None:
            raise ValueError(f"variant {cfg.variant} needs a content judge")
        self.cfg = cfg
        self.judges = {"struct": struct_judge if use_s else None,
                       "content": content_judge if use_c else None}
        self.__name__ = "social_r1"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 rows: Sequence[dict], *, step: int = 0) -> RewardList:
        parsed = [parse_completion(c) for c in completions]
        golds = []
        for i, row in enumerate(rows):
            try:
                golds.append(normalize_letter(row["gold"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"row {_row_id(row, i)}: no usable 'gold' letter ({e})") \
                    from None
        judged = [i for i, p in enumerate(parsed) if p.format_ok] \
            if self.cfg.variant != "socialR0" else []
        items = [JudgeItem(story=str(rows[i].get("story", "")),
                           question=str(rows[i].get("question", "")),
                           options=tuple(str(o) for o in rows[i].get("options", ()) or ()),
                           reasoning=parsed[i].think, id=_row_id(rows[i], i)) for i in judged]
        # Both judges start before either is waited for: their requests overlap.
        futures = {role: j.submit(items) for role, j in self.judges.items()
                   if j is not None and items}
        values = {role: np.full(len(parsed), np.nan) for role in ("struct", "content")}
        metrics: dict[str, float] = {}
        for role, fut in futures.items():
            res = fut.result()
            values[role][judged] = res.scores
            metrics.update({f"judge/{role}/{k}": v for k, v in res.counts.items()})
            metrics[f"judge/{role}/failed_share"] = float(res.failed.mean()) if judged else 0.0
        terms = {t: np.empty(len(parsed)) for t in TERMS}
        for i, p in enumerate(parsed):
            s = values["struct"][i]
            c = values["content"][i]
            out = score_parsed(p, golds[i], step=step, cfg=self.cfg,
                               struct=None if math.isnan(s) else float(s),
                               content=None if math.isnan(c) else float(c))
            for t in TERMS:
                terms[t][i] = out[t]
        return RewardList(terms["score"].tolist(), terms=terms, metrics=metrics)


def resolve_function(name: str) -> RewardFn:
    """The callable `module:function` names (ValueError naming `name` when it cannot be had)."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"reward function {name!r}: expected 'social_r1' or 'module:function'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reward function {name!r}: cannot import {module} ({e})") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward function {name!r}: {module} has no {attr}")
    if not callable(fn):
        raise ValueError(f"reward function {name!r} is not callable")
    return fn


def _takes_step(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "step" or p.kind is p.VAR_KEYWORD for p in params)


@dataclasses.dataclass
class RewardBatch:
    """The rewards of one batch: scores [n] (the weighted sum), metrics (batch means of every
    function and term, judge counters) and terms (name -> per-item values, for sample logs)."""

    scores: np.ndarray
    metrics: dict[str, float]
    terms: dict[str, np.ndarray]


class RewardSet:
    """Weighted reward functions scored together; `submit` runs them off the caller's thread."""

    def __init__(self, functions: Sequence[tuple[str, RewardFn, float]],
                 judges: Sequence[Judge] = ()):
        if not functions:
            raise ValueError("a RewardSet needs at least one reward function")
        self.functions = [(name, fn, float(w), _takes_step(fn)) for name, fn, w in functions]
        self.judges = list(judges)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rewards")

    @classmethod
    def from_config(cls, cfg: RewardSetConfig) -> "RewardSet":
        """Build the functions and the judges they need (a judge's config error is raised here,
        e.g. an unset API-key variable: at start, not at the first step)."""
        weights = cfg.weights or (1.0,) * len(cfg.functions)
        functions, judges = [], []
        try:
            for name, w in zip(cfg.functions, weights):
                if name == "social_r1":
                    use_s, use_c, _ = check_variant(cfg.social.variant)
                    sj = build_judge(cfg.struct_judge, "struct") if use_s else None
                    cj = build_judge(cfg.content_judge, "content") if use_c else None
                    judges += [j for j in (sj, cj) if j is not None]
                    fn = SocialR1Reward(cfg.social, sj, cj)
                else:
                    fn = resolve_function(name)
                functions.append((name, fn, w))
        except BaseException:
            for j in judges:
                j.close()
            raise
        return cls(functions, judges)

    def check(self) -> dict[str, str]:
        """Probe every judge. An unreachable judge without a fallback raises JudgeUnavailable;
        with a fallback it is logged and reported as 'unreachable (fallback x)'."""
        status = {}
        for j in self.judges:
            try:
                j.check()
                status[j.role] = "ok"
            except JudgeUnavailable as e:
                if j.fallback is None:
                    raise
                log.warning("%s; its items will score the fallback %s", e, j.fallback)
                status[j.role] = f"unreachable (fallback {j.fallback})"
        return status

    def _run(self, prompts, completions, rows, step) -> RewardBatch:
        n = len(completions)
        if len(prompts) != n or len(rows) != n:
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {len(rows)} rows: "
                             "one prompt and one row per completion")
        total = np.zeros(n)
        metrics: dict[str, float] = {}
        terms: dict[str, np.ndarray] = {}
        for name, fn, w, takes_step in self.functions:
            try:
                out = fn(list(prompts), list(completions), list(rows),
                         **({"step": step} if takes_step else {}))
            except Exception as e:
                raise RewardFunctionError(f"reward function {name!r} raised "
                                          f"{type(e).__name__}: {e}") from e
            values = _as_scores(name, out, n, rows)
            total += w * values
            metrics[f"reward/{name}"] = float(values.mean()) if n else 0.0
            terms[name] = values
            for t, v in getattr(out, "terms", {}).items():
                v = np.asarray(v, dtype=np.float64)
                terms[f"{name}/{t}"] = v
                if t != "score":
                    metrics[f"reward/{name}/{t}"] = float(np.nanmean(v)) if np.isfinite(v).any() \
                        else math.nan
            metrics.update(getattr(out, "metrics", {}))
        metrics["reward/total"] = float(total.mean()) if n else 0.0
        return RewardBatch(total, metrics, terms)

    def submit(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict],
               step: int) -> concurrent.futures.Future:
        """Start scoring in the background; the future's result is a RewardBatch."""
        return self._pool.submit(self._run, list(prompts), list(completions), list(rows), step)

    def score(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict],
              step: int) -> tuple[np.ndarray, dict[str, float]]:
        """(scores [n], metrics) of one batch: the weighted sum and the per-term batch means."""
        batch = self.submit(prompts, completions, rows, step).result()
        return batch.scores, batch.metrics

    def close(self) -> None:
        """Stop the background thread and the judges."""
        self._pool.shutdown(wait=True)
        for j in self.judges:
            j.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_scores(name: str, out: Any, n: int, rows: Sequence[dict]) -> np.ndarray:
    """A function's output as float64 [n], or RewardFunctionError naming it and the item."""
    try:
        k = len(out)
    except TypeError:
        raise RewardFunctionError(f"reward function {name!r} returned {type(out).__name__}, "
                                  "not a list of floats") from None
    if k != n:
        raise RewardFunctionError(f"reward function {name!r} returned {k} scores for "
                                  f"{n} completions")
    values = np.empty(n)
    for i, v in enumerate(out):
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            values[i] = math.nan
        if not math.isfinite(values[i]):
            raise RewardFunctionError(f"reward function {name!r} returned {v!r} for item "
                                      f"{_row_id(rows[i], i)}: not a finite number")
    return values
