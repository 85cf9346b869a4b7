"""The Social-R1 reward, term by term: hand-worked numbers and an independent recomputation
(written here, not by calling the functions under test), the issue's edge cases and every variant.
"""

import collections
import math
import random
import string

import pytest

from socialr1_jax.rewards import social_r1_score
from socialr1_jax.social import rewards as R
from socialr1_jax.yaml_config import load_yaml

ADJ0 = 2 ** 1.2  # adj_cont of a raw content score of 0: max(0, 0 + 2) ** 1.2 = 2.29739671


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_share(text, n=16):
    """Repeated n-grams / all n-grams, counted with a Counter (every occurrence after the first)."""
    grams = collections.Counter(text[i:i + n] for i in range(len(text) - n + 1))
    total = sum(grams.values())
    return sum(c - 1 for c in grams.values()) / total if total else 0.0


def ref_rlen(think, lo=400, hi=3000, temp=50):
    share = ref_share(think)
    rp = 1.0 if share <= 0.1 else math.exp(-8 * (share - 0.1))
    return sig((len(think) - lo) / temp) * sig((hi - len(think)) / temp) * rp


def unique_text(n, seed=0):
    """n characters with (almost surely) no repeated 16-gram."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))


def comp(think, answer="A", tail=" "):
    return f"<think>{think}</think>{tail}<Answer>{answer}</Answer>"


THINK = unique_text(1700)  # inside the window: r_len = sigmoid(26)^2 ~ 1 - 1e-11


# ----------------------------------------------------------------------------- single terms
@pytest.mark.parametrize("step, w_struct, w_cont", [
    (0, 2.0, 1.0), (100, 1.5, 2.0), (200, 1.0, 3.0), (600, 1.0, 3.0), (50, 1.75, 1.5)])
def test_curriculum(step, w_struct, w_cont):
    assert R.curriculum_weights(step) == pytest.approx((w_struct, w_cont))
    out = social_r1_score(comp(THINK), "A", step=step, struct=0.0, content=-2.0)
    assert (out["w_struct"], out["w_cont"]) == pytest.approx((w_struct, w_cont))


def test_curriculum_configurable():
    cfg = R.RewardConfig(curriculum_steps=10, w_struct_start=0.0, w_struct_end=1.0,
                         w_cont_start=4.0, w_cont_end=2.0)
    assert R.curriculum_weights(5, cfg) == pytest.approx((0.5, 3.0))
    assert R.curriculum_weights(0, R.RewardConfig(curriculum_steps=0)) == (1.0, 3.0)


def test_length_window_by_hand():
    assert R.length_window(400) == pytest.approx(0.5)       # sigmoid(0) * sigmoid(52)
    assert R.length_window(3000) == pytest.approx(0.5)
    assert R.length_window(1700) == pytest.approx(1.0)
    assert R.length_window(0) == pytest.approx(3.3535e-4, rel=1e-4)   # sigmoid(-8)
    assert R.length_window(450) == pytest.approx(0.7310586, rel=1e-6)  # sigmoid(1)
    assert R.length_window(10**6) == pytest.approx(0.0, abs=1e-300)    # no overflow
    demo = R.RewardConfig(len_min=40, len_max=400, len_temp=10)
    assert R.length_window(40, demo) == pytest.approx(0.5 * sig(36))


def test_repetition_by_hand():
    # "ab" * 100: 185 16-grams, 2 distinct -> share 183/185.
    assert R.repeat_share("ab" * 100) == pytest.approx(183 / 185)
    assert R.repetition_factor(183 / 185) == pytest.approx(math.exp(-8 * (183 / 185 - 0.1)))
    assert R.repeat_share("short text") == 0.0          # under 16 characters
    assert R.repeat_share("x" * 16) == 0.0              # one 16-gram: nothing repeats
    assert R.repeat_share("x" * 17) == pytest.approx(0.5)
    # 1-grams (configurable n): 10 letters, 9 distinct -> share exactly 0.1 -> rp 1;
    # 8 distinct -> 0.2 -> exp(-0.8).
    cfg = R.RewardConfig(rep_ngram=1)
    assert R.repeat_share("abcdefghia", 1) == 0.1
    assert R.repetition_factor(0.1) == 1.0 and R.repetition_factor(0.1 + 1e-9) < 1.0
    assert R.repetition_factor(R.repeat_share("abcdefghia", 1), cfg) == 1.0
    assert R.repetition_factor(R.repeat_share("abcdefghaa", 1), cfg) == \
        pytest.approx(math.exp(-0.8))


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
def test_repeat_share_matches_counting(n):
    rng = random.Random(n)
    texts = [unique_text(rng.randint(0, 3000), seed=k) for k in range(20)]
    texts += ["".join(rng.choice("ab") for _ in range(2000)), "é" * 40, "日本語のテキスト" * 10,
              "🙂 hi " * 50, "Sally thinks. " * 80, "x" * n, "x" * (n + 1)]
    for t in texts:
        assert R.repeat_share(t, n) == pytest.approx(ref_share(t, n), abs=1e-12), t[:40]


def test_adj_cont_by_hand():
    assert R.adjust_content(0.0) == pytest.approx(2.2973967)
    assert R.adjust_content(-2.0) == 0.0
    assert R.adjust_content(-5.0) == 0.0
    assert R.adjust_content(1.0) == pytest.approx(3 ** 1.2)


# ----------------------------------------------------------------------------- the full score
def test_full_score_by_hand():
    # EM 1, step 0: reasoning = 1 * (2 * 0.5 + 1 * 2^1.2) -> score = 1 + 3.2974 (r_len ~ 1).
    out = social_r1_score(comp(THINK), "A", step=0, struct=0.5, content=0.0)
    assert out["score"] == pytest.approx(1 + 1.0 + ADJ0, rel=1e-9)
    assert out["format"] == 1 and out["em"] == 1 and out["tau"] == 1
    assert out["r_len"] == pytest.approx(1.0) and out["adj_cont"] == pytest.approx(ADJ0)
    # Wrong answer: tau 0.2 and no EM.
    out = social_r1_score(comp(THINK, "B"), "A", step=0, struct=0.5, content=0.0)
    assert out["em"] == 0 and out["score"] == pytest.approx(0.2 * (1.0 + ADJ0), rel=1e-9)
    # Step 100: weights 1.5 / 2.
    out = social_r1_score(comp(THINK), "A", step=100, struct=0.5, content=0.0)
    assert out["score"] == pytest.approx(1 + 0.75 + 2 * ADJ0, rel=1e-9)
    # Floor: formatted, wrong, worthless reasoning -> 0.01.
    out = social_r1_score(comp(THINK, "B"), "A", step=0, struct=0.0, content=-9.0)
    assert out["score"] == 0.01


@pytest.mark.parametrize("think_len", [0, 100, 350, 1200, 2900, 3100, 5000])
@pytest.mark.parametrize("step", [0, 77, 250])
@pytest.mark.parametrize("em", [True, False])
def test_full_score_matches_recomputation(think_len, step, em):
    think = unique_text(think_len, seed=think_len)
    struct, content = 0.6, 0.7
    out = social_r1_score(comp(think, "C" if em else "D"), "c", step=step, struct=struct,
                          content=content)
    f = min(step, 200) / 200
    w_s, w_c = 2 - f, 1 + 2 * f
    tau = 1.0 if em else 0.2
    reasoning = tau * (w_s * struct + w_c * (content + 2) ** 1.2)
    expected = max(0.01, (float(em) + reasoning) * ref_rlen(think.strip()))  # L: stripped think
    assert out["score"] == pytest.approx(expected, rel=1e-9)


def test_long_repeated_text():
    think = "Sally thinks the ball is in the basket. " * 60  # 2400 characters
    out = social_r1_score(comp(think), "A", step=0, struct=1.0, content=0.0)
    share = ref_share(think.strip())
    assert share > 0.9 and out["repeat_share"] == pytest.approx(share)
    assert out["rp"] == pytest.approx(math.exp(-8 * (share - 0.1)))
    assert out["r_len"] == pytest.approx(ref_rlen(think.strip()), rel=1e-9)
    assert (1 + 2 + ADJ0) * out["r_len"] < 0.01 and out["score"] == 0.01  # floored


# ----------------------------------------------------------------------------- edge cases
def test_no_closing_think():
    out = social_r1_score("<think>Sally left. <Answer>A</Answer>", "A", step=0, struct=None,
                          content=None)
    assert out["format"] == 0 and out["em"] == 1 and out["score"] == 0.0
    assert out["think_len"] == 0  # no <think>...</think> pair: no think text


def test_two_answer_blocks():
    # The format regex (non-greedy groups, anchored at both ends) still matches, and the answer
    # is the first letter after the first <Answer>, as in the original reward code.
    c = comp(THINK, "A</Answer>\n<Answer>B")
    out = social_r1_score(c, "B", step=0, struct=1.0, content=0.0)
    assert out["format"] == 1 and out["em"] == 0
    assert social_r1_score(c, "A", step=0, struct=1.0, content=0.0)["em"] == 1


def test_lowercase_answer_is_not_an_answer():
    out = social_r1_score(comp(THINK, "b"), "B", step=0, struct=1.0, content=0.0)
    assert out["format"] == 1 and out["em"] == 0 and out["tau"] == pytest.approx(0.2)


def test_gold_letter_is_folded():
    for gold in ("b", "(B)", "B.", " b "):
        assert social_r1_score(comp(THINK, "B"), gold, step=0, struct=1, content=0)["em"] == 1
    with pytest.raises(ValueError, match="not a single option letter"):
        social_r1_score(comp(THINK), "AB", step=0, struct=1, content=0)


def test_empty_think():
    out = social_r1_score("<think></think><Answer>A</Answer>", "A", step=0, struct=0.0,
                          content=-2.0)
    assert out["format"] == 1 and out["think_len"] == 0 and out["rp"] == 1
    assert out["r_len"] == pytest.approx(sig(-8) * sig(60))
    # EM only, times a tiny window: 3.4e-4, floored to 0.01.
    assert 1.0 * out["r_len"] < 0.01 and out["score"] == 0.01
    out = social_r1_score("<think></think><Answer>A</Answer>", "A", step=0, struct=0.0,
                          content=-2.0, cfg=R.RewardConfig(min_score=0.0))
    assert out["score"] == pytest.approx(1.0 * sig(-8) * sig(60))


def test_think_under_16_characters():
    out = social_r1_score(comp("  aaaaaaaaaaaaaaa  "), "A", step=0, struct=1.0, content=0.0)
    assert out["think_len"] == 15 and out["repeat_share"] == 0 and out["rp"] == 1


@pytest.mark.parametrize("c", [
    comp(THINK), comp("  padded  "), "<think>open only <Answer>A</Answer>", "no tags",
    "pre <think>a</think> mid <think>b</think><Answer>C</Answer>", comp("x", "A</Answer><Answer>B")])
def test_parsing_agrees_with_the_evaluator_rules(c):
    # The reward and the evaluator read completions alike (social/answers.py).
    from socialr1_jax.social import answers
    p = R.parse_completion(c)
    assert (p.format_ok, p.answer, p.think) == (answers.format_ok(c), answers.extract_answer(c),
                                                 answers.extract_think(c))


def test_trailing_text_after_answer_breaks_the_format():
    out = social_r1_score(comp(THINK) + " done", "A", step=0, struct=1.0, content=0.0)
    assert out["format"] == 0 and out["score"] == 0


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant, expected", [
    # struct 0.5, content 0 (adj 2^1.2), step 0, EM 1, think 100 characters (lp = sigmoid(-6)).
    ("socialR1", (1 + 1.0 + ADJ0) * sig(-6) * sig(58)),
    ("socialR2", (1 + 1.0) * sig(-6) * sig(58)),
    ("socialR3", (1 + ADJ0) * sig(-6) * sig(58)),
    ("socialR4", 1 + 1.0 + ADJ0),           # no length factor
    ("socialR0", 2.0),                      # EM + R_fmt
])
def test_every_variant(variant, expected):
    think = unique_text(100, seed=3)
    out = social_r1_score(comp(think), "A", step=0, struct=0.5, content=0.0, variant=variant)
    assert out["score"] == pytest.approx(max(0.01, expected), rel=1e-9)


def test_social_r0_is_outcome_only():
    s = lambda c, g: social_r1_score(c, g, step=0, struct=None, content=None, variant="socialR0")
    assert s(comp(THINK), "A")["score"] == 2.0
    assert s(comp(THINK, "B"), "A")["score"] == 1.0
    assert s("<think>x <Answer>A</Answer>", "A")["score"] == 1.0   # EM without the format
    assert s("no tags", "A")["score"] == 0.0


def test_variant_from_config_and_override():
    cfg = R.RewardConfig(variant="socialR2")
    out = social_r1_score(comp(THINK), "A", step=0, struct=0.5, content=None, cfg=cfg)
    assert out["score"] == pytest.approx(2.0) and math.isnan(out["adj_cont"])
    out = social_r1_score(comp(THINK), "A", step=0, struct=0.5, content=0.0, cfg=cfg,
                          variant="socialR3")
    assert out["score"] == pytest.approx(1 + ADJ0)


def test_unknown_variant_and_missing_terms():
    with pytest.raises(ValueError, match=r"variant='socialR5'.*did you mean 'socialR"):
        social_r1_score(comp(THINK), "A", step=0, struct=1, content=0, variant="socialR5")
    with pytest.raises(ValueError, match="did you mean 'socialR1'"):
        R.RewardConfig(variant="socialr1")
    with pytest.raises(ValueError, match="needs a finite structure score"):
        social_r1_score(comp(THINK), "A", step=0, struct=None, content=0.0)
    with pytest.raises(ValueError, match="needs a finite content score"):
        social_r1_score(comp(THINK), "A", step=0, struct=1.0, content=math.nan)
    # A gated completion needs no judge values.
    assert social_r1_score("x", "A", step=0, struct=None, content=None)["score"] == 0


def test_every_term_is_returned():
    out = social_r1_score(comp(THINK), "A", step=0, struct=0.5, content=0.0)
    assert set(out) == set(R.TERMS)


def test_reward_config_from_yaml_with_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("variant: socialR3\nlen_min: 40\nlen_max: 400\n")
    cfg = load_yaml(R.RewardConfig, p, ["curriculum_steps=50", "tau_wrong=0.5"])
    assert (cfg.variant, cfg.len_min, cfg.len_max, cfg.curriculum_steps, cfg.tau_wrong) == \
        ("socialR3", 40.0, 400.0, 50, 0.5)
    with pytest.raises(ValueError, match="len_min=500.0 must be < len_max=400.0"):
        load_yaml(R.RewardConfig, p, ["len_min=500"])
    with pytest.raises(ValueError, match="unknown config key"):
        load_yaml(R.RewardConfig, p, ["len_mni=5"])
