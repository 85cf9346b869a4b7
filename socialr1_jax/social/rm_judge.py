"""The `model` judge: R_cont from a reward model run in-process, sharded on the mesh.

The reward model (`model/reward_model.py`) is a Qwen3 backbone with a scalar head, as
transformers' `Qwen3ForSequenceClassification` (num_labels=1); it loads from an HF directory of
that class or from our Orbax checkpoint (`checkpoint/rm_io.py`), e.g. one trained by
`python -m socialr1_jax.train_rm`; a LoRA run's (model.lora.rank > 0) loads as its base with
the run's adapters and head, and scores as the training's model did. Each item becomes one text (`rm_prompt.py`: the template,
truncation and batching shared with the trainer), and the judge returns the model's raw,
unbounded scores: the reward applies adj_cont = max(0, R_cont + 2) ** 1.2 itself.

It is a content judge only: a structure score must lie in [0, 1] and a reward model's does not.
Scoring runs on the judge's own thread (`submit` returns at once), so it overlaps with the
structure judge's requests. An item whose score is not finite gets the configured fallback.
Single-process: on a multi-host pod the batches are placed from this process's host.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Sequence

import numpy as np
from flax import nnx

from socialr1_jax.social import rm_prompt
from socialr1_jax.social.judges import (Judge, JudgeConfig, JudgeConfigError, JudgeError,
                                        JudgeItem, JudgeResult, JudgeUnavailable)


class ModelJudge(Judge):
    """R_cont from an in-process reward model (see the module docstring)."""

    def __init__(self, cfg: JudgeConfig, role: str):
        self.role, self.cfg, self.fallback = role, cfg, cfg.fallback
        where = f"{role}_judge"
        if role != "content":
            raise JudgeConfigError(f"{where}.kind='model': a reward model scores R_cont (raw, "
                                   "unbounded); the structure judge must answer in [0, 1], use "
                                   "kind 'http' or 'heuristic' for it")
        if not cfg.checkpoint:
            raise JudgeConfigError(f"{where}.checkpoint is empty; kind 'model' needs the reward "
                                   "model's directory (HF Qwen3ForSequenceClassification or Orbax)")
        if not os.path.isdir(cfg.checkpoint):
            raise JudgeConfigError(f"{where}.checkpoint: {cfg.checkpoint} is not a directory")
        if cfg.batch_size < 1 or cfg.max_length < 8:
            raise JudgeConfigError(f"{where}.batch_size={cfg.batch_size} must be >= 1 and "
                                   f"{where}.max_length={cfg.max_length} >= 8")
        self.template = cfg.prompt_template or rm_prompt.DEFAULT_TEMPLATE
        try:
            rm_prompt.template_fields(self.template)
        except ValueError as e:
            raise JudgeConfigError(f"{where}.{e}") from None
        self._load(where)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"judge-{role}")

    def _load(self, where: str) -> None:
        from socialr1_jax.checkpoint import orbax_io, rm_io
        from socialr1_jax.model.reward_model import make_score_fn
        from socialr1_jax.parallel.sharding import batch_shards, make_mesh, parse_mesh
        from socialr1_jax.rollout.tokenizer import encode, load_tokenizer

        cfg = self.cfg
        try:
            self.mesh = make_mesh(**parse_mesh(cfg.mesh)) if cfg.mesh else make_mesh()
        except ValueError as e:
            raise JudgeConfigError(f"{where}.mesh: {e}") from None
        if cfg.batch_size % batch_shards(self.mesh):
            raise JudgeConfigError(f"{where}.batch_size={cfg.batch_size} is not a multiple of the "
                                   f"mesh's {batch_shards(self.mesh)} batch shards")
        root = cfg.checkpoint
        if orbax_io.is_orbax_checkpoint(root):
            root = orbax_io.resolve(root)[0]
        tok_dir = cfg.tokenizer or root
        try:
            tokenizer = load_tokenizer(tok_dir)
        except (FileNotFoundError, OSError) as e:
            raise JudgeConfigError(f"{where}.tokenizer: {e}") from None
        self._encode = lambda text: encode(tokenizer, text)
        self.pad_id = rm_io.resolve_pad_id(cfg.checkpoint, cfg.pad_token_id, tokenizer)
        self.model = rm_io.load_reward_model(cfg.checkpoint, dtype=cfg.dtype or None,
                                             mesh=self.mesh, pad_token_id=self.pad_id)
        self._params = nnx.state(self.model)
        self._score_fn = make_score_fn(self.model, self.mesh)

    def texts(self, items: Sequence[JudgeItem]) -> list[str]:
        """The text the model reads for each item."""
        return [rm_prompt.render(self.template, story=it.story, question=it.question,
                                 reasoning=it.reasoning, options=it.options) for it in items]

    def _score(self, items: Sequence[JudgeItem]) -> JudgeResult:
        t0 = time.perf_counter()
        n = len(items)
        if n == 0:
            return JudgeResult(np.zeros(0), np.zeros(0, bool), {"batches": 0.0})
        rows, cut = rm_prompt.encode_texts(self._encode, self.texts(items), self.cfg.max_length)
        scores = rm_prompt.score_rows(lambda ids, mask: self._score_fn(self._params, ids, mask),
                                      rows, pad_id=self.pad_id, batch_size=self.cfg.batch_size,
                                      max_length=self.cfg.max_length)
        failed = ~np.isfinite(scores)
        if failed.any():
            first = items[int(np.argmax(failed))]
            if self.fallback is None:
                raise JudgeError(f"content judge (model): item {first.id or '?'} scored "
                                 f"{scores[failed][0]} (not finite) and no fallback is set")
            scores[failed] = self.fallback
        counts = {"batches": float(-(-n // self.cfg.batch_size)), "truncated": float(cut),
                  "failures": float(failed.sum()), "seconds": time.perf_counter() - t0}
        return JudgeResult(scores, failed, counts)

    def submit(self, items: Sequence[JudgeItem]) -> concurrent.futures.Future:
        """Start scoring `items` on the judge's thread; the future's result is a JudgeResult."""
        return self._pool.submit(self._score, list(items))

    def check(self) -> None:
        """Score one short item (compiles the smallest program); JudgeUnavailable if that fails
        or gives a non-finite score."""
        try:
            res = self._score([JudgeItem("A story.", "A question?", (), "Some reasoning.",
                                         id="probe")])
        except Exception as e:  # noqa: BLE001 (any failure means the judge cannot score)
            raise JudgeUnavailable(f"content judge (model {self.cfg.checkpoint}): {e}") from e
        if res.failed.any():
            raise JudgeUnavailable(f"content judge (model {self.cfg.checkpoint}): the probe "
                                   "scored a non-finite number")

    def close(self) -> None:
        """Stop the judge's thread."""
        self._pool.shutdown(wait=True)

    def __repr__(self):
        return f"ModelJudge(role={self.role!r}, checkpoint={self.cfg.checkpoint!r})"
