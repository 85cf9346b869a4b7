"""The Social-R1 task for the GRPO trainer: multiple-choice ToM rows in, reward per completion out.

It implements `rl/task.py`'s `Task` protocol. Each step takes the next `n` rows of a shuffled pass
over the training rows (deterministic per seed and step, so a resumed run sees the same prompts),
renders each through the chat template in thinking mode (the Social-R1 instruction, the story,
the question and the lettered options), and scores the decoded completions with a string-level
reward set (`score(prompts, completions, rows, step) -> (scores, metrics)`: the Social-R1 reward
and any user reward functions). Completions are decoded from the generated tokens up to, not
including, the stop token the model emitted.

After each `rewards` call, `last_metrics` holds the per-term means (format, EM, length, judges,
...) and `last_samples` the per-completion details (prompt, completion, score and terms) for the
trainer's logs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from socialr1_jax.rl.task import PromptBatch


class SocialR1Task:
    """Prompts from `rows` (dicts with story, question, options, gold, ...) and Social-R1 rewards.

    tokenizer: the policy's (chat template + encode/decode). reward_set: an object with
    `score(prompts, completions, rows, step) -> (scores [N], metrics dict)`. render(row) -> the
    user message of a row (the prompt layout); eos_ids: the stop ids the sampler uses.
    """

    def __init__(self, rows: Sequence[dict], tokenizer, reward_set, *,
                 render: Callable[[dict], str], eos_ids: Sequence[int], pad_id: int,
                 seed: int = 0, max_prompt_len: Optional[int] = None):
        from socialr1_jax.rollout import tokenizer as tk

        if not rows:
            raise ValueError("the Social-R1 task has no training rows")
        self.tokenizer, self.reward_set = tokenizer, reward_set
        self.eos_ids, self.pad_id, self.seed = tuple(int(e) for e in eos_ids), int(pad_id), seed
        self.rows = list(rows)
        self.texts = [tk.chat_text(tokenizer, render(r)) for r in self.rows]
        self.ids = [tk.encode(tokenizer, t) for t in self.texts]
        if max_prompt_len is not None:
            long = [i for i, p in enumerate(self.ids) if len(p) > max_prompt_len]
            if long:
                raise ValueError(f"{len(long)} prompt(s) are longer than rollout.max_prompt_len="
                                 f"{max_prompt_len} tokens (row {self.rows[long[0]].get('id')}: "
                                 f"{len(self.ids[long[0]])} tokens)")
        self.last_metrics: dict[str, float] = {}
        self.last_samples: list[dict] = []
        self._step = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def prompts(self, step: int, n: int) -> PromptBatch:
        """Rows step*n .. step*n+n-1 of the shuffled passes over the rows (a new shuffle each
        pass); `meta` holds the row indices."""
        start, total = step * n, len(self.rows)
        picked = []
        for k in range(start, start + n):
            epoch, pos = divmod(k, total)
            picked.append(int(self._order(epoch)[pos]))
        self._step = step
        return PromptBatch(ids=[list(self.ids[i]) for i in picked], meta=picked)

    def decode(self, completions: np.ndarray, mask: np.ndarray) -> list[str]:
        """Text of each completion: its tokens under the mask, without a final stop token."""
        out = []
        for toks, m in zip(np.asarray(completions), np.asarray(mask)):
            ids = toks[m > 0].tolist()
            if ids and ids[-1] in self.eos_ids:
                ids = ids[:-1]
            out.append(self.tokenizer.decode(ids, skip_special_tokens=False))
        return out

    def rewards(self, prompts: PromptBatch, completions: np.ndarray, mask: np.ndarray,
                group_size: int) -> np.ndarray:
        """Scores of the decoded completions (row i*G + j is sample j of prompt i)."""
        n = len(prompts.meta)
        if np.asarray(completions).shape[0] != n * group_size:
            raise ValueError(f"{np.asarray(completions).shape[0]} completions for {n} prompts x "
                             f"group {group_size}")
        texts = self.decode(completions, mask)
        idx = [prompts.meta[r // group_size] for r in range(n * group_size)]
        rows = [self.rows[i] for i in idx]
        prompt_texts = [self.texts[i] for i in idx]
        scores, metrics = self.reward_set.score(prompt_texts, texts, rows, self._step)
        scores = np.asarray(scores, np.float32)
        if scores.shape != (len(texts),):
            raise ValueError(f"the reward set returned {scores.shape} scores for {len(texts)} "
                             "completions")
        self.last_metrics = {k: float(v) for k, v in dict(metrics).items()}
        self.last_samples = [{"row_id": r.get("id"), "gold": r.get("gold"), "prompt": p,
                              "completion": c, "score": float(s)}
                             for r, p, c, s in zip(rows, prompt_texts, texts, scores)]
        return scores


def row_summary(row: dict) -> dict[str, Any]:
    """The fields of a row worth logging beside a sample (no story text)."""
    return {k: row[k] for k in ("id", "gold", "dimension", "question_type") if k in row}
