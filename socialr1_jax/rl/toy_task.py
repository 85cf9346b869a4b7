"""The toy task: reward 1 when a completion starts with a chosen token, 0 otherwise.

It implements the trainer's `Task` protocol (`task.py`). A tiny random
model starts near 1/vocab and GRPO can teach it the token in a few tens of updates, which is
what the demo (`python -m socialr1_jax.train`) and the learning test show.
"""

from __future__ import annotations

import numpy as np

from socialr1_jax.rl.task import PromptBatch, Scores


class ToyTask:
    """Reward 1.0 iff the first completion token is `target_token`.

    Prompts are `num_prompts` fixed random sequences of `prompt_len` ids drawn from
    [2, vocab_size) (0 is pad, 1 is EOS by default), picked at random each step.
    """

    def __init__(self, vocab_size: int, *, target_token: int = 7, prompt_len: int = 6,
                 eos_id: int = 1, pad_id: int = 0, num_prompts: int = 64, seed: int = 0):
        if not 0 <= target_token < vocab_size:
            raise ValueError(f"toy.target_token={target_token} is outside the vocabulary "
                             f"[0, {vocab_size})")
        if target_token in (eos_id, pad_id):
            raise ValueError(f"toy.target_token={target_token} must differ from eos {eos_id} "
                             f"and pad {pad_id}")
        if prompt_len < 1 or num_prompts < 1:
            raise ValueError("toy.prompt_len and toy.num_prompts must be >= 1")
        self.target_token = int(target_token)
        self.eos_ids = (int(eos_id),)
        self.pad_id = int(pad_id)
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.pool = rng.integers(2, vocab_size, size=(num_prompts, prompt_len)).tolist()

    def prompts(self, step: int, n: int) -> PromptBatch:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, len(self.pool), size=n)
        return PromptBatch(ids=[list(self.pool[i]) for i in idx], meta=[int(i) for i in idx])

    def rewards(self, prompts: PromptBatch, completions: np.ndarray, mask: np.ndarray,
                group_size: int) -> Scores:
        """1.0 per completion whose first token is the target (its accuracy too)."""
        completions, mask = np.asarray(completions), np.asarray(mask)
        if completions.shape[0] != len(prompts.ids) * group_size:
            raise ValueError(f"{completions.shape[0]} completions for {len(prompts.ids)} prompts "
                             f"x group {group_size}")
        hit = ((completions[:, 0] == self.target_token) & (mask[:, 0] > 0)).astype(np.float32)
        return Scores(rewards=hit, terms={"hit": hit}, accuracy=hit)
