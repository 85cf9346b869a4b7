"""Reward functions at the string level and the RewardSet the trainer calls: weighted sums,
`module:function` names, the Social-R1 function with its judges (only formatted completions
judged, both judges at once), per-term metrics, background scoring, and clear errors."""

import math
import threading
import time

import numpy as np
import pytest

from socialr1_jax.social import reward_fns as F
from socialr1_jax.social.judges import (JudgeConfig, JudgeConfigError, JudgeItem,
                                        JudgeResult,
                                        JudgeUnavailable, content_heuristic, structure_heuristic)
from socialr1_jax.social.rewards import TERMS, RewardConfig, social_r1_score
from socialr1_jax.yaml_config import load_yaml, to_dict
from tests.judge_server import JudgeServer, free_port_url

STORY = "Sally put the marble in the basket. Sally left. Anne moved the marble to the box."
ROW = {"id": "r1", "gold": "A", "story": STORY, "question": "Where will Sally look?",
       "options": ["the basket", "the box"]}
GOOD = ("<think>Cue: Sally put the marble in the basket, then left; Anne moved it.\n"
        "Interpretation: Sally did not see the move, so she believes it is in the basket.\n"
        "Goal: where Sally will look.\nResponse: the basket.</think>\n<Answer>A</Answer>")
WRONG = GOOD.replace("<Answer>A", "<Answer>B")
UNFORMATTED = "Sally looks in the basket. <Answer>A</Answer>"
SMALL = RewardConfig(len_min=50, len_max=1000, len_temp=20)


# Reward functions named from config as module:function in the tests below.
def length_fn(prompts, completions, rows):
    return [len(c) / 100 for c in completions]


def step_fn(prompts, completions, rows, step):
    return [float(step)] * len(completions)


def kwargs_fn(prompts, completions, rows, **kw):
    return [float(kw["step"]) + 0.5] * len(completions)


def raising_fn(prompts, completions, rows):
    raise KeyError("gold")


def short_fn(prompts, completions, rows):
    return [1.0] * (len(completions) - 1)


def long_fn(prompts, completions, rows):
    return [1.0] * (len(completions) + 1)


def nan_fn(prompts, completions, rows):
    return [0.0, float("nan"), 0.0][:len(completions)]


def batch(*completions):
    rows = [dict(ROW, id=f"r{i}") for i in range(len(completions))]
    return ["prompt"] * len(completions), list(completions), rows


def test_social_r1_function_matches_the_scorer_with_heuristic_judges():
    cfg = F.RewardSetConfig(social=SMALL)
    prompts, comps, rows = batch(GOOD, WRONG, UNFORMATTED)
    with F.RewardSet.from_config(cfg) as rs:
        scores, metrics = rs.score(prompts, comps, rows, step=40)
    expected = []
    for c in comps:
        think = c.split("<think>")[1].split("</think>")[0].strip() if "</think>" in c else ""
        it = JudgeItem(STORY, ROW["question"], tuple(ROW["options"]), think)
        expected.append(social_r1_score(c, "A", step=40, cfg=SMALL,
                                        struct=structure_heuristic(it),
                                        content=content_heuristic(it))["score"])
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert scores[0] > scores[1] > scores[2] == 0.0
    # Every term is a metric (batch mean; struct/content over the judged items only).
    for t in TERMS:
        if t != "score":
            assert f"reward/social_r1/{t}" in metrics
    assert metrics["reward/social_r1/em"] == pytest.approx(2 / 3)
    assert metrics["reward/social_r1/format"] == pytest.approx(2 / 3)
    assert metrics["reward/social_r1/w_struct"] == pytest.approx(1.8)
    assert metrics["reward/social_r1/struct"] == pytest.approx(1.0)
    assert metrics["reward/total"] == pytest.approx(np.mean(expected))


def test_weighted_functions_from_config():
    cfg = F.RewardSetConfig(functions=("social_r1", "tests.test_reward_fns:length_fn"),
                            weights=(2.0, 0.5), social=SMALL)
    prompts, comps, rows = batch(GOOD, UNFORMATTED)
    with F.RewardSet.from_config(cfg) as rs:
        b = rs.submit(prompts, comps, rows, step=0).result()
    social = b.terms["social_r1"]
    np.testing.assert_allclose(b.scores, 2.0 * social + 0.5 * np.array([len(c) / 100
                                                                         for c in comps]))
    assert b.metrics["reward/tests.test_reward_fns:length_fn"] == pytest.approx(
        np.mean([len(c) / 100 for c in comps]))
    assert b.terms["social_r1/em"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name, expected", [
    ("tests.test_reward_fns:step_fn", 7.0), ("tests.test_reward_fns:kwargs_fn", 7.5),
    ("tests.test_reward_fns:length_fn", None)])
