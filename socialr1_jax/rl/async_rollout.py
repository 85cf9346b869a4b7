"""Where each GRPO step's rollout comes from: on-policy, or one step ahead (grpo.async_rollout).

On-policy (the default): step t samples with the weights of step t (after update t-1), then its
rollout is scored on the host and update t runs. While the host scores, the devices only run
the reference log-prob forward, dispatched before the rewards: with slow judges the devices
sit idle for the rest of the scoring.

One-step off-policy (`grpo.async_rollout=true`; verl's "one-step off-policy" / async rollout,
Tunix's "off-by-one"): step t first dispatches the rollout of step t+1 with the weights it has
(those before update t), then scores step t's rollout on the host while the devices generate
t+1, then runs update t. Rollout t+1 is thus sampled one update behind the weights it trains;
its old-policy log-probs are the sampling weights' (the sampler's, or recomputed from those same
weights with grpo.recompute_old_logp), so the ratio of the loss is the one of the weights that
sampled. JAX's asynchronous dispatch is the only concurrency: no thread, every program is
dispatched from the host thread in the same order on every process.

The pending rollout is never checkpointed. The source therefore drains (samples the next step
on-policy, nothing dispatched ahead) after every step that a periodic save follows
(run.save_every) and after the last step: a run resumed from a periodic checkpoint computes
bit for bit what the uninterrupted run did. A resume from any other checkpoint (a SIGTERM /
Ctrl-C stop, the end of a run whose run.steps is then raised) samples its first step with the
checkpoint's weights, where the uninterrupted run would have used the weights one update older:
from that step on it differs from the uninterrupted run (docs/training.md, Resume).

API
---
RolloutSource(start, finish, *, ahead, drain_after) -> source; source.take(k, state) ->
    (rollout, prompts) of step k; source.dispatched: the steps whose rollout was started, in
    order (tests); source.drop() forgets a pending rollout (the loop stopped).
drains_after(steps, save_every) -> drain_after(k): the default drain points.
"""

from __future__ import annotations

from typing import Callable, Optional


def drains_after(steps: int, save_every: int) -> Callable[[int], bool]:
    """Whether nothing is dispatched ahead after step k: the last step (nothing follows), and a
    step a periodic save follows (so the checkpoint's resume starts as the run went on)."""
    def drain(k: int) -> bool:
        done = k + 1
        return done >= steps or bool(save_every and done % save_every == 0)
    return drain


class RolloutSource:
    """Each step's rollout: started (`start(k, state) -> pending`, dispatched, not awaited) and
    scored (`finish(pending) -> (rollout, prompts)`, on the host).

    ahead=False: step k starts and finishes its own rollout (on-policy). ahead=True: step k
    takes the rollout step k-1 started (or starts its own when there is none: the first step,
    after a drain, after a resume), starts step k+1's with the same weights unless
    `drain_after(k)`, and only then scores step k's, so the devices sample while the host scores.
    """

    def __init__(self, start: Callable, finish: Callable, *, ahead: bool,
                 drain_after: Callable[[int], bool] = lambda k: False):
        self._start, self._finish = start, finish
        self.ahead, self.drain_after = ahead, drain_after
        self._pending: Optional[tuple] = None  # (step, pending rollout)
        self.dispatched: list[int] = []

    def _begin(self, k: int, state):
        self.dispatched.append(k)
        return self._start(k, state)

    def take(self, k: int, state):
        """(rollout, prompts) of step k, sampled with `state` or, one step ahead, with the state
        step k-1 had before its update. `state` is not donated here; the caller may donate it
        to its update right after (the runtime orders that after the programs reading it)."""
        if self._pending is not None and self._pending[0] == k:
            pending = self._pending[1]
        else:
            pending = self._begin(k, state)
        self._pending = None
        if self.ahead and not self.drain_after(k):
            # Dispatched before step k is scored: the devices generate k+1 during the scoring.
            self._pending = (k + 1, self._begin(k + 1, state))
        return self._finish(pending)

    def drop(self) -> None:
        """Forget the rollout dispatched ahead (the loop stopped: it is never used)."""
        self._pending = None
