"""Held-out evaluation during training: `socialr1_jax.evaluate.run` every `eval.every` steps.

The rows are loaded (and every data error raised) before any model is built; the tokenizer is
the run's own (model.path's tokenizer files, or the task's `tokenizer`). Each evaluation samples
greedily with the current policy through the training sampler, on the run's mesh; on a pod every
process takes part in sampling and the completions are gathered to every host before scoring.
Results go to RUN/eval.jsonl (one line per evaluation, "step" = steps done) and TensorBoard
(`eval/accuracy`, ...).
"""

from __future__ import annotations

import os
from typing import Optional

from flax import nnx

from socialr1_jax.cli import UsageError
from socialr1_jax.parallel import distributed
from socialr1_jax.yaml_config import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def tokenizer_dir(path: str) -> str:
    """The folder holding the tokenizer files of checkpoint `path` ('' when there are none)."""
    if not path:
        return ""
    for d in (path, os.path.dirname(os.path.abspath(path))):  # a root, or a step directory
        if any(os.path.exists(os.path.join(d, f)) for f in TOKENIZER_FILES):
            return d
    return ""


def has_tokenizer(path: str) -> bool:
    """Whether checkpoint `path` carries tokenizer files."""
    return bool(tokenizer_dir(path))


def _evaluator():
    try:
        from socialr1_jax.social import evaluate
    except ImportError:
        return None
    return evaluate


class PeriodicEval:
    """Evaluate every `cfg.eval.every` steps (and before the first step when eval.at_start)."""

    def __init__(self, cfg):
        self.cfg = cfg.eval
        self.model_path = cfg.model.path
        self.tokenizer = None
        evaluate = _evaluator()
        if evaluate is None:
            raise ConfigError(f"eval.every={self.cfg.every}: the evaluator "
                              "(socialr1_jax.evaluate) is not part of this build; set eval.every=0")
        from socialr1_jax.social.benchmarks import load_benchmark

        self._evaluate = evaluate
        try:
            self.rows = load_benchmark(self.cfg.benchmark, self.cfg.data or None,
                                       limit=self.cfg.limit or None)
        except UsageError as e:
            raise ConfigError(f"eval.benchmark={self.cfg.benchmark} eval.data={self.cfg.data}: "
                              f"{e}") from None
        self.config = evaluate.EvalConfig(batch_size=self.cfg.batch_size,
                                          max_new_tokens=self.cfg.max_new_tokens,
                                          temperature=self.cfg.temperature,
                                          num_samples=self.cfg.num_samples, seed=cfg.run.seed)

    def attach(self, task) -> None:
        """Find the tokenizer: model.path's files, else the task's `tokenizer` attribute."""
        from socialr1_jax.rollout import tokenizer as tk

        path = tokenizer_dir(self.model_path)
        if path:
            self.tokenizer = tk.load_tokenizer(path)
        elif getattr(task, "tokenizer", None) is not None:
            self.tokenizer = task.tokenizer
        else:
            raise ConfigError("eval.every > 0 needs a tokenizer: model.path has no tokenizer "
                              "files and the task has none")

    def due(self, done: int) -> bool:
        """Whether to evaluate after `done` steps."""
        return bool(self.cfg.every) and done % self.cfg.every == 0

    def __call__(self, graphdef, params, mesh, *, eos_ids, pad_id) -> dict:
        """Accuracy and answer counts of the policy `params` on the held-out rows."""
        from socialr1_jax.rollout.sampler import sample

        def sample_everywhere(*args, **kwargs):
            out = sample(*args, **kwargs)
            out.tokens = distributed.gather(out.tokens)
            out.lengths = distributed.gather(out.lengths)
            return out

        report = self._evaluate.run(nnx.merge(graphdef, params), self.tokenizer, self.rows,
                                    config=self.config, eos_ids=eos_ids, pad_id=pad_id,
                                    mesh=mesh, name="eval", progress=False,
                                    sample_fn=sample_everywhere)
        overall = report["overall"]
        out = {"eval/accuracy": overall["accuracy"], "eval/questions": report["questions"],
               "eval/unparsable": overall["unparsable"], "eval/format_ok": overall["format_ok"]}
        for dim, s in sorted(report.get("by_dimension", {}).items()):
            out[f"eval/accuracy/{dim}"] = s["accuracy"]
        for task, s in sorted(report.get("by_task", {}).items()):  # e.g. the ToMi question types
            out.setdefault(f"eval/accuracy/{task}", s["accuracy"])
        return out


def make(cfg) -> Optional[PeriodicEval]:
    """The periodic evaluation of a run (None when eval.every=0)."""
    return PeriodicEval(cfg) if cfg.eval.every else None
