"""Tests for defects the other `social/` tests let through (docs/testing.md lists each with the
defect it was checked against): the HTTP judge's cache key, the judge failure share, the ToMi
gold traces' cues, SocialIQA's separate labels file, 0-based gold labels and the content reward
model's fallback for non-finite scores."""

import re

import numpy as np
import pytest

from socialr1_jax.social import data as D
from socialr1_jax.social import reward_fns as F
from socialr1_jax.social import stories
from socialr1_jax.social.judge_kinds import build_judge
from socialr1_jax.social.judges import JudgeConfig, JudgeError, JudgeItem
from socialr1_jax.social.rewards import RewardConfig
from tests.judge_server import JudgeServer
from tests.tom_data import write_jsonl

OPTS = ("the basket", "the box")


def http_judge(server, **kw):
    return build_judge(JudgeConfig(kind="http", base_url=server.base_url, model="m",
                                   backoff_s=0.01, **kw), "struct")


# ----------------------------------------------------------------------------- HTTP judge
def test_http_cache_and_dedup_key_on_story_question_options_and_reasoning():
    """Items that share their reasoning but differ in story, question or options are separate
    requests with separate scores, in one batch and again from the cache."""
    same = "Cue: x\nResponse: y score=0.5"
    items = [JudgeItem("Sally left. add=0.1", "Where?", OPTS, same),
             JudgeItem("Sally left. add=0.3", "Where?", OPTS, same),
             JudgeItem("Sally left.", "Where? add=0.2", OPTS, same),
             JudgeItem("Sally left.", "Where?", ("the basket add=0.05", "the box"), same),
             JudgeItem("Sally left.", "Where?", OPTS, same)]
    expected = [0.6, 0.8, 0.7, 0.55, 0.5]  # score=0.5 plus each item's own add=
    with JudgeServer() as server, http_judge(server) as judge:
        first = judge.score(items)
        again = judge.score(items[::-1])
        assert server.requests == 5
    np.testing.assert_allclose(first.scores, expected)
    assert first.counts["requests"] == 5 and first.counts["cache_hits"] == 0
    np.testing.assert_allclose(again.scores, expected[::-1])
    assert again.counts["cache_hits"] == 5 and again.counts["requests"] == 0


def test_judge_failure_share_is_the_mean_over_judged_items():
    good = ("<think>Cue: Sally left.\nInterpretation: she thinks basket.\nGoal: where.\n"
            "Response: the basket. {}</think><Answer>A</Answer>")
    comps = [good.format("score=0.5"), good.format("MODE=400"), good.format("score=0.25"),
             good.format("MODE=400 again"), "no format at all <Answer>A</Answer>"]
    rows = [{"id": f"r{i}", "gold": "A", "story": "Sally left.", "question": "Where?",
             "options": list(OPTS)} for i in range(len(comps))]
    with JudgeServer() as server:
        judge = JudgeConfig(kind="http", base_url=server.base_url, model="m", backoff_s=0.01,
                            fallback=0.125)
        cfg = F.RewardSetConfig(social=RewardConfig(variant="socialR2", len_min=0,
                                                    len_max=10_000), struct_judge=judge)
        with F.RewardSet.from_config(cfg) as rs:
            out = rs.submit(["p"] * len(comps), comps, rows, step=0).result()
    metrics = out.metrics
    # 4 formatted completions are judged, 2 of them fail: share 2/4 (the unformatted one is
    # not judged and does not count).
    assert metrics["judge/struct/failed_share"] == pytest.approx(0.5)
    assert metrics["judge/struct/failures"] == 2
    np.testing.assert_allclose(out.terms["social_r1/struct"][:4], [0.5, 0.125, 0.25, 0.125])


# ----------------------------------------------------------------------------- ToMi traces
SENTENCE_RE = re.compile(r"[^.]+\.")


def expected_cues(story_text: str, obj: str, agent: str) -> list[str]:
    """The Cue stage read off the story text alone: each sentence that places or moves `obj`
    (without the story's own "while X was away"), plus " while AGENT was away" when `agent`
    is not in the room at that sentence (presence followed through the entered/exited lines)."""
    inside, cues = set(), []
    for s in (m.group(0).strip() for m in SENTENCE_RE.finditer(story_text)):
        if m := re.fullmatch(r"(\w+) entered the \w+\.", s):
            inside.add(m.group(1))
        elif m := re.fullmatch(r"(\w+) exited the \w+\.", s):
            inside.discard(m.group(1))
        elif s.startswith(f"The {obj} is in") or f" moved the {obj} to " in s:
            base = re.sub(r" while \w+ was away\.$", ".", s)[:-1]
            cues.append(base + ("" if agent in inside else f" while {agent} was away") + ".")
    return cues


