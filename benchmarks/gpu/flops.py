"""Model FLOPs of the GRPO phases, counted from the config (for model FLOP utilisation).

Model FLOPs count the arithmetic the model needs, not what an implementation spends: a matmul
of [m, k] x [k, n] is 2mkn; rematerialisation's recomputation is not counted (MFU, not HFU);
elementwise work (norms, RoPE, softmax, SwiGLU's product) is left out as negligible.

Per sequence of P prompt + C completion tokens (T = P + C), forward:
  - the layers' projections: 2 x (q, k, v, o and the three MLP weights' sizes) per token, T tokens;
  - attention: per layer and query head, q.k and p.v over the causal pairs, T (T + 1) / 2 of
    them: 2 x 2 x head_dim per pair;
  - the LM head, 2 x hidden x vocab per position, only at the C positions that predict a
    completion token (what both the update and the reference log-probs compute).
A training update is 3x the forward (the backward is two matmuls per forward matmul).
"""

from __future__ import annotations


def layer_matmul_params(cfg) -> int:
    """Weights of one layer that multiply activations (norm scales excluded)."""
    d, h = cfg.hidden_size, cfg.head_dim
    attn = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    return attn + 3 * d * cfg.intermediate_size


def forward_flops(cfg, rows: int, prompt_len: int, completion_len: int) -> int:
    """Model FLOPs of a forward pass over `rows` sequences, head on the completion only."""
    t = prompt_len + completion_len
    proj = 2 * cfg.num_layers * layer_matmul_params(cfg) * t
    attn = cfg.num_layers * cfg.num_heads * 4 * cfg.head_dim * (t * (t + 1) // 2)
    head = 2 * cfg.hidden_size * cfg.vocab_size * completion_len
    return rows * (proj + attn + head)


def update_flops(cfg, rows: int, prompt_len: int, completion_len: int) -> int:
    """Model FLOPs of one training update (forward + backward) over `rows` sequences."""
    return 3 * forward_flops(cfg, rows, prompt_len, completion_len)