def test_step_is_passed_to_functions_that_take_it(name, expected):
    with F.RewardSet.from_config(F.RewardSetConfig(functions=(name,))) as rs:
        scores, _ = rs.score(*batch(GOOD), step=7)
    assert scores[0] == pytest.approx(expected if expected is not None else len(GOOD) / 100)


def test_user_function_returning_scores_with_terms():
    def fn(prompts, completions, rows):
        return F.RewardList([1.0, 3.0], terms={"a": [2.0, 4.0]}, metrics={"custom/x": 5.0})

    with F.RewardSet([("mine", fn, 1.0)]) as rs:
        _, metrics = rs.score(*batch(GOOD, GOOD), step=0)
    assert metrics["reward/mine"] == 2.0 and metrics["reward/mine/a"] == 3.0
    assert metrics["custom/x"] == 5.0


@pytest.mark.parametrize("name, match", [
    ("tests.test_reward_fns:raising_fn", r"'tests.test_reward_fns:raising_fn' raised KeyError"),
    ("tests.test_reward_fns:short_fn", r"'tests.test_reward_fns:short_fn' returned 2 scores for 3"),
    ("tests.test_reward_fns:long_fn", r"'tests.test_reward_fns:long_fn' returned 4 scores for 3"),
    ("tests.test_reward_fns:nan_fn", r"nan_fn' returned nan for item #1 \(id r1\)"),
])
def test_bad_functions_are_named(name, match):
    with F.RewardSet.from_config(F.RewardSetConfig(functions=(name,))) as rs:
        with pytest.raises(F.RewardFunctionError, match=match):
            rs.score(*batch(GOOD, GOOD, GOOD), step=0)


@pytest.mark.parametrize("name, match", [
    ("no_such_builtin", "expected 'social_r1' or 'module:function'"),
    ("tests.nowhere:fn", "cannot import tests.nowhere"),
    ("tests.test_reward_fns:missing", "has no missing"),
    ("tests.test_reward_fns:STORY", "is not callable"),
])
def test_unresolvable_names(name, match):
    with pytest.raises(ValueError, match=match):
        F.RewardSet.from_config(F.RewardSetConfig(functions=(name,)))


def test_config_errors():
    with pytest.raises(ValueError, match="2 entries for 1"):
        F.RewardSetConfig(weights=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"variant='R1'.*did you mean"):
        F.RewardSetConfig(social=RewardConfig(variant="R1"))
    with pytest.raises(F.RewardFunctionError,
                       match=r"social_r1.*row #0 \(id r1\): no usable 'gold'"):
        with F.RewardSet.from_config(F.RewardSetConfig()) as rs:
            rs.score(["p"], [GOOD], [dict(ROW, gold="maybe")], step=0)
    with F.RewardSet.from_config(F.RewardSetConfig()) as rs:
        with pytest.raises(ValueError, match="one prompt and one row per completion"):
            rs.score(["p"], [GOOD, GOOD], [ROW], step=0)


def test_config_from_yaml_keeps_only_the_key_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-live-abc")
    p = tmp_path / "reward.yaml"
    p.write_text("functions: [social_r1]\nsocial: {variant: socialR2, len_min: 40}\n"
                 "struct_judge: {kind: http, base_url: 'http://127.0.0.1:9', model: m,\n"
                 "               api_key_env: MY_JUDGE_KEY, fallback: null}\n")
    cfg = load_yaml(F.RewardSetConfig, p, ["struct_judge.max_concurrency=4"])
    assert cfg.social.variant == "socialR2" and cfg.struct_judge.fallback is None
    assert cfg.struct_judge.max_concurrency == 4 and cfg.content_judge.fallback == -2.0
    assert "sk-live-abc" not in str(to_dict(cfg)) and "MY_JUDGE_KEY" in str(to_dict(cfg))
    with F.RewardSet.from_config(cfg) as rs:  # socialR2: no content judge is built
        assert [j.role for j in rs.judges] == ["struct"]
        assert "sk-live-abc" not in repr(rs.judges)
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(JudgeConfigError, match="MY_JUDGE_KEY"):
        F.RewardSet.from_config(cfg)  # at start, not at the first step


