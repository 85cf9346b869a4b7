"""Play episodes in waves, rate each as it ends, and hand every record to `write` at once.

`play` runs `parallel` episodes at a time (`episodes.step` per turn), submits each finished
episode to the evaluator (which works on its own threads while the next turns are generated)
and passes each rated episode's record to `write` as soon as its rating comes back, so a run
that stops loses only the episodes still in flight. Episodes whose agent request failed are
returned, not written: `--resume` plays them again.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Optional, Sequence

from socialr1_jax.social.sotopia.actions import background_text
from socialr1_jax.social.sotopia.episodes import MAX_STALE, MAX_TURNS, Episode, step
from socialr1_jax.social.sotopia.evaluator import Evaluator, evaluation_history
from socialr1_jax.social.sotopia.report import episode_record
from socialr1_jax.social.sotopia.scenarios import omniscient_view


def _submit(ep: Episode, evaluator: Evaluator) -> concurrent.futures.Future:
    background = background_text(ep.scenario.scenario, omniscient_view(ep.scenario))
    lines = evaluation_history([(t["action"]["action_type"], f"Turn {t['turn'] + 1}: {t['text']}")
                                for t in ep.turns])
    return evaluator.submit(background, lines)


def play(episodes: Sequence[Episode], agents: dict, evaluator: Evaluator,
         write: Callable[[dict], None], *, parallel: int = 32, max_turns: int = MAX_TURNS,
         max_stale: int = MAX_STALE, names: Optional[dict] = None) -> list[Episode]:
    """Play, rate and write `episodes`; returns those lost to an agent's request failure."""
    names = names or {"model": agents["model"].name, "partner": agents["partner"].name,
                      "evaluator": evaluator.client.model}
    pending: dict = {}
    failed: list[Episode] = []
    submitted: set[str] = set()

    def drain(block: bool) -> None:
        if not pending:
            return
        done, _ = concurrent.futures.wait(
            list(pending), timeout=None if block else 0,
            return_when=concurrent.futures.ALL_COMPLETED if block else
            concurrent.futures.FIRST_COMPLETED)
        for fut in [f for f in pending if f in done]:
            write(episode_record(pending.pop(fut), fut.result(), names))

    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="agents") as pool:
        for start in range(0, len(episodes), parallel):
            wave = list(episodes[start:start + parallel])
            while any(not ep.done for ep in wave):
                step(wave, agents, pool, max_turns=max_turns, max_stale=max_stale)
                for ep in wave:
                    if ep.done and ep.id not in submitted:
                        submitted.add(ep.id)
                        if ep.failure is not None:
                            failed.append(ep)
                        else:
                            pending[_submit(ep, evaluator)] = ep
                drain(block=False)
    drain(block=True)
    return failed
