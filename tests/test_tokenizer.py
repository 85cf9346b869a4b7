"""The offline demo tokenizer: built without any hub, Qwen3's special tokens in their roles, Qwen3's
chat format, whole-word tokens for the story vocabulary with a byte fallback (every text round
trips), and saved/loaded like a real checkpoint's tokenizer."""

import json

import pytest

from socialr1_jax.rollout import tokenizer as tk
from socialr1_jax.social import stories
from socialr1_jax.social.demo_tokenizer import demo_tokenizer
from socialr1_jax.jobs.setup import run_tokenizer


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


def test_builds_offline_and_is_small(tok, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("the demo tokenizer must not touch the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    built = demo_tokenizer()
    assert len(built) == len(tok)
    assert 300 < len(tok) <= 640  # a few hundred rows, not Qwen3's 151,936


def test_special_tokens_have_qwen3_roles(tok):
    ids = {t: tok.convert_tokens_to_ids(t) for t in tk.QWEN_SPECIALS + tk.QWEN_THINK_TOKENS}
    assert len(set(ids.values())) == 5 and None not in ids.values()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == ids["<|im_end|>"] and tok.pad_token_id == ids["<|endoftext|>"]
    assert tk.stop_tokens(tok) == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    # each special string in text is exactly its one id
    text = "<|im_start|>user\nhi<|im_end|>\n<think>x</think><|endoftext|>"
    enc = tk.encode(tok, text)
    for t, i in ids.items():
        assert enc.count(i) == 1, t
    # as in Qwen3: the chat specials are dropped by skip_special_tokens, <think> tags are kept
    assert tok.decode(enc, skip_special_tokens=True) == "user\nhi\n<think>x</think>"
    assert tok.decode(enc) == text


def test_chat_template_is_qwen3_format(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    # thinking mode (the default) appends nothing; non-thinking mode the empty think block
    off = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False)
    assert off == ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
                   "<think>\n\n</think>\n\n")
    assert tk.chat_text(tok, "Hi there") == tk.QWEN_TURN.format(
        role="user", content="Hi there") + tk.QWEN_GENERATION_PROMPT
    multi = tok.apply_chat_template(msgs[1:] + [{"role": "assistant", "content": "Hello"}],
                                    tokenize=False)
    assert multi.endswith("<|im_start|>assistant\nHello<|im_end|>\n")


def test_story_words_are_single_tokens_and_texts_round_trip(tok):
    rows = stories.generate(60, seed=2, traces=True)
    for r in rows:
        for text in (r["story"], r["question"], r["trace"], tk.chat_text(tok, r["story"])):
            ids = tk.encode(tok, text)
            assert tok.decode(ids) == text
            # one token per word or punctuation mark: no word falls back to bytes
            words = len(text.replace("\n", " ").split())
            assert len(ids) <= 2.6 * words, (len(ids), words, text)
    ids = tk.encode(tok, " Sally moved the apple to the basket.")
    assert tok.convert_ids_to_tokens(ids) == ["ĠSally", "Ġmoved", "Ġthe", "Ġapple", "Ġto",
                                              "Ġthe", "Ġbasket", "."]
    assert len(tk.encode(tok, "<Answer>B</Answer>")) == 3


@pytest.mark.parametrize("text", ["héllo wörld ✓ 数字 123\ttabs  two spaces\n\nend",
                                  "Zyzzyva quixotically <b>html</b> {json: [1, 2]}", ""])
def test_unknown_text_round_trips_through_bytes(tok, text):
    ids = tk.encode(tok, text)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_saved_and_loaded_like_a_checkpoint(tok, tmp_path):
    tk.save_tokenizer_files(str(tmp_path), tok)
    loaded = tk.load_tokenizer(str(tmp_path))
    text = tk.chat_text(tok, "Story: Anne entered the attic.") + "<think>Cue: x</think>"
    assert tk.encode(loaded, text) == tk.encode(tok, text)
    assert tk.chat_text(loaded, "Q") == tk.chat_text(tok, "Q")
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tk.stop_tokens(tok)
    assert tk.stop_ids(str(tmp_path), loaded) == tk.stop_tokens(tok)
    assert tk.pad_id(loaded, gen["eos_token_id"]) == tok.pad_token_id


def test_run_tokenizer_choices(tmp_path):
    from socialr1_jax.cli import UsageError
    from socialr1_jax.jobs.train_config import ModelSection

    assert len(run_tokenizer(ModelSection(tokenizer="demo"))) > 300
    with pytest.raises(UsageError, match="model.tokenizer is required"):
        run_tokenizer(ModelSection(preset="tiny"))
    with pytest.raises(UsageError, match="model.tokenizer="):
        run_tokenizer(ModelSection(tokenizer=str(tmp_path / "nowhere")))
    with pytest.raises(UsageError, match="vocabulary"):
        tk.check_vocab(demo_tokenizer(), 256)
