"""The `model` judge: the reward model's scores for judge items (checked item by item against
transformers on the same text), through the reward set, truncation, and its config errors."""

import numpy as np
import pytest

from socialr1_jax.social import rm_prompt
from socialr1_jax.social.judge_kinds import build_judge
from socialr1_jax.social.judges import JudgeConfig, JudgeConfigError, JudgeItem
from socialr1_jax.social.reward_fns import RewardSet, RewardSetConfig
from socialr1_jax.social.rewards import RewardConfig
from tests.rm_fixtures import PAD, make_hf_reward_checkpoint, torch_scores


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm_judge")
    ref = make_hf_reward_checkpoint(d, seed=7, tokenizer=True)
    return str(d), ref


def _items(n=5):
    stories = ["Sally puts the ball in the basket and leaves.",
               "Anne moves the key to the box while Tom is away. Tom comes back later.",
               "Mia hides the cake.", "Ben sees the coin in the jar.",
               "Lea tells Sam a secret about the hat in the drawer."]
    reasons = ["Sally did not see the move, so she believes the ball is in the basket.",
               "Tom was away; he thinks the key is still where he left it.",
               "x", "Ben saw it, so he knows.", "Sam now knows what Lea knows."]
    return [JudgeItem(story=stories[i % 5], question=f"Where is it? ({i})", options=("A", "B"),
                      reasoning=reasons[i % 5], id=f"item-{i}") for i in range(n)]


def _reference(path, ref, texts, max_length=None):
    """transformers' score of each text alone (no padding), tokenized by transformers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        if max_length:
            ids = ids[-max_length:]
        out.append(torch_scores(ref, np.asarray([ids]), np.ones((1, len(ids)), np.int32))[0])
    return np.asarray(out)


def test_model_judge_scores_equal_transformers(rm_dir):
    path, ref = rm_dir
    with build_judge(JudgeConfig(kind="model", checkpoint=path, batch_size=4, fallback=None,
                                 mesh="2x2x2"),
                     "content") as judge:
        judge.check()
        items = _items(7)  # two batches, the second padded with all-pad rows
        res = judge.score(items)
        texts = judge.texts(items)
    assert texts[0].startswith("<|im_start|>user\nStory:\nSally puts")
    assert texts[0].endswith("believes the ball is in the basket.<|im_end|>")
    expected = _reference(path, ref, texts)
    np.testing.assert_allclose(res.scores, expected, atol=1e-4)
    assert np.ptp(expected) > 0.1  # the items really score differently
    assert not res.failed.any()
    assert res.counts["batches"] == 2 and res.counts["truncated"] == 0


def test_truncation_keeps_the_end(rm_dir):
    path, ref = rm_dir
    cfg = JudgeConfig(kind="model", checkpoint=path, batch_size=8, max_length=40)
    with build_judge(cfg, "content") as judge:
        items = _items(2)
        res = judge.score(items)
        texts = judge.texts(items)
    assert res.counts["truncated"] == 2
    np.testing.assert_allclose(res.scores, _reference(path, ref, texts, max_length=40),
                               atol=1e-4)


def test_through_the_reward_set(rm_dir):
    path, ref = rm_dir
    cfg = RewardSetConfig(social=RewardConfig(variant="socialR3", len_min=0, len_max=10_000),
                          content_judge=JudgeConfig(kind="model", checkpoint=path, batch_size=4,
                                                        mesh="1x4x2"))
    items = _items(3)
    completions = [f"<think>{it.reasoning}</think><Answer>A</Answer>" for it in items]
    completions[2] = "no format"  # not judged: gated to 0
    rows = [{"gold": "A", "story": it.story, "question": it.question, "options": it.options,
             "id": it.id} for it in items]
    with RewardSet.from_config(cfg) as rewards:
        batch = rewards.submit([""] * 3, completions, rows, 0).result()
    content = batch.terms["social_r1/content"]
    texts = [rm_prompt.render(rm_prompt.DEFAULT_TEMPLATE, story=it.story, question=it.question,
                              reasoning=it.reasoning) for it in items[:2]]
    np.testing.assert_allclose(content[:2], _reference(path, ref, texts), atol=1e-4)
    assert np.isnan(content[2]) and batch.scores[2] == 0
    assert batch.metrics["judge/content/batches"] == 1


def test_config_errors(rm_dir, tmp_path):
    path, _ = rm_dir
    with pytest.raises(JudgeConfigError, match="struct_judge.kind='model'"):
        build_judge(JudgeConfig(kind="model", checkpoint=path), "struct")
    with pytest.raises(JudgeConfigError, match="content_judge.checkpoint is empty"):
        build_judge(JudgeConfig(kind="model"), "content")
    with pytest.raises(JudgeConfigError, match="not a directory"):
        build_judge(JudgeConfig(kind="model", checkpoint=str(tmp_path / "nope")), "content")
    with pytest.raises(JudgeConfigError, match=r"prompt_template.*\{answer\}"):
        build_judge(JudgeConfig(kind="model", checkpoint=path,
                                prompt_template="{story} {answer} {reasoning}"), "content")
    with pytest.raises(JudgeConfigError, match=r"no \{reasoning\}"):
        build_judge(JudgeConfig(kind="model", checkpoint=path, prompt_template="{story}"),
                    "content")
    with pytest.raises(JudgeConfigError, match="batch_size=3 is not a multiple of the mesh's 8"):
        build_judge(JudgeConfig(kind="model", checkpoint=path, batch_size=3), "content")


def test_template_rendering_and_buckets():
    text = rm_prompt.render("{story}|{question}|{options}|{reasoning} {{x}}", story="S",
                            question="Q", reasoning="R", options=("red box", "bag"))
    assert text == "S|Q|A. red box\nB. bag|R {x}"
    assert [rm_prompt.bucket_length(n, 100) for n in (0, 1, 32, 33, 64, 65, 100)] == \
        [32, 32, 32, 64, 64, 100, 100]
    rows, cut = rm_prompt.encode_texts(lambda t: [ord(c) for c in t], ["abcdef", "ab"], 4)
    assert rows == [[99, 100, 101, 102], [97, 98]] and cut == 1
    ids, mask = rm_prompt.pad_rows([[5, 6], [7]], PAD, 4, 3)
    np.testing.assert_array_equal(ids, [[5, 6, PAD, PAD], [7, PAD, PAD, PAD], [PAD] * 4])
    np.testing.assert_array_equal(mask.sum(1), [2, 1, 0])
