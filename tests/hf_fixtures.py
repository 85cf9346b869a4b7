"""Builders of tiny random Qwen3 checkpoints with transformers (the reference implementation)."""

from __future__ import annotations

import os


def make_hf_checkpoint(out_dir, *, tie=True, heads=4, kv_heads=2, head_dim=16, hidden=64,
                       layers=2, inter=128, vocab=256, seed=0, init_std=0.02, dtype="float32",
                       rope_theta=10000.0, max_shard_size=None):
    """Save a random Qwen3ForCausalLM to `out_dir`; returns the torch model (eval mode, fp32)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                      intermediate_size=inter, tie_word_embeddings=tie, initializer_range=init_std,
                      rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                      max_position_embeddings=2048)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    if init_std != 0.02:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(init_std * torch.randn_like(p))
    else:
        with torch.no_grad():  # random norm scales so the test sees whether they are applied
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
    save = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    save.save_pretrained(os.fspath(out_dir), **kwargs)
    return model.float()



# Qwen's special tokens, appended after the 256 byte tokens of the tiny tokenizer.
TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def make_tiny_tokenizer(out_dir, *, chat_template=None):
    """Save a byte-level tokenizer (256 byte tokens, no merges, then Qwen's special tokens).

    Built offline with `tokenizers`; ids 256, 257, 258 are <|endoftext|>, <|im_start|>,
    <|im_end|>. Returns the transformers tokenizer. Any text is encodable (one id per byte).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in TINY_SPECIALS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(os.fspath(out_dir))
    return fast


def make_tiny_chat_checkpoint(out_dir, *, vocab=272, seed=0, init_std=0.3, chat_template=None,
                              eos=(258, 256)):
    """A tiny random Qwen3 checkpoint with the tiny tokenizer and a generation_config.json
    whose eos_token_id is `eos` (Qwen's order: <|im_end|>, <|endoftext|>). Returns the torch model.
    """
    import json

    model = make_hf_checkpoint(out_dir, vocab=vocab, seed=seed, init_std=init_std)
    make_tiny_tokenizer(out_dir, chat_template=chat_template)
    with open(os.path.join(os.fspath(out_dir), "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": list(eos), "pad_token_id": 256}, f)
    return model
