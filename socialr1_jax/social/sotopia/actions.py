"""SOTOPIA's actions: five types, one JSON object per turn, and the prompt that asks for one.

An action is `{"action_type": T, "argument": A}` with T one of `ACTION_TYPES`; A is the
utterance (speak), the gesture (non-verbal communication) or the physical action (action), and
empty for none and leave. `parse_action` is strict about the object (the type must be one of
the five, the argument a string) but finds it inside the reply: a reasoning model's
`<think>...</think>` block and a Markdown code fence around the JSON are allowed.

The agent prompt (`agent_prompt`, version `AGENT_PROMPT_VERSION`) is this project's own wording
of what SOTOPIA tells an agent: who it plays, the scenario, the profiles and goals it may see,
the history, the turn number, the action types and when leaving is right, and the JSON format.
A reply that does not parse gets one repair prompt (`repair_prompt`) to the same agent, quoting
the reply and the problem; if that fails too the action is `none` and counted.
"""

from __future__ import annotations

import dataclasses
import json
import re

ACTION_TYPES = ("none", "speak", "non-verbal communication", "action", "leave")
NO_ARGUMENT = ("none", "leave")
AGENT_PROMPT_VERSION = "socialr1-sotopia-agent/1"

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


class ActionParseError(ValueError):
    """A reply that is not one valid action (the message says what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Action:
    """One agent's action in one turn."""

    action_type: str
    argument: str = ""

    def as_dict(self) -> dict:
        """The JSON form SOTOPIA uses."""
        return {"action_type": self.action_type, "argument": self.argument}


NONE = Action("none", "")


def find_json_object(text: str) -> str:
    """The text from the first '{' to its matching '}' (strings and escapes respected)."""
    start = text.find("{")
    if start < 0:
        raise ActionParseError("no JSON object in the reply")
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    raise ActionParseError("the JSON object is not closed")


def parse_action(text: str) -> Action:
    """The action in a model's reply, or ActionParseError saying why there is none."""
    body = _THINK.sub("", text)
    try:
        obj = json.loads(find_json_object(body))
    except json.JSONDecodeError as e:
        raise ActionParseError(f"invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ActionParseError("the JSON is not an object")
    kind = obj.get("action_type")
    if kind not in ACTION_TYPES:
        raise ActionParseError(f"action_type {kind!r} is not one of {', '.join(ACTION_TYPES)}")
    arg = obj.get("argument", "" if kind in NO_ARGUMENT else None)
    if not isinstance(arg, str):
        raise ActionParseError(f"argument must be a string, got {arg!r:.40}")
    if kind not in NO_ARGUMENT and not arg.strip():
        raise ActionParseError(f"action_type {kind!r} needs a non-empty argument")
    return Action(kind, "" if kind in NO_ARGUMENT else arg)


def render_action(name: str, action: Action) -> str:
    """One history line for `name`'s action (the way SOTOPIA renders each type)."""
    kind, arg = action.action_type, action.argument
    if kind == "speak":
        return f'{name} said: "{arg}"'
    if kind == "non-verbal communication":
        return f"{name} [non-verbal communication] {arg}"
    if kind == "action":
        return f"{name} [action] {arg}"
    if kind == "leave":
        return f"{name} left the conversation"
    return f"{name} did nothing"


def background_text(scenario: str, view: dict) -> str:
    """The scenario, participants, profiles and goals of a view (scenarios.agent_view or
    omniscient_view) as text."""
    a, b = view["names"]
    lines = [f"Scenario: {scenario}", f"Participants: {a} and {b}"]
    for name, profile in zip(view["names"], view["profiles"]):
        lines.append(f"{name}'s background: {profile}")
    for name, goal in zip(view["names"], view["goals"]):
        lines.append(f"{name}'s goal: {goal}")
    return "\n".join(lines)


def agent_prompt(name: str, background: str, history: list[str], turn: int) -> str:
    """The user message asking `name` for its action at `turn` (0-based, shown 1-based)."""
    past = "\n".join(history) if history else "(nothing has happened yet)"
    return (
        f"You are {name}, one of the two people in the social situation below. Stay in "
        f"character and act so as to reach {name}'s goal; the other person's goal is not "
        "known to you.\n\n"
        f"{background}\n\n"
        f"What has happened so far (turn by turn):\n{past}\n\n"
        f"This is turn {turn + 1}. Choose {name}'s next action. The action types are:\n"
        "- speak: argument = what you say\n"
        "- non-verbal communication: argument = a gesture or facial expression\n"
        "- action: argument = a physical action\n"
        "- leave: argument empty; end the conversation, once your goal is reached or can no "
        "longer be reached\n"
        "- none: argument empty; do nothing this turn\n\n"
        "Answer with a single JSON object and nothing else, for example "
        '{"action_type": "speak", "argument": "Good morning!"}')


def repair_prompt(original: str, reply: str, problem: str) -> str:
    """A second request after an unparsable reply: the same prompt, the reply and the problem."""
    return (f"{original}\n\nYour previous answer was:\n{reply[:2000]}\n\nIt could not be read "
            f"as an action ({problem}). Answer again with exactly one JSON object with the "
            'keys "action_type" and "argument".')
