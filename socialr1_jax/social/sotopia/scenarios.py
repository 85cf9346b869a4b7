"""Scenarios and agent profiles in SOTOPIA's schema, read from JSONL, and each agent's view.

One line = one episode's setting: SOTOPIA's `EnvironmentProfile` fields (`codename`, `source`,
`scenario`, `agent_goals` [two strings], `relationship` 0..5 or its name) plus `agents`, the two
`AgentProfile`s (`first_name`, `last_name`, `age`, `occupation`, `gender`, `gender_pronoun`,
`public_info`, `personality_and_values`, `secret`, and optional `big_five`, `moral_values`,
`schwartz_personal_values`, `decision_making_style`, `mbti`) in the order agent 1, agent 2.
`id` (or SOTOPIA's `pk`, else `codename`) names the scenario; ids must be unique.

What an agent sees of a profile follows SOTOPIA's relationship rule: its own profile in full; of
the partner nothing when they are strangers, the name when they know each other by name, the
name, age, gender, occupation, pronouns and public info when acquainted, and also personality
and values for friends, partners and family. A secret is only ever shown to its owner. The
partner's goal is shown as "Unknown". The evaluator sees everything.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

RELATIONSHIPS = ("stranger", "know_by_name", "acquaintance", "friend", "romantic_relationship",
                 "family_member")
STRANGER, KNOW_BY_NAME, ACQUAINTANCE = 0, 1, 2

_REQUIRED_PROFILE = ("first_name", "last_name", "age", "occupation", "gender", "gender_pronoun",
                     "public_info", "personality_and_values", "secret")
_OPTIONAL_PROFILE = ("big_five", "moral_values", "schwartz_personal_values",
                     "decision_making_style", "mbti", "model_id", "pk", "tag")
_GENDER_WORD = {"Man": "male", "Woman": "female", "Nonbinary": "nonbinary"}


class ScenarioError(ValueError):
    """A scenario file that cannot be used (names the file, the line and the field)."""


@dataclasses.dataclass(frozen=True)
class AgentProfile:
    """One SOTOPIA agent profile (the fields the prompts use; the rest kept in `extra`)."""

    first_name: str
    last_name: str
    age: int
    occupation: str
    gender: str
    gender_pronoun: str
    public_info: str
    personality_and_values: str
    secret: str
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """First and last name, as SOTOPIA names an agent in the history."""
        return f"{self.first_name} {self.last_name}".strip()

    def public_part(self) -> str:
        """Age, gender, occupation, pronouns and public info (what an acquaintance knows)."""
        gender = _GENDER_WORD.get(self.gender, self.gender.lower())
        return (f"{self.name} is a {self.age}-year-old {gender} {self.occupation.lower()}. "
                f"Pronouns: {self.gender_pronoun}. {self.public_info}").strip()

    def full(self, with_secret: bool = True) -> str:
        """The whole profile; the secret only when `with_secret`."""
        text = f"{self.public_part()} Personality and values: {self.personality_and_values}"
        return f"{text} Secret: {self.secret}" if with_secret else text


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One setting: SOTOPIA's EnvironmentProfile and its two agents (agent 1 first)."""

    id: str
    scenario: str
    agent_goals: tuple[str, str]
    relationship: int
    agents: tuple[AgentProfile, AgentProfile]
    codename: str = ""
    source: str = ""

    def as_dict(self) -> dict:
        """The scenario as written to the episode log."""
        d = dataclasses.asdict(self)
        d["relationship"] = RELATIONSHIPS[self.relationship]
        return d


def describe_partner(profile: AgentProfile, relationship: int) -> str:
    """What an agent knows of its partner under `relationship` (SOTOPIA's rule, no secret)."""
    if relationship == STRANGER:
        return "Unknown"
    if relationship == KNOW_BY_NAME:
        return f"{profile.name} (nothing else is known)"
    if relationship == ACQUAINTANCE:
        return profile.public_part()
    return profile.full(with_secret=False)


def agent_view(sc: Scenario, me: int) -> dict:
    """The background agent `me` (0 or 1) plays with: names, both profiles as visible, goals."""
    other = 1 - me
    profiles = [None, None]
    profiles[me] = sc.agents[me].full(with_secret=True)
    profiles[other] = describe_partner(sc.agents[other], sc.relationship)
    goals = [None, None]
    goals[me], goals[other] = sc.agent_goals[me], "Unknown"
    return {"names": [a.name for a in sc.agents], "profiles": profiles, "goals": goals}


