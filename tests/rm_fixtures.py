"""Tiny random reward models saved by transformers (`Qwen3ForSequenceClassification`, the
reference), and synthetic preference pairs."""

from __future__ import annotations

import json
import os

import numpy as np

PAD = 256  # the tiny tokenizer's <|endoftext|> (tests/hf_fixtures.make_tiny_tokenizer)


def make_hf_reward_checkpoint(out_dir, *, pad_token_id=PAD, tie=False, heads=4, kv_heads=2,
                              head_dim=16, hidden=64, layers=2, inter=128, vocab=272, seed=0,
                              dtype="float32", tokenizer=False):
    """Save a random Qwen3ForSequenceClassification (num_labels=1) to `out_dir`; returns the
    torch model (eval mode, fp32). Norm scales and the head are randomised too, so a test sees
    whether each is applied."""
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                      intermediate_size=inter, tie_word_embeddings=tie, num_labels=1,
                      pad_token_id=pad_token_id, max_position_embeddings=2048,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name == "score.weight":
                p.copy_(0.5 * torch.randn_like(p))
    model.to(getattr(torch, dtype)).save_pretrained(os.fspath(out_dir))
    if tokenizer:
        from tests.hf_fixtures import make_tiny_tokenizer
        make_tiny_tokenizer(out_dir)
    return model.float()


def torch_scores(model, ids, mask) -> np.ndarray:
    """transformers' scores [B] of a padded batch."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                    attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long))
    return out.logits[:, 0].float().numpy()


def padded(rows, pad, *, side="right", length=None):
    """(ids, mask) int arrays of token lists padded on `side` with `pad`."""
    t = length or max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        else:
            ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    return ids, mask


# Synthetic preferences: the chosen reasoning names the story's mental states, the rejected one
# is generic. A model can learn this from the text alone (tested on held-out pairs).
_NAMES = ["Sally", "Anne", "Tom", "Mia", "Ben", "Lea", "Sam", "Ivy"]
_THINGS = ["ball", "key", "book", "cake", "coin", "hat"]
_PLACES = ["basket", "box", "drawer", "bag", "cupboard", "jar"]


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows {story, question, options, chosen, rejected}: chosen reasoning tracks what the
    agent saw (belief words), rejected reasoning is vague (it ignores the story)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(_NAMES, 2, replace=False)
        thing = rng.choice(_THINGS)
        p1, p2 = rng.choice(_PLACES, 2, replace=False)
        story = (f"{a} puts the {thing} in the {p1}. {a} leaves. "
                 f"{b} moves the {thing} to the {p2}.")
        question = f"Where will {a} look for the {thing}?"
        chosen = (f"{a} saw the {thing} go into the {p1} and did not see {b} move it, "
                  f"so {a} believes it is still in the {p1}.")
        rejected = rng.choice([
            f"The {thing} is somewhere. People look in places. Maybe the {p2}.",
            f"I think the answer is the {p2} because it is the last place.",
            f"Hard to say. Things move around. Probably the {p2}.",
        ])
        rows.append({"id": f"pair-{i}", "story": story, "question": question,
                     "options": [p1, p2], "chosen": chosen, "rejected": str(rejected)})
    return rows


def write_jsonl(path, rows) -> str:
    """Write rows as JSONL; returns the path."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return os.fspath(path)


def make_rm_base(d, *, pairs: int = 96):
    """In folder `d`: a tiny causal LM with the byte tokenizer (pad <|endoftext|> = 256) at
    d/lm and `pairs` preference pairs at d/pairs.jsonl, the reward-model jobs' inputs; returns
    `d`."""
    from tests.hf_fixtures import make_tiny_chat_checkpoint

    make_tiny_chat_checkpoint(d / "lm", init_std=0.02)
    write_jsonl(d / "pairs.jsonl", preference_rows(pairs, seed=0))
    return d
