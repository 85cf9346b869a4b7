"""grpo.async_rollout: off, a step is today's (sample -> reference forward -> score -> update),
bit for bit; on, step t+1's rollout is dispatched with the weights before update t, ahead of
step t's scoring (a sleeping reward finds it already started), the run trains, and a resume from
a periodic checkpoint is the uninterrupted run's (the source drains before every periodic save).
No wall time is asserted: only the order of calls, the samples and the metrics."""

import json
import time

import jax
import numpy as np
import pytest
from flax import nnx

from socialr1_jax.jobs import train as train_mod
from socialr1_jax.rl import grpo
from socialr1_jax.rl import rollout_updates as ru
from socialr1_jax.rl import train_step as ts
from socialr1_jax.rl.async_rollout import RolloutSource, drains_after
from socialr1_jax.rl.experience import Programs
from socialr1_jax.rl.toy_task import ToyTask
from tests.train_args import TOY

ROWS = 64  # toy: 8 prompts x group 8
KEYS = ("reward_mean", "loss", "kl", "grad_norm", "entropy", "updates")


class SleepyTask:
    """The toy task whose rewards sleep `sleep_s` (a slow judge) and which records the order of
    its calls: ("prompts", step) when a rollout is started, ("rewards", step) when scored."""

    def __init__(self, task: ToyTask, sleep_s: float = 0.0):
        self.task, self.sleep_s, self.calls = task, sleep_s, []
        self.eos_ids, self.pad_id = task.eos_ids, task.pad_id

    def prompts(self, step, n):
        self.calls.append(("prompts", step))
        out = self.task.prompts(step, n)
        out.meta = [(step, m) for m in out.meta]
        return out

    def rewards(self, prompts, completions, mask, group_size):
        self.calls.append(("rewards", prompts.meta[0][0]))
        time.sleep(self.sleep_s)
        return self.task.rewards(prompts, completions, mask, group_size)


def _cfg(out, *extra):
    return train_mod.parse_args(TOY + [f"run.out_dir={out}", "run.progress=false",
                                      f"run.samples_per_step={ROWS}", *extra])


def _run(out, *extra, sleep_s=0.0):
    """(result, task, [params after each step as numpy]) of a toy run."""
    cfg = _cfg(out, *extra)
    task = SleepyTask(train_mod.make_task(cfg, 32), sleep_s)
    after = []
    res = train_mod.train(cfg, task=task, log=lambda s: None,
                          on_step=lambda k, st, m: after.append(jax.tree.map(np.asarray,
                                                                             st.params)))
    return res, task, after


def _completions(out, step):
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return [r["completion"] for r in rows if r["step"] == step]