def omniscient_view(sc: Scenario) -> dict:
    """Everything, as the evaluator sees it (both profiles with secrets, both goals)."""
    return {"names": [a.name for a in sc.agents],
            "profiles": [a.full(with_secret=True) for a in sc.agents],
            "goals": list(sc.agent_goals)}


# -- reading ------------------------------------------------------------------------------------

def _str(where: str, obj: dict, key: str, *, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise ScenarioError(f"{where}: missing field {key!r}")
        return ""
    if not isinstance(obj[key], str):
        raise ScenarioError(f"{where}: field {key!r} must be a string, got {obj[key]!r:.60}")
    return obj[key]


def _profile(where: str, obj) -> AgentProfile:
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: must be an object (an AgentProfile), got {obj!r:.60}")
    age = obj.get("age")
    if "age" not in obj:
        raise ScenarioError(f"{where}: missing field 'age'")
    if isinstance(age, bool) or not isinstance(age, int) or age < 0:
        raise ScenarioError(f"{where}: field 'age' must be a non-negative integer, got {age!r}")
    fields = {k: _str(where, obj, k) for k in _REQUIRED_PROFILE if k != "age"}
    unknown = sorted(set(obj) - set(_REQUIRED_PROFILE) - set(_OPTIONAL_PROFILE))
    if unknown:
        raise ScenarioError(f"{where}: unknown field {unknown[0]!r} (an AgentProfile has "
                            f"{', '.join(_REQUIRED_PROFILE + _OPTIONAL_PROFILE)})")
    extra = {k: obj[k] for k in _OPTIONAL_PROFILE if k in obj}
    return AgentProfile(age=age, extra=extra, **fields)


def _relationship(where: str, value) -> int:
    if isinstance(value, str) and value in RELATIONSHIPS:
        return RELATIONSHIPS.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(RELATIONSHIPS):
        return value
    raise ScenarioError(f"{where}: field 'relationship' must be 0..5 or one of "
                        f"{', '.join(RELATIONSHIPS)}, got {value!r}")


def parse_scenario(where: str, obj) -> Scenario:
    """One scenario object (see the module docstring); errors name `where` and the field."""
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = _str(where, obj, "scenario")
    if not text.strip():
        raise ScenarioError(f"{where}: field 'scenario' is empty")
    goals = obj.get("agent_goals")
    if (not isinstance(goals, list) or len(goals) != 2
            or not all(isinstance(g, str) and g.strip() for g in goals)):
        raise ScenarioError(f"{where}: field 'agent_goals' must be a list of two non-empty "
                            f"strings, got {goals!r:.80}")
    agents = obj.get("agents")
    if not isinstance(agents, list) or len(agents) != 2:
        raise ScenarioError(f"{where}: field 'agents' must be a list of two agent profiles")
    profiles = tuple(_profile(f"{where}: agents[{i}]", a) for i, a in enumerate(agents))
    if profiles[0].name == profiles[1].name:
        raise ScenarioError(f"{where}: field 'agents': both agents are named "
                            f"{profiles[0].name!r}; the history could not tell them apart")
    if "relationship" not in obj:
        raise ScenarioError(f"{where}: missing field 'relationship'")
    ident = obj.get("id", obj.get("pk", obj.get("codename")))
    if not isinstance(ident, str) or not ident:
        raise ScenarioError(f"{where}: needs an 'id' (or 'pk' or 'codename') string")
    return Scenario(id=ident, scenario=text, agent_goals=(goals[0], goals[1]),
                    relationship=_relationship(where, obj["relationship"]), agents=profiles,
                    codename=_str(where, obj, "codename", required=False),
                    source=_str(where, obj, "source", required=False))


def load_scenarios(path: str, limit: Optional[int] = None) -> list[Scenario]:
    """The scenarios of a JSONL file (blank lines skipped); errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text ({e.reason})") from None
    out, seen = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScenarioError(f"{where}: not valid JSON ({e.msg})") from None
        sc = parse_scenario(where, obj)
        if sc.id in seen:
            raise ScenarioError(f"{where}: id {sc.id!r} already used on line {seen[sc.id]}")
        seen[sc.id] = n
        out.append(sc)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ScenarioError(f"{path}: no scenarios")
    return out