def test_first_order_trace_cues_say_who_was_away_at_each_event():
    rows = stories.generate(60, seed=5, split="train", traces=True,
                            types=("first_order_fb", "first_order_tb"))
    away_seen = 0
    for r in rows:
        agent, obj = re.fullmatch(r"Where will (\w+) look for the (\w+)\?", r["question"]).groups()
        cue = re.search(r"Cue: (.*)\n", r["trace"]).group(1)
        want = expected_cues(r["story"], obj, agent)
        assert cue == " ".join(want), r
        away_seen += any("away" in c for c in want)
    assert away_seen >= 20  # the false-belief half says who was away


# ----------------------------------------------------------------------------- loaders
def socialiqa_files(tmp_path, n_labels):
    qs = [{"context": f"Kai lent Sam {i} books.", "question": f"What will Sam do {i}?",
           "answerA": "read", "answerB": "sleep", "answerC": "run"} for i in range(3)]
    path = write_jsonl(tmp_path / "dev.jsonl", qs)
    (tmp_path / "dev-labels.lst").write_text("".join(f"{x}\n" for x in "312"[:n_labels]))
    return path


def test_socialiqa_labels_file_aligned_and_its_length_checked(tmp_path):
    rows = D.load_socialiqa(socialiqa_files(tmp_path, 3))
    assert [(r.question, r.gold) for r in rows] == [
        ("What will Sam do 0?", "C"), ("What will Sam do 1?", "A"), ("What will Sam do 2?", "B")]
    path = socialiqa_files(tmp_path, 2)
    with pytest.raises(D.DataError, match=r"dev-labels.lst: 2 labels for 3 questions"):
        D.load_socialiqa(path)
    path = socialiqa_files(tmp_path, 3)
    with open(tmp_path / "dev-labels.lst", "a") as f:
        f.write("1\n")
    with pytest.raises(D.DataError, match=r"dev-labels.lst: 4 labels for 3 questions"):
        D.load_socialiqa(path)


@pytest.mark.parametrize("fmt, golds, want", [
    ("index0", [0, 2, 1, "3"], "ACBD"),
    ("index1", [1, 3, 2, "4"], "ACBD"),
])
def test_numeric_gold_formats(tmp_path, fmt, golds, want):
    recs = [{"question": f"q{i}", "options": ["w", "x", "y", "z"], "gold": g}
            for i, g in enumerate(golds)]
    path = write_jsonl(tmp_path / "t.jsonl", recs)
    cols = D.column_map([f"gold_format={fmt}", "story="])
    assert "".join(r.gold for r in D.load_mcq(path, cols)) == want
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(recs[0], gold=4 if fmt == "index0" else 0)])
    with pytest.raises(D.DataError, match="names no option"):
        D.load_mcq(bad, cols)


# ----------------------------------------------------------------------------- model judge
@pytest.fixture(scope="module")
def nan_rm(tmp_path_factory):
    """A tiny HF reward model whose embedding of '~' is NaN: an item with '~' scores NaN."""
    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    from tests.rm_fixtures import make_hf_reward_checkpoint

    d = tmp_path_factory.mktemp("nan_rm")
    make_hf_reward_checkpoint(d, seed=3, tokenizer=True)
    (tilde,) = AutoTokenizer.from_pretrained(str(d)).encode("~", add_special_tokens=False)
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key][tilde] = np.nan
    save_file(tensors, str(f), metadata={"format": "pt"})
    return str(d)


def test_model_judge_non_finite_scores_get_the_fallback(nan_rm):
    items = [JudgeItem("Sally left.", "Where?", OPTS, r, id=f"i{k}")
             for k, r in enumerate(["She thinks basket.", "She ~ thinks.", "Box."])]
    cfg = JudgeConfig(kind="model", checkpoint=nan_rm, batch_size=8, fallback=-1.75)
    with build_judge(cfg, "content") as judge:
        res = judge.score(items)
    assert res.failed.tolist() == [False, True, False]
    assert res.scores[1] == -1.75
    assert np.isfinite(res.scores).all() and res.counts["failures"] == 1
    with build_judge(JudgeConfig(kind="model", checkpoint=nan_rm, batch_size=8, fallback=None),
                     "content") as judge:
        with pytest.raises(JudgeError, match=r"item i1 scored nan \(not finite\)"):
            judge.score(items)
