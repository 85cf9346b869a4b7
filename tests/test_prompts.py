"""social/prompts.py: the chat layout, seeded option shuffles, too-long prompts."""

import collections

import pytest

from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.social import data as D
from socialr1_jax.social import tombench as TB
from socialr1_jax.social import prompts as P
from tests.hf_fixtures import make_tiny_tokenizer
from tests.tom_data import QWEN3_LIKE_TEMPLATE, tombench_dir, toy_rows


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"), chat_template=QWEN3_LIKE_TEMPLATE)


@pytest.fixture(scope="module")
def rows():
    return TB.load_tombench(str(tombench_dir()))


def test_shuffle_keeps_gold_on_its_text_for_every_row(rows):
    moved = 0
    golds = collections.Counter()
    for r in rows:
        s, order = P.shuffle_options(r, seed=3)
        assert sorted(order) == list(range(len(r.options)))
        assert list(s.options) == [r.options[i] for i in order]
        assert s.gold_text == r.gold_text
        assert order[s.gold_index] == r.gold_index  # the same option, not only equal text
        assert (s.id, s.story, s.question, s.ability) == (r.id, r.story, r.question, r.ability)
        moved += order != tuple(range(len(order)))
        if len(r.options) == 4:
            golds[s.gold] += 1
    # The shuffle really moves options: a 4-option row stays put 1/24 of the time, 2-option 1/2.
    assert moved > 0.75 * len(rows)
    assert set(golds) == set("ABCD") and min(golds.values()) > 0.2 * sum(golds.values())


def test_shuffle_is_seeded_per_row(rows):
    some = rows[::97]
    a = [P.shuffle_options(r, 5)[1] for r in some]
    assert a == [P.shuffle_options(r, 5)[1] for r in some]             # deterministic
    assert a == [P.shuffle_options(r, 5)[1] for r in reversed(some)][::-1]  # order-free
    assert a != [P.shuffle_options(r, 6)[1] for r in some]             # the seed matters


def test_prompt_through_chat_template_thinking_mode(tok):
    row = D.as_row(toy_rows(3)[2])
    cfg = P.PromptConfig()
    text = tk.chat_text(tok, P.user_message(row, cfg))
    expected_user = (f"Story: {row.story}\n\nQuestion: {row.question}\n\nOptions:\n"
                     + "\n".join(f"{L}. {o}" for L, o in zip("ABCD", row.options))
                     + "\n\n" + P.SOCIAL_R1_INSTRUCTION)
    assert text == f"<|im_start|>user\n{expected_user}<|im_end|>\n<|im_start|>assistant\n"
    assert "<think>" not in text.split("<|im_start|>assistant\n")[1]  # the model opens it
    assert P.SOCIAL_R1_INSTRUCTION.startswith("You should first think about the reasoning")
    # Without a chat template the tokenizer module writes Qwen's format: the same text.
    tok_plain = make_tiny_tokenizer(__import__("tempfile").mkdtemp())
    assert tk.chat_text(tok_plain, P.user_message(row, cfg)) == text
    # No story: no "Story:" block.
    bare = D.MCQRow(id="q", story="", question="Q?", options=("x", "y"), gold="A")
    assert P.user_message(bare, cfg).startswith("Question: Q?\n\nOptions:\nA. x\nB. y\n\n")


def test_build_prompts_shuffled_prompt_shows_gold_at_its_letter(tok, rows):
    some = rows[::29]
    ps = P.build_prompts(some, tok, P.PromptConfig(shuffle=True, seed=1, max_prompt_tokens=4096))
    assert len(ps) == len(some) and not ps.dropped
    for orig, r, text, ids in zip(some, ps.rows, ps.texts, ps.ids):
        assert f"\n{r.gold}. {orig.gold_text}\n" in text
        assert ids == tk.encode(tok, text)
        assert orig.story in text and orig.question in text
    assert any(r.gold != o.gold for r, o in zip(ps.rows, some))


def test_too_long_prompts_dropped_and_counted_never_cut(tok, rows):
    some = rows[:120]
    full = [len(tk.encode(tok, tk.chat_text(tok, P.user_message(r)))) for r in some]
    limit = sorted(full)[len(full) // 2]
    ps = P.build_prompts(some, tok, P.PromptConfig(max_prompt_tokens=limit))
    assert [d[0] for d in ps.dropped] == [r.id for r, n in zip(some, full) if n > limit]
    assert [d[1] for d in ps.dropped] == [n for n in full if n > limit]
    assert [r.id for r in ps.rows] == [r.id for r, n in zip(some, full) if n <= limit]
    assert [len(i) for i in ps.ids] == [n for n in full if n <= limit]  # whole prompts only
    with pytest.raises(P.PromptTooLong, match=r"row 'tombench/.*': .* more than "
                                              rf"max_prompt_tokens={limit}"):
        P.build_prompts(some, tok, P.PromptConfig(max_prompt_tokens=limit, on_too_long="error"))


def test_prompt_config_checks():
    with pytest.raises(ValueError, match="on_too_long='cut'"):
        P.PromptConfig(on_too_long="cut")
    with pytest.raises(ValueError, match="must use"):
        P.PromptConfig(template="{question}")
    with pytest.raises(ValueError, match="may use only"):
        P.PromptConfig(template="{question} {options} {answer}")
    with pytest.raises(ValueError, match="max_prompt_tokens=0"):
        P.PromptConfig(max_prompt_tokens=0)
    custom = P.PromptConfig(template="{question}\n{options}", instruction="ignored")
    row = D.MCQRow(id="q", story="s", question="Q?", options=("x", "y"), gold="B")
    assert P.user_message(row, custom) == "Q?\nA. x\nB. y"


def test_prompt_config_from_yaml_overrides():
    from socialr1_jax.yaml_config import from_dict

    cfg = from_dict(P.PromptConfig, {"shuffle": "true", "seed": "7", "on_too_long": "error"})
    assert cfg.shuffle is True and cfg.seed == 7 and cfg.on_too_long == "error"
