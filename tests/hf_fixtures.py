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

