"""Many SOTOPIA episodes advanced together: one batched call per turn and agent backend.

An episode is one scenario with the tested model on one side (`model_side` 0 = agent 1) and
the partner on the other. Turns are round-robin from agent 1 (SOTOPIA's runners): at turn t
agent t % 2 acts and the other's action is `none`. All episodes of a wave start together, so at
every turn the episodes whose acting agent is the same backend go to it in ONE call
(`LocalAgent`: one sampler call per `batch_size` prompts; `EndpointAgent`: concurrent requests);
a self-play run (partner = the model) puts both sides of every episode into that one call.

Stopping rules are SOTOPIA's (`RuleBasedTerminatedEvaluator(max_turn_number=20,
max_stale_turn=2)`), applied to the same record SOTOPIA checks: after every turn the actions of
BOTH agents are appended in agent order, the silent agent's as `none`; the episode ends when
`max_turns` turns have been played, when an agent leaves, or when more than `max_stale` `none`s
end that record. Because the silent agent's `none` counts, one `none` by agent 2 right after
agent 1 acted already makes three in a row (agent 1 needs two, one per its turn and agent 2's);
docs/episodes.md spells this out. A prompt that no longer fits the local model's context ends
its episode with `context_limit`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from socialr1_jax.social.sotopia.actions import (Action, ActionParseError, NONE, agent_prompt,
                                                 background_text, parse_action, render_action,
                                                 repair_prompt)
from socialr1_jax.social.sotopia.chat import ChatClient, ChatError
from socialr1_jax.social.sotopia.scenarios import Scenario, agent_view

MAX_TURNS, MAX_STALE = 20, 2


@dataclasses.dataclass
class Episode:
    """One episode's state; `turns` holds one record per turn played."""

    id: str
    scenario: Scenario
    model_side: int
    turns: list = dataclasses.field(default_factory=list)
    record: list = dataclasses.field(default_factory=list)  # action types, both agents per turn
    termination: list = dataclasses.field(default_factory=list)
    failure: Optional[str] = None  # an agent's request failed: the episode is not kept

    @property
    def done(self) -> bool:
        """Whether the episode has ended (for any reason)."""
        return bool(self.termination) or self.failure is not None

    def history(self) -> list[str]:
        """The rendered actions so far, "did nothing" included (what the agents see)."""
        return [f"Turn {t['turn'] + 1}: {t['text']}" for t in self.turns]


def stop_reasons(ep: Episode, max_turns: int = MAX_TURNS, max_stale: int = MAX_STALE) -> list:
    """Why the episode ends after its last turn ([] = it goes on); SOTOPIA's three rules."""
    reasons = []
    if ep.turns and ep.turns[-1]["action"]["action_type"] == "leave":
        reasons.append("leave")
    stale = 0
    for kind in reversed(ep.record):
        if kind != "none":
            break
        stale += 1
    if stale > max_stale:
        reasons.append("stale")
    if len(ep.turns) >= max_turns:
        reasons.append("max_turns")
    return reasons


class ContextFull(Exception):
    """The prompt does not fit the local model's context with room for the reply."""


class EndpointAgent:
    """An agent served by an OpenAI-compatible endpoint."""

    def __init__(self, client: ChatClient, *, temperature: float = 0.7, max_tokens: int = 512):
        self.client, self.temperature, self.max_tokens = client, temperature, max_tokens
        self.name = client.model

    def generate(self, prompts: Sequence[str]) -> list:
        """Replies (str, or the ChatError a request ended with), all requests in flight at once."""
        return self.client.complete_many([[{"role": "user", "content": p}] for p in prompts],
                                         temperature=self.temperature, max_tokens=self.max_tokens)


class LocalAgent:
    """An agent run in-process: our checkpoint through the chat template and the sampler.

    Each call samples its prompts `batch_size` at a time; a short batch is padded to `width`
    rows (repeating its last prompt) so every call has one compiled shape.
    """

    def __init__(self, model, tokenizer, *, eos_ids, pad_id, name: str, batch_size: int = 32,
                 width: Optional[int] = None, max_new_tokens: int = 512,
                 temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                 mesh=None):
        self.model, self.tok, self.name = model, tokenizer, name
        self.eos, self.pad, self.mesh = list(eos_ids), pad_id, mesh
        self.batch_size, self.width = batch_size, width or batch_size
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.top_p, self.top_k, self.seed = top_p, top_k, seed
        self.calls = 0
        self.tokens_out = 0

    def _ids(self, prompt: str):
        from socialr1_jax.rollout import tokenizer as tk

        ids = tk.encode(self.tok, tk.chat_text(self.tok, prompt))
        if len(ids) + self.max_new_tokens > self.model.cfg.max_position_embeddings:
            return ContextFull(f"{len(ids)} prompt tokens + {self.max_new_tokens} new > "
                               f"{self.model.cfg.max_position_embeddings} positions")
        return ids

    def generate(self, prompts: Sequence[str]) -> list:
        """Replies (str, or ContextFull for a prompt that does not fit), batched."""
        from socialr1_jax.rollout.sampler import sample

        encoded = [self._ids(p) for p in prompts]
        out: list = list(encoded)
        todo = [i for i, e in enumerate(encoded) if not isinstance(e, ContextFull)]
        stops = set(self.eos)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            rows = [encoded[i] for i in idx]
            width = max(self.width, len(rows))
            rows = rows + [rows[-1]] * (width - len(rows))
            seed = int(np.random.SeedSequence([self.seed, self.calls]).generate_state(1)[0] >> 1)
            self.calls += 1
            res = sample(self.model, rows, max_new_tokens=self.max_new_tokens,
                         temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                         num_samples=1, eos_ids=self.eos, seed=seed, mesh=self.mesh,
                         pad_id=self.pad)
            tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
            for j, i in enumerate(idx):
                ids = tokens[j, :lengths[j]].tolist()
                self.tokens_out += len(ids)
                if ids and ids[-1] in stops:
                    ids = ids[:-1]
                out[i] = self.tok.decode(ids, skip_special_tokens=True)
        return out


