"""The Social-R1 task: deterministic prompts per (seed, step) through the chat template, every row
once per pass; completions decoded without their stop token and scored by the reward set with
every term, the gold letter following shuffled options."""

import numpy as np
import pytest

from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.social import stories
from socialr1_jax.social.demo_tokenizer import demo_tokenizer
from socialr1_jax.social.judges import JudgeConfig
from socialr1_jax.social.prompts import PromptConfig, PromptTooLong
from socialr1_jax.social.reward_fns import RewardSet, RewardSetConfig
from socialr1_jax.social.rewards import RewardConfig
from socialr1_jax.social.task import SocialR1Task


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def rewards():
    cfg = RewardSetConfig(social=RewardConfig(len_min=100, len_max=800, len_temp=20),
                          struct_judge=JudgeConfig(kind="heuristic"),
                          content_judge=JudgeConfig(kind="heuristic", fallback=-2.0))
    with RewardSet.from_config(cfg) as rs:
        yield rs


def _encode_completions(tok, texts, eos, width=128):
    ids = np.zeros((len(texts), width), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
        row = tk.encode(tok, t) + [eos]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def test_prompts_are_deterministic_and_cover_every_row_once_per_pass(tok, rewards):
    rows = stories.generate(10, seed=3, traces=True)
    task = SocialR1Task(rows, tok, rewards, seed=5)
    seen = [i for s in range(5) for i in task.prompts(s, 4).meta]  # 20 = two passes
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new shuffle each pass
    again = SocialR1Task(rows, tok, rewards, seed=5)
    b3 = again.prompts(3, 4)  # no earlier step needed: a resumed run sees the same prompts
    assert b3.meta == seen[12:16]
    assert b3.ids[0] == tk.encode(tok, task.prompt_set.texts[b3.meta[0]])
    text = tok.decode(b3.ids[0])
    assert text.startswith("<|im_start|>user\nStory: ") and text.endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
    assert SocialR1Task(rows, tok, rewards, seed=6).prompts(0, 10).meta != seen[:10]


def test_rewards_score_decoded_completions_with_every_term(tok, rewards):
    rows = stories.generate(3, seed=4, traces=True)
    task = SocialR1Task(rows, tok, rewards)
    batch = task.prompts(0, 3)
    eos = task.eos_ids[0]
    texts = []
    for i in batch.meta:  # per prompt: the gold trace, a wrong letter, garbage
        r = task.rows[i]
        wrong = "A" if r["gold"] != "A" else "B"
        texts += [rows[i]["trace"], rows[i]["trace"].replace(f"<Answer>{r['gold']}<",
                                                             f"<Answer>{wrong}<"), "hello"]
    ids, mask = _encode_completions(tok, texts, eos)
    out = task.rewards(batch, ids, mask, 3)
    scores = out.rewards
    ref = rewards.submit([task.prompt_set.texts[i] for i in batch.meta for _ in range(3)], texts,
                         [task.rows[i] for i in batch.meta for _ in range(3)], 0).result()
    np.testing.assert_allclose(scores, ref.scores, rtol=1e-6)
    assert task.decode(ids, mask) == texts  # the stop token is not part of the text
    s = scores.reshape(3, 3)
    assert (s[:, 0] > s[:, 1]).all() and (s[:, 2] == 0).all()
    np.testing.assert_array_equal(out.accuracy, [1, 0, 0] * 3)
    assert {"social_r1/format", "social_r1/r_len", "social_r1/struct"} <= set(out.terms)
    assert out.completions == texts
    assert batch.texts == [task.prompt_set.texts[i] for i in batch.meta]


def test_shuffled_options_remap_the_gold(tok, rewards):
    rows = stories.generate(40, seed=8, traces=True)
    task = SocialR1Task(rows, tok, rewards, prompt=PromptConfig(shuffle=True, seed=1))
    moved = 0
    for r, orig in zip(task.rows, rows):
        assert r["options"][ord(r["gold"]) - 65] == orig["answer"]
        moved += r["gold"] != orig["gold"]
    assert moved > 10


def test_too_long_prompts_are_dropped_and_counted(tok, rewards):
    rows = stories.generate(20, seed=2)
    full = SocialR1Task(rows, tok, rewards)
    lengths = sorted(len(i) for i in full.prompt_set.ids)
    limit = lengths[10]
    task = SocialR1Task(rows, tok, rewards, prompt=PromptConfig(max_prompt_tokens=limit))
    assert len(task.rows) + len(task.dropped) == 20
    assert len(task.dropped) == sum(n > limit for n in lengths) > 0
    assert all(n > limit for _, n in task.dropped)
    assert all(len(i) <= limit for i in task.prompt_set.ids)
    with pytest.raises(PromptTooLong, match="max_prompt_tokens"):
        SocialR1Task(rows, tok, rewards, prompt=PromptConfig(max_prompt_tokens=limit,
                                                             on_too_long="error"))
