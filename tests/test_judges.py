"""Judges: the heuristic stand-ins on hand-worked traces, reply parsing, and the HTTP judge against
a real chat-completions server on 127.0.0.1 (scores, failures -> fallback, retries with backoff,
the concurrency bound, the cache, the API key kept out of logs)."""

import dataclasses
import logging
import time

import numpy as np
import pytest

from socialr1_jax.social import judge_prompts
from socialr1_jax.social.http_judge import chat_url
from socialr1_jax.social.judge_kinds import build_judge
from socialr1_jax.social.judges import (SIP_MARKERS, SIP_STAGES, JudgeConfig, JudgeConfigError,
                                        JudgeError, JudgeItem, JudgeUnavailable,
                                        content_heuristic, structure_heuristic)
from socialr1_jax.yaml_config import to_dict
from tests.judge_server import JudgeServer, free_port_url

OPTS = ("the basket", "the box", "the fridge", "the drawer")


def item(reasoning, options=OPTS, story="", id=""):
    return JudgeItem(story=story, question="Where will Sally look?", options=tuple(options),
                     reasoning=reasoning, id=id)


def trace(*stages, cue_extra=""):
    return "\n".join(f"{s}: {'x ' + cue_extra if s == 'Cue' else 'y'}" for s in stages)


# ----------------------------------------------------------------------------- heuristic judges
def test_gold_traces_have_the_full_structure_the_heuristic_looks_for():
    """The ToMi gold traces (written by the story generator) and the structure heuristic agree
    on the stage markers: every trace scores 1; with any one stage's marker dropped, 0.75."""
    from socialr1_jax.social import answers, stories

    for r in stories.generate(12, seed=1, traces=True):
        think = answers.extract_think(r["trace"])
        assert structure_heuristic(item(think, r["options"])) == 1.0, think
        for marker in SIP_MARKERS:
            cut = think.replace(marker, "", 1)
            assert structure_heuristic(item(cut, r["options"])) == pytest.approx(0.75), cut


@pytest.mark.parametrize("reasoning, expected", [
    (trace("Cue", "Interpretation", "Goal", "Response"), 1.0),
    # Longest in-order run 3 of 4 (Cue, Interpretation, Response).
    (trace("Cue", "Goal", "Interpretation", "Response"), 0.75),
    (trace("Cue", "Interpretation", "Response"), 0.75),
    # Reversed: any single stage is an in-order run of 1.
    (trace("Response", "Goal", "Interpretation", "Cue"), 0.25),
    # Looping: a stage marker twice, x (1 - 0.25).
    (trace("Cue", "Interpretation", "Cue", "Goal", "Response"), 0.75),
    # Option parasitism: an option named before the Interpretation marker, x (1 - 0.5).
    (trace("Cue", "Interpretation", "Goal", "Response", cue_extra="option B looks right"), 0.5),
    (trace("Cue", "Interpretation", "Goal", "Response", cue_extra="(C) fits"), 0.5),
    (trace("Cue", "Interpretation", "Goal", "Response", cue_extra="surely the fridge"), 1.0),
    # A short option (a container's name) is a story word, not anchoring.
    (trace("Cue", "Interpretation", "Goal", "Response") + "\nso option A", 1.0),
    # Markers must open a line.
    ("We start. Cue: a. Interpretation: b. Goal: c. Response: d.", 0.0),
    ("no structure at all, answer B", 0.0),
    # Loop and parasitism together: 1 * 0.75 * 0.5.
    (trace("Cue", "Interpretation", "Goal", "Goal", "Response", cue_extra="option D"), 0.375),
])
def test_structure_heuristic(reasoning, expected):
    assert structure_heuristic(item(reasoning)) == pytest.approx(expected)


def test_structure_heuristic_long_option_text_and_penalties():
    opts = ("she looks in the basket", "she looks in the box")
    r = trace("Cue", "Interpretation", "Goal", "Response", cue_extra="She looks in the basket.")
    assert structure_heuristic(item(r, opts)) == pytest.approx(0.5)
    assert structure_heuristic(item(r, opts), parasitism_penalty=0.2) == pytest.approx(0.8)
    # Only letters of the item's options count: 'option E' with four options is not a label.
    r = trace("Cue", "Interpretation", "Goal", "Response", cue_extra="option E")
    assert structure_heuristic(item(r)) == 1.0