def _call_backends(groups: dict, pool: concurrent.futures.Executor) -> dict:
    """{backend: [prompts]} -> {backend: [replies]}, every backend working at the same time."""
    futures = {b: pool.submit(b.generate, prompts) for b, (_, prompts) in groups.items()}
    return {b: f.result() for b, f in futures.items()}


def _ask(items: list, pool) -> list:
    """items: (episode, backend, prompt); the replies in the same order, one call per backend."""
    groups: dict = {}
    for n, (_, backend, prompt) in enumerate(items):
        groups.setdefault(backend, ([], []))
        groups[backend][0].append(n)
        groups[backend][1].append(prompt)
    replies = _call_backends(groups, pool)
    out = [None] * len(items)
    for backend, (positions, _) in groups.items():
        for n, r in zip(positions, replies[backend]):
            out[n] = r
    return out


def _apply(ep: Episode, actor: int, action: Action, raw: list, *, repaired: bool,
           malformed: bool, max_turns: int, max_stale: int) -> None:
    t = len(ep.turns)
    name = ep.scenario.agents[actor].name
    ep.turns.append({"turn": t, "agent": actor + 1, "name": name, "action": action.as_dict(),
                     "text": render_action(name, action), "raw": raw,
                     "repaired": repaired, "malformed": malformed})
    ep.record += [action.action_type if i == actor else "none" for i in (0, 1)]
    ep.termination = stop_reasons(ep, max_turns, max_stale)


def step(episodes: Sequence[Episode], agents: dict, pool, *, max_turns: int = MAX_TURNS,
         max_stale: int = MAX_STALE) -> None:
    """Play one turn of every unfinished episode: one batched call per backend, then one
    batched repair call for the replies that did not parse."""
    live = [ep for ep in episodes if not ep.done]
    items, actors = [], []
    for ep in live:
        actor = len(ep.turns) % 2
        backend = agents["model"] if actor == ep.model_side else agents["partner"]
        name = ep.scenario.agents[actor].name
        background = background_text(ep.scenario.scenario, agent_view(ep.scenario, actor))
        items.append((ep, backend, agent_prompt(name, background, ep.history(), len(ep.turns))))
        actors.append(actor)
    replies = _ask(items, pool)
    parsed, retry = [None] * len(live), []
    for n, (item, reply) in enumerate(zip(items, replies)):
        parsed[n] = _read(reply)
        if isinstance(parsed[n], ActionParseError):
            retry.append(n)
    fixes = _ask([(items[n][0], items[n][1], repair_prompt(items[n][2], replies[n],
                                                           str(parsed[n]))) for n in retry], pool)
    fixed = dict(zip(retry, fixes))
    for n, ep in enumerate(live):
        raw = [replies[n]] if isinstance(replies[n], str) else []
        result, repaired = parsed[n], False
        if n in fixed:
            raw += [fixed[n]] if isinstance(fixed[n], str) else []
            result, repaired = _read(fixed[n]), True
        if isinstance(result, ContextFull):
            ep.termination = ["context_limit"]
        elif isinstance(result, ChatError):
            ep.failure = f"agent {actors[n] + 1}: {result}"
        else:
            malformed = isinstance(result, ActionParseError)
            _apply(ep, actors[n], NONE if malformed else result, raw,
                   repaired=repaired and not malformed, malformed=malformed,
                   max_turns=max_turns, max_stale=max_stale)


def _read(reply):
    """A reply as an Action, or the failure it is (ActionParseError, ChatError, ContextFull)."""
    if not isinstance(reply, str):
        return reply
    try:
        return parse_action(reply)
    except ActionParseError as e:
        return e


def action_counts(ep: Episode) -> dict:
    """Actions per type, repaired ones and malformed ones (turned into none) of an episode."""
    kinds = Counter(t["action"]["action_type"] for t in ep.turns)
    return {"by_type": dict(sorted(kinds.items())),
            "repaired": sum(t["repaired"] for t in ep.turns),
            "malformed": sum(t["malformed"] for t in ep.turns)}