class CountingJudge:
    """A judge that records what it was asked and how many calls overlapped."""

    def __init__(self, role, value, log, delay=0.0):
        self.role, self.value, self.log, self.delay, self.fallback = role, value, log, delay, 0.0

    def submit(self, items):
        import concurrent.futures
        fut = concurrent.futures.Future()

        def work():
            self.log.append(("start", self.role, [it.id for it in items], time.monotonic()))
            time.sleep(self.delay)
            self.log.append(("end", self.role, None, time.monotonic()))
            fut.set_result(JudgeResult(np.full(len(items), self.value),
                                         np.zeros(len(items), bool), {"requests": len(items)}))

        threading.Thread(target=work).start()
        return fut


def test_only_formatted_completions_are_judged_and_judges_overlap():
    log = []
    fn = F.SocialR1Reward(SMALL, CountingJudge("struct", 0.5, log, 0.2),
                          CountingJudge("content", 0.0, log, 0.2))
    prompts, comps, rows = batch(GOOD, UNFORMATTED, WRONG)
    out = fn(prompts, comps, rows, step=0)
    starts = [e for e in log if e[0] == "start"]
    assert sorted(e[1] for e in starts) == ["content", "struct"]
    assert all(e[2] == ["#0 (id r0)", "#2 (id r2)"] for e in starts)
    # Both started before either ended.
    first_end = min(e[3] for e in log if e[0] == "end")
    assert max(e[3] for e in starts) < first_end
    assert out[1] == 0.0 and math.isnan(out.terms["struct"][1])
    assert out.metrics["judge/struct/requests"] == 2


def test_variant_judges_and_social_r0():
    with pytest.raises(ValueError, match="needs a content judge"):
        F.SocialR1Reward(RewardConfig(variant="socialR3"))
    log = []
    fn = F.SocialR1Reward(RewardConfig(variant="socialR0"), CountingJudge("struct", 1, log))
    assert fn(*batch(GOOD, UNFORMATTED), step=0) == [2.0, 1.0] and log == []


def test_submit_runs_in_the_background():
    gate = threading.Event()

    def slow(prompts, completions, rows):
        gate.wait(5)
        return [1.0] * len(completions)

    with F.RewardSet([("slow", slow, 1.0)]) as rs:
        fut = rs.submit(*batch(GOOD), step=0)
        time.sleep(0.05)
        assert not fut.done()
        gate.set()
        assert fut.result(5).scores.tolist() == [1.0]


def test_http_judges_end_to_end_and_concurrently():
    with JudgeServer() as server:
        judge = JudgeConfig(kind="http", base_url=server.base_url, model="m", max_concurrency=1,
                            backoff_s=0.01)
        cfg = F.RewardSetConfig(social=SMALL, struct_judge=judge, content_judge=judge)
        # The server replies with the number the reasoning carries.
        good = GOOD.replace("Response: the basket.", "Response: the basket. sleep=0.2 score=0.5")
        with F.RewardSet.from_config(cfg) as rs:
            assert rs.check() == {"struct": "ok", "content": "ok"}
            scores, metrics = rs.score(*batch(good), step=0)
        assert server.max_in_flight == 2  # one request per judge, at the same time
    think = good.split("<think>")[1].split("</think>")[0].strip()
    assert scores[0] == pytest.approx(social_r1_score(good, "A", step=0, struct=0.5, content=0.5,
                                                      cfg=SMALL)["score"])
    assert metrics["reward/social_r1/struct"] == 0.5 and metrics["judge/struct/requests"] == 1
    assert metrics["reward/social_r1/think_len"] == len(think)


def test_check_with_and_without_fallback():
    down = JudgeConfig(kind="http", base_url=free_port_url(), model="m", max_retries=0,
                       fallback=0.375)
    cfg = F.RewardSetConfig(social=RewardConfig(variant="socialR2"), struct_judge=down)
    with F.RewardSet.from_config(cfg) as rs:
        assert rs.check() == {"struct": "unreachable (fallback 0.375)"}
        scores, metrics = rs.score(*batch(GOOD), step=0)  # the run goes on
        assert metrics["judge/struct/failures"] == 1
        assert metrics["judge/struct/failed_share"] == 1.0
        # the failed item is scored with the fallback as its structure score
        assert metrics["reward/social_r1/struct"] == 0.375
        assert scores[0] == pytest.approx(social_r1_score(
            GOOD, "A", step=0, struct=0.375, content=None,
            cfg=RewardConfig(variant="socialR2"))["score"])
    import dataclasses
    cfg = dataclasses.replace(cfg, struct_judge=dataclasses.replace(down, fallback=None))
    with F.RewardSet.from_config(cfg) as rs:
        with pytest.raises(JudgeUnavailable):
            rs.check()
        with pytest.raises(F.RewardFunctionError, match=r"social_r1.*item #0 \(id r0\)"):
            rs.score(*batch(GOOD), step=0)

