"""Which judge a `JudgeConfig` builds: the registry of judge kinds and `build_judge`.

Kept apart from judges.py (the Judge protocol, configs and the heuristic judges) because the
http and model kinds import judges.py themselves: the registry sits above all three.
"""

from __future__ import annotations

from typing import Callable

from socialr1_jax.social.judges import ROLES, HeuristicJudge, Judge, JudgeConfig, JudgeConfigError
from socialr1_jax.social.rewards import choice_error


def _http_judge(cfg: JudgeConfig, role: str) -> Judge:
    from socialr1_jax.social.http_judge import HttpJudge  # httpx only when asked for
    return HttpJudge(cfg, role)


def _model_judge(cfg: JudgeConfig, role: str) -> Judge:
    from socialr1_jax.social.rm_judge import ModelJudge  # jax and the model only when asked for
    return ModelJudge(cfg, role)


JudgeFactory = Callable[[JudgeConfig, str], Judge]
FACTORIES: dict[str, JudgeFactory] = {  # one per name in judges.JUDGE_KINDS
    "heuristic": HeuristicJudge,
    "http": _http_judge,
    "model": _model_judge,
}


def build_judge(cfg: JudgeConfig, role: str) -> Judge:
    """The judge `cfg.kind` for `role` ('struct' or 'content'); configuration errors (a missing
    API-key variable, an unknown kind) surface here, at start."""
    if role not in ROLES:
        raise JudgeConfigError(choice_error("role", role, ROLES))
    return FACTORIES[cfg.kind](cfg, role)