def test_content_heuristic_by_hand():
    story = "Sally placed the marble in the basket."  # content words: sally placed marble basket
    got = content_heuristic(item("Sally believes the marble is in the basket", story=story))
    assert got == pytest.approx(-2 + 2 * 3 / 4 + 2 * 1 / 3)
    got = content_heuristic(item("Sally placed marble basket; she thinks, knows, saw", story=story))
    assert got == pytest.approx(2.0)
    assert content_heuristic(item("", story=story)) == -2.0
    assert content_heuristic(item("believes", story="")) == pytest.approx(-2 + 2 / 3)


def test_heuristic_judge_interface():
    judge = build_judge(JudgeConfig(), "struct")
    res = judge.score([item(trace(*SIP_STAGES)), item("nothing")])
    np.testing.assert_array_equal(res.scores, [1.0, 0.0])
    assert not res.failed.any()
    assert judge.check() is None  # an offline judge is always available
    story = "Sally placed the marble in the basket."
    content = build_judge(JudgeConfig(), "content")
    res = content.submit([item("Sally believes the marble is in the basket", story=story),
                          item("", story=story)]).result()
    np.testing.assert_allclose(res.scores, [-2 + 2 * 3 / 4 + 2 * 1 / 3, -2.0])


def test_unknown_kind_and_model_kind():
    with pytest.raises(JudgeConfigError, match=r"kind='htp'.*did you mean 'http'"):
        JudgeConfig(kind="htp")
    with pytest.raises(JudgeConfigError, match="content_judge.checkpoint"):
        build_judge(JudgeConfig(kind="model"), "content")
    with pytest.raises(JudgeConfigError, match="role"):
        build_judge(JudgeConfig(), "answer")


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("reply, lo, hi, expected", [
    ("<Score>0.7</Score>", 0, 1, 0.7),
    ("The stages are in order.\n<score> 1 </score>", 0, 1, 1.0),
    ("<Score>0.2</Score> wait, no: <Score>0.4</Score>", 0, 1, 0.4),
    ("  0.25\n", None, None, 0.25),
    ("-3.5", None, None, -3.5),
    ("<think>It could be 5.</think>\n1.5e-1", None, None, 0.15),
])
def test_parse_score(reply, lo, hi, expected):
    assert judge_prompts.parse_score(reply, lo=lo, hi=hi) == pytest.approx(expected)


@pytest.mark.parametrize("reply, match", [
    ("Quite good reasoning", "not a number: 'Quite good"),
    ("Score: 0.5", "not a number"),
    ("<Score>high</Score>", "not a number"),
    ("<Score>1.5</Score>", r"outside \[0, 1\]"),
    ("1e999", "not a finite number"),
    ("", "not a number"),
])
def test_parse_score_refuses(reply, match):
    with pytest.raises(ValueError, match=match):
        judge_prompts.parse_score(reply, lo=0, hi=1)


def test_chat_url():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://api.x.com/v1/chat/completions") == \
        "https://api.x.com/v1/chat/completions"
    with pytest.raises(JudgeConfigError, match="base_url"):
        chat_url("h:8000")


def test_struct_prompt_names_the_stages_and_faults():
    text = judge_prompts.STRUCT_SYSTEM
    for phrase in ("Cue encoding", "Cue interpretation", "Goal clarification",
                   "Response generation", "Option parasitism", "Backward justification",
                   "<Score>x</Score>"):
        assert phrase in text


# ----------------------------------------------------------------------------- the HTTP judge
def http_cfg(url, **kw):
    base = dict(kind="http", base_url=url, model="judge-1", timeout_s=2.0, max_retries=2,
                backoff_s=0.01, max_backoff_s=1.0, fallback=0.0)
    base.update(kw)
    return JudgeConfig(**base)


@pytest.fixture
def server():
    with JudgeServer() as s:
        yield s