def _metrics(res):
    return [{k: m[k] for k in KEYS if k in m} for m in res.history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("async")
    sync = _run(root / "sync", "run.steps=3", "run.save_every=0")
    ahead = _run(root / "ahead", "run.steps=12", "run.save_every=0", "grpo.async_rollout=true",
                 sleep_s=0.2)
    return root, sync, ahead


def _by_hand(cfg, steps):
    """Today's step composed from the public pieces, not the job: sample with the state ->
    reference log-probs -> the task's rewards -> group advantages -> the updates."""
    mesh = train_mod.build_mesh(cfg)
    model = train_mod.load_policy(cfg, mesh)
    task = train_mod.make_task(cfg, model.cfg.vocab_size)
    graphdef, ref = nnx.split(model)
    state = ts.init_train_state(ref, cfg.optim, mesh, total_updates=cfg.total_updates)
    programs = Programs(cfg, model.cfg, graphdef, mesh)
    g, losses = cfg.grpo.group_size, []
    for k in range(steps):
        prompts = task.prompts(k, cfg.rollout.prompts_per_step)
        pid, pm, tok, mask, logp = programs.sample(state.params, prompts, seed=k,
                                                   eos_ids=task.eos_ids, pad_id=task.pad_id)
        ref_logp = programs.logprobs(ref, pid, pm, tok, mask)
        scores = task.rewards(prompts, np.asarray(tok), np.asarray(mask), g)
        adv = grpo.advantages(jax.numpy.asarray(scores.rewards), g, normalize=cfg.grpo.normalize_adv)
        batch = ts.TrainBatch(pid, pm, tok, mask, logp, ref_logp, adv)
        state, ups = ru.rollout_updates(programs.train_step, state, batch, seed=k,
                                        mesh=mesh)
        losses.append(float(jax.device_get(ups[0]["loss"])))
    return losses, jax.tree.map(np.asarray, state.params)


def test_async_off_is_todays_step_bit_for_bit(runs, tmp_path):
    root, (res, task, after), _ = runs
    assert res.state is not None and len(res.history) == 3
    losses, params = _by_hand(_cfg(tmp_path / "x", "run.steps=3"), 3)
    assert [m["loss"] for m in res.history] == losses
    jax.tree.map(np.testing.assert_array_equal, after[-1], params)
    # On-policy: each step's rollout is started, then scored, before the next is started.
    assert task.calls == [(c, k) for k in range(3) for c in ("prompts", "rewards")]


def test_the_rollout_ahead_is_sampled_with_the_weights_before_the_update(runs):
    """Step 1's rollout of the async run is the sampler's output under the initial weights (not
    the weights after update 0, which the on-policy run sampled with); step 2's under the weights
    after update 0. Step 0 and update 0 are the on-policy run's exactly."""
    root, (sync, _, sync_after), (ahead, _, ahead_after) = runs
    assert _metrics(ahead)[0] == _metrics(sync)[0]
    jax.tree.map(np.testing.assert_array_equal, ahead_after[0], sync_after[0])
    cfg = _cfg(root / "unused", "run.steps=12")
    mesh = train_mod.build_mesh(cfg)
    model = train_mod.load_policy(cfg, mesh)
    task = train_mod.make_task(cfg, 32)
    graphdef, initial = nnx.split(model)
    programs = Programs(cfg, model.cfg, graphdef, mesh)

    def by_hand(params, k):
        params = jax.tree.map(jax.numpy.asarray, params)
        _, _, tok, mask, _ = programs.sample(params, task.prompts(k, 8), seed=k,
                                             eos_ids=task.eos_ids, pad_id=task.pad_id)
        tok, mask = np.asarray(tok), np.asarray(mask)
        return [tok[i, :int(mask[i].sum())].tolist() for i in range(ROWS)]

    assert _completions(root / "ahead", 0) == _completions(root / "sync", 0)
    assert _completions(root / "ahead", 1) == by_hand(initial, 1)
    assert _completions(root / "sync", 1) == by_hand(sync_after[0], 1)
    assert _completions(root / "ahead", 1) != _completions(root / "sync", 1)
    assert _completions(root / "ahead", 2) == by_hand(ahead_after[0], 2)


def test_a_sleeping_reward_finds_the_next_rollout_started_and_the_run_trains(runs):
    _, _, (res, task, _) = runs
    # Step k+1's rollout is started before step k's rewards; nothing is started after the last.
    expect = [("prompts", 0)]
    for k in range(12):
        expect += ([("prompts", k + 1)] if k < 11 else []) + [("rewards", k)]
    assert task.calls == expect
    assert res.status == "done" and len(res.history) == 12 and int(res.state.step) == 12
    rewards = [m["reward_mean"] for m in res.history]
    assert np.mean(rewards[-3:]) > rewards[0] + 0.3, rewards
    assert all(m["rewards_s"] > 0 and m["skipped"] == 0 for m in res.history)


def test_resume_from_a_periodic_checkpoint_is_the_uninterrupted_async_run(tmp_path):
    """The source drains before each periodic save: a run stopped at its checkpoint of step 2
    and resumed to 4 steps is the 4-step run, metrics and weights bit for bit."""
    args = ("run.save_every=2", "grpo.async_rollout=true")
    whole, task, after = _run(tmp_path / "whole", "run.steps=4", *args)
    # Drained after step 1 (the save of 2 steps) and after step 3 (the last).
    assert task.calls == [("prompts", 0), ("prompts", 1), ("rewards", 0), ("rewards", 1),
                          ("prompts", 2), ("prompts", 3), ("rewards", 2), ("rewards", 3)]
    first, _, _ = _run(tmp_path / "cut", "run.steps=2", *args)
    again, _, again_after = _run(tmp_path / "cut", "run.steps=4", "run.resume=true", *args)
    assert again.first_step == 2
    assert _metrics(first) + _metrics(again) == _metrics(whole)
    jax.tree.map(np.testing.assert_array_equal, again_after[-1], after[-1])


def test_rollout_source_order_drain_and_drop():
    log = []
    src = RolloutSource(lambda k, s: log.append(("start", k, s)) or k,
                        lambda p: log.append(("finish", p)) or p, ahead=True,
                        drain_after=drains_after(5, save_every=3))
    assert [src.take(k, f"w{k}") for k in range(3)] == [0, 1, 2]
    assert log == [("start", 0, "w0"), ("start", 1, "w0"), ("finish", 0),
                   ("start", 2, "w1"), ("finish", 1), ("finish", 2)]  # drained after step 2
    log.clear()
    src.take(3, "w3")
    src.drop()  # a stop: the rollout started for step 4 is never used
    src.take(4, "w4")
    assert log == [("start", 3, "w3"), ("start", 4, "w3"), ("finish", 3),
                   ("start", 4, "w4"), ("finish", 4)]
    assert src.dispatched == [0, 1, 2, 3, 4, 4]
    on_policy = RolloutSource(lambda k, s: k, lambda p: p, ahead=False)
    assert [on_policy.take(k, None) for k in range(3)] == [0, 1, 2]
    assert on_policy.dispatched == [0, 1, 2]


def test_async_packed_run_defers_the_reference_forward_and_trains(runs, tmp_path):
    """grpo.packed=true with async: the packed reference forward plans from the host masks, so
    it is left to the scoring half (dispatched before the rewards) instead of waiting for the
    sampler. Steps 0 and 1 sample with the initial weights in both runs: the same rewards; the
    loss is the padded run's to float32 rounding."""
    _, _, (padded, _, _) = runs
    res, task, _ = _run(tmp_path / "packed", "run.steps=3", "run.save_every=0",
                        "grpo.async_rollout=true", "grpo.packed=true")
    assert task.calls == [("prompts", 0), ("prompts", 1), ("rewards", 0), ("prompts", 2),
                          ("rewards", 1), ("rewards", 2)]
    for m0, m1 in zip(padded.history[:2], res.history[:2]):
        assert m1["reward_mean"] == m0["reward_mean"]
        assert abs(m1["loss"] - m0["loss"]) <= 1e-6 and abs(m1["kl"] - m0["kl"]) <= 1e-6
    assert res.status == "done" and int(res.state.step) == 3
