"""The Social-R1 task for the GRPO trainer: multiple-choice ToM rows in, a reward per completion out.

It implements `rl/task.py`'s `Task` protocol. The rows (ToMBench-Hard, SocialIQA, procedural
ToMi stories, any loader of `social/benchmarks.py`) become chat prompts once, through
`social/prompts.py` (the Social-R1 instruction, story / question / options, thinking mode,
options shuffled with a seed when configured, too-long prompts dropped and counted or refused).
Step s takes prompts s*n .. s*n+n-1 of shuffled passes over them: a function of (seed, step)
only, so a resumed run sees the prompts an uninterrupted one would.

Completions are decoded from the generated tokens up to, not including, the stop token the model
emitted, and scored by a string-level reward set (`social/reward_fns.RewardSet`: the Social-R1
reward and any user functions): `score(prompts, completions, rows, step)`. The result carries
every reward term per completion (logged as metrics and written to samples.jsonl) and the
answer's exact match as the accuracy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from socialr1_jax.rl.task import PromptBatch, Scores

EM_TERM = "social_r1/em"  # the Social-R1 reward's exact-match term (the accuracy)


class SocialR1Task:
    """Prompts from `rows` and rewards from `reward_set`.

    rows: MCQRow or dicts (id, story, question, options, gold, ...). tokenizer: the policy's
    (chat template, encode, decode). reward_set: an object with `submit(prompts, completions,
    rows, step).result()` -> (scores, metrics, terms), e.g. `RewardSet.from_config(cfg.reward)`.
    prompt: a `PromptConfig` (layout, instruction, shuffle, length limit). eos_ids: the stop
    tokens (default: the tokenizer's Qwen3 stops); seed: the order of the passes over the rows.
    """

    def __init__(self, rows: Sequence, tokenizer, reward_set, *, prompt=None,
                 eos_ids: Optional[Sequence[int]] = None, pad_id: Optional[int] = None,
                 seed: int = 0):
        from socialr1_jax.rollout import tokenizer as tk
        from socialr1_jax.social.prompts import PromptConfig, build_prompts

        self.tokenizer, self.reward_set, self.seed = tokenizer, reward_set, int(seed)
        self.prompt_set = build_prompts(rows, tokenizer, prompt or PromptConfig())
        if not len(self.prompt_set):
            raise ValueError(f"no training prompt fits ({len(self.prompt_set.dropped)} longer "
                             "than the prompt's max_prompt_tokens)")
        self.rows = [r.as_dict() for r in self.prompt_set.rows]  # gold follows the shuffle
        self.eos_ids = tuple(int(e) for e in (eos_ids if eos_ids is not None
                                              else tk.stop_tokens(tokenizer)))
        self.pad_id = int(pad_id) if pad_id is not None else tk.pad_id(tokenizer,
                                                                       list(self.eos_ids))
        self._step = 0

    @property
    def dropped(self) -> list[tuple[str, int]]:
        """(row id, tokens) of the rows left out as too long."""
        return self.prompt_set.dropped

    def write_side_files(self, root: str) -> None:
        """The tokenizer files beside a checkpoint's steps when they are not there yet (a run
        whose tokenizer is the offline demo one, not a checkpoint's)."""
        import os

        from socialr1_jax.rollout import tokenizer as tk

        if not os.path.exists(os.path.join(root, "tokenizer.json")):
            tk.save_tokenizer_files(root, self.tokenizer, list(self.eos_ids))

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def prompts(self, step: int, n: int) -> PromptBatch:
        """Prompts step*n .. step*n+n-1 of the shuffled passes over the rows (a new shuffle
        each pass); `meta` holds the row indices."""
        total, picked, orders = len(self.rows), [], {}
        for k in range(step * n, step * n + n):
            epoch, pos = divmod(k, total)
            if epoch not in orders:
                orders[epoch] = self._order(epoch)
            picked.append(int(orders[epoch][pos]))
        self._step = step
        ps = self.prompt_set
        return PromptBatch(ids=[list(ps.ids[i]) for i in picked], meta=picked,
                           texts=[ps.texts[i] for i in picked])

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
                group_size: int):
        """Scores (with every term, the EM accuracy and the decoded texts) of the completions;
        row i*G + j is sample j of prompt i."""
        n = len(prompts.meta)
        if np.asarray(completions).shape[0] != n * group_size:
            raise ValueError(f"{np.asarray(completions).shape[0]} completions for {n} prompts x "
                             f"group {group_size}")
        texts = self.decode(completions, mask)
        idx = [prompts.meta[r // group_size] for r in range(n * group_size)]
        batch = self.reward_set.submit([self.prompt_set.texts[i] for i in idx], texts,
                                       [self.rows[i] for i in idx], self._step).result()
        terms = {k: np.asarray(v, np.float32) for k, v in batch.terms.items()}
        # The per-term means are the trainer's to take (from `terms`); the judges' counters
        # (requests, failures, cache hits) pass as they are.
        counters = {k: v for k, v in batch.metrics.items() if not k.startswith("reward/")}
        return Scores(rewards=np.asarray(batch.scores, np.float32), terms=terms,
                      accuracy=terms.get(EM_TERM), completions=texts, metrics=counters)