def test_http_scores_and_request(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_T", "sk-secret-123")
    with build_judge(http_cfg(server.base_url, api_key_env="JUDGE_KEY_T"), "struct") as judge:
        res = judge.score([item(f"score={s}") for s in (0.0, 0.25, 0.9, 1)])
    np.testing.assert_allclose(res.scores, [0.0, 0.25, 0.9, 1.0])
    assert not res.failed.any() and res.counts["failures"] == 0
    assert res.counts["requests"] == 4 and server.requests == 4
    assert set(server.paths) == {"/v1/chat/completions"}
    assert set(server.auth) == {"Bearer sk-secret-123"}
    body = server.bodies[0]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": judge_prompts.STRUCT_SYSTEM}
    assert "Where will Sally look?" in body["messages"][1]["content"]


def test_http_content_judge_reads_bare_numbers(server):
    with build_judge(http_cfg(server.base_url), "content") as judge:
        res = judge.score([item("bare score=-1.25"), item("bare score=3.5"),
                           item("score=0.5")])
    np.testing.assert_allclose(res.scores, [-1.25, 3.5, 0.5])
    assert server.auth == ["", "", ""]  # no api_key_env: no Authorization header


@pytest.mark.parametrize("mode, counter, attempts", [
    ("MODE=500", "http_errors", 3),        # 5xx: retried max_retries (2) times
    ("MODE=400", "http_errors", 1),        # other 4xx: not retried
    ("MODE=garbage", "parse_errors", 1),
    ("MODE=nojson", "parse_errors", 1),
    ("sleep=0.6", "timeouts", 3),
])
def test_http_failures_get_the_fallback_and_are_counted(server, mode, counter, attempts):
    cfg = http_cfg(server.base_url, fallback=-7.0, timeout_s=0.25)
    items = [item("score=0.3"), item(mode, id="bad-1"), item("score=0.6")]
    with build_judge(cfg, "struct") as judge:
        res = judge.score(items)
        np.testing.assert_allclose(res.scores, [0.3, -7.0, 0.6])
        np.testing.assert_array_equal(res.failed, [False, True, False])
        assert res.counts["failures"] == 1 and res.counts[counter] == 1
        assert res.counts["retries"] == attempts - 1
        assert len(server.attempts[judge_prompts.user_message(
            "", items[1].question, OPTS, mode)]) == attempts
        # The run goes on: the same judge scores the next batch.
        assert judge.score([item("score=0.8")]).scores[0] == pytest.approx(0.8)


def test_http_server_down_gets_the_fallback_and_check_raises():
    cfg = http_cfg(free_port_url(), fallback=0.0, max_retries=1)
    with build_judge(cfg, "struct") as judge:
        res = judge.score([item("score=0.5"), item("score=0.7")])
        np.testing.assert_array_equal(res.scores, [0.0, 0.0])
        assert res.counts["connect_errors"] == 2 and res.counts["failures"] == 2
        assert res.counts["retries"] == 2
        with pytest.raises(JudgeUnavailable, match="does not answer"):
            judge.check()


def test_http_check_passes_on_a_live_server(server):
    with build_judge(http_cfg(server.base_url), "struct") as judge:
        judge.check()
    assert server.requests == 1


def test_http_no_fallback_is_an_error_naming_the_item(server):
    with build_judge(http_cfg(server.base_url, fallback=None), "struct") as judge:
        with pytest.raises(JudgeError, match=r"item q-17.*parse error.*looks quite good"):
            judge.score([item("score=0.5"), item("MODE=garbage", id="q-17")])
        with pytest.raises(JudgeError, match=r"item #0.*http error.*HTTP 500"):
            judge.score([item("MODE=500")])


def test_http_retries_back_off(server):
    cfg = http_cfg(server.base_url, backoff_s=0.1, max_retries=3)
    with build_judge(cfg, "struct") as judge:
        res = judge.score([item("MODE=flaky2 score=0.4")])
    assert res.scores[0] == pytest.approx(0.4) and not res.failed.any()
    assert res.counts["retries"] == 2 and res.counts["requests"] == 3
    (times,) = server.attempts.values()
    gaps = np.diff(times)
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # 0.1 * 2**attempt


def test_http_429_honours_retry_after(server):
    cfg = http_cfg(server.base_url, backoff_s=0.01)
    with build_judge(cfg, "struct") as judge:
        res = judge.score([item("MODE=429 score=0.9")])
    assert res.scores[0] == pytest.approx(0.9) and res.counts["retries"] == 1
    (times,) = server.attempts.values()
    assert times[1] - times[0] >= 0.3


def test_http_concurrency_bound(server):
    # 12 requests of 0.1 s, 3 at a time, take 0.4 s: longer than the 0.25 s deadline, which
    # must count from when a request is sent, not from when it was queued.
    cfg = http_cfg(server.base_url, max_concurrency=3, timeout_s=0.25)
    items = [item(f"sleep=0.1 score={i / 100:.2f}") for i in range(12)]
    with build_judge(cfg, "struct") as judge:
        res = judge.score(items)
    np.testing.assert_allclose(res.scores, [i / 100 for i in range(12)])
    assert server.max_in_flight == 3  # bounded, and the bound is used
    assert res.counts["failures"] == 0 and res.counts["retries"] == 0


def test_http_cache_and_duplicates(server):
    with build_judge(http_cfg(server.base_url), "struct") as judge:
        res = judge.score([item("score=0.5"), item("score=0.5"), item("score=0.1")])
        assert res.counts["requests"] == 2 and server.requests == 2
        res = judge.score([item("score=0.1"), item("score=0.5")])
        np.testing.assert_allclose(res.scores, [0.1, 0.5])
        assert res.counts["requests"] == 0 and res.counts["cache_hits"] == 2
    with build_judge(http_cfg(server.base_url, cache_size=0), "struct") as judge:
        judge.score([item("score=0.5")])
        judge.score([item("score=0.5")])
    assert server.requests == 4


def test_http_submit_returns_at_once(server):
    with build_judge(http_cfg(server.base_url), "struct") as judge:
        t = time.perf_counter()
        fut = judge.submit([item("sleep=0.3 score=0.2")])
        assert time.perf_counter() - t < 0.2 and not fut.done()
        assert fut.result().scores[0] == pytest.approx(0.2)


def test_http_missing_key_variable_is_an_error_at_construction(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeConfigError, match="struct_judge.api_key_env.*NO_SUCH_JUDGE_KEY"):
        build_judge(http_cfg("http://127.0.0.1:9", api_key_env="NO_SUCH_JUDGE_KEY"), "struct")
    with pytest.raises(JudgeConfigError, match="content_judge.model"):
        build_judge(http_cfg("http://127.0.0.1:9", model=""), "content")
    with pytest.raises(JudgeConfigError, match="system_prompt_file"):
        build_judge(http_cfg("http://127.0.0.1:9", system_prompt_file="/no/such"), "content")


def test_http_system_prompt_file(server, tmp_path):
    p = tmp_path / "sys.txt"
    p.write_text("Grade it.")
    with build_judge(http_cfg(server.base_url, system_prompt_file=str(p)), "struct") as judge:
        judge.score([item("score=0.5")])
    assert server.bodies[0]["messages"][0]["content"] == "Grade it."


def test_http_key_never_in_logs_repr_or_dump(server, monkeypatch, caplog):
    secret = "sk-do-not-leak-9876"
    monkeypatch.setenv("JUDGE_KEY_L", secret)
    cfg = http_cfg(server.base_url, api_key_env="JUDGE_KEY_L", max_retries=1)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    with build_judge(cfg, "struct") as judge:
        judge.score([item("score=0.5"), item("MODE=500"), item("MODE=garbage")])
        judge.check()
        text = repr(judge) + repr(cfg) + str(to_dict(cfg)) + str(dataclasses.asdict(cfg))
    assert server.auth and set(server.auth) == {f"Bearer {secret}"}
    assert "JUDGE_KEY_L" in text and secret not in text
    assert caplog.records and secret not in caplog.text
    assert any("items failed" in r.getMessage() for r in caplog.records)
