"""The run harness: what every training job does around its own step, written once.

A job (GRPO `train`, the reward model `train_rm`, the SFT warm start `sft`) supplies what is
its own: a step `step(k, state) -> (state, metrics)` (None: stopped before the update, the state
intact), an evaluation, the checkpoint meta and how a step reads on the console. The harness
owns the rest:

- the run directory (`run_dir.RunLogs`: config.yaml, metrics.jsonl, eval.jsonl, samples.jsonl,
  TensorBoard) and the TrainCheckpointer under RUN/checkpoints;
- start: resume from the newest good checkpoint (a damaged newest one falls back to the one
  before, with a warning naming it), or a fresh state; the config-change warnings;
- the console and its one progress bar (`console.Console`);
- stop signals (`preemption.StopSignals`, installed by the job at its very start, warm start
  included): SIGTERM / Ctrl-C finish the step in hand, save, print a resume command that works
  as printed, and end with exit code 143 / 130;
- the evaluation cadence (at the start, when due, at the end; always before the save of the
  same step, so a resume never skips an evaluation), the stop after `max_skips` non-finite
  updates in a row, periodic and final saves.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from typing import Callable, Optional

from socialr1_jax.jobs import run_dir
from socialr1_jax.jobs.console import Console


@dataclasses.dataclass
class Job:
    """What one job gives the harness. step(k, state) -> (state, metrics) or None (stopped
    before the update); evaluate(done, state) -> metrics or None; meta(done, state) -> the
    checkpoint's JSON meta; due(done): whether an evaluation is due after `done` steps."""

    steps: int
    step: Callable
    meta: Callable
    evaluate: Optional[Callable] = None
    due: Callable[[int], bool] = lambda done: False
    eval_at_start: bool = True
    eval_at_end: bool = True
    after_step: Optional[Callable] = None   # (k, state, metrics): logs, hooks


@dataclasses.dataclass
class Outcome:
    """What the loop did: the final state, per-step metrics, (steps done, metrics) of each
    evaluation, why it ended, the exit code and the steps done."""

    state: object
    history: list
    evaluations: list
    status: str = "done"
    exit_code: int = 0
    done: int = 0


def resume_hint(command: str, out_dir: str) -> str:
    """A command that continues the run as printed: the run's own config.yaml (the whole
    resolved config, whatever files and overrides it came from) plus run.resume=true."""
    cfg = os.path.join(out_dir, run_dir.CONFIG)
    return (f"resume with: python -m socialr1_jax.{command} --config {shlex.quote(cfg)} "
            f"run.resume=true run.out_dir={shlex.quote(out_dir)}")


class Run:
    """One job's run directory, checkpoints, logs and console (see the module docstring).

    cfg: the job's config (written to config.yaml); out_dir: '' writes nothing; resume: what
    `run_dir.check_run_dir` returned; command: the `python -m socialr1_jax.X` name for the hint;
    stop: the job's StopSignals, entered at its start; console: Console keyword arguments.
    """

    def __init__(self, cfg, out_dir: str, resume: Optional[dict], *, command: str, stop,
                 primary: bool = True, log=None, samples: bool = True, keep: int = 3,
                 async_save: bool = True, max_skips: int = 3, skips_key: str = "",
                 save_every: int = 0, console: Optional[dict] = None):
        self.cfg, self.out_dir, self.resume, self.command = cfg, out_dir, resume, command
        self.stop, self.primary, self.log, self._samples = stop, primary, log, samples
        self.max_skips, self.skips_key, self.save_every = max_skips, skips_key, save_every
        self._console_args = console or {}
        self.ckpt = self.logs = self.console = None
        self.first, self._notes = 0, []
        if out_dir:
            from socialr1_jax.checkpoint.train_checkpoint import TrainCheckpointer
            self.ckpt = TrainCheckpointer(os.path.join(out_dir, run_dir.CHECKPOINTS), keep=keep,
                                          async_save=async_save)

    def say(self, text: str) -> None:
        """A line on process 0 (above the bar once the console is open)."""
        if self.console is not None:
            self.console.print(text)
        elif self.primary:
            (self.log or print)(text)

    def start(self, abstract_state: Callable[[], object], init_state: Callable[[], object]):
        """(state, meta or None): the newest good checkpoint's when resuming one, else
        `init_state()`. `abstract_state()`: the restore target (built only when resuming)."""
        note, meta = "", None
        if self.resume is not None and self.ckpt is not None and self.ckpt.latest() is not None:
            state, meta, bad = self.ckpt.restore_newest_good(abstract_state())
            for step, why in bad:
                self.say(f"warning: checkpoint step {step} of {self.out_dir} is damaged "
                         f"({why}); resuming from step {int(meta['step'])}")
            self.first = int(meta["step"])
            note = f"resumed {self.out_dir} at step {self.first} ({int(state.step)} updates)"
        else:
            state = init_state()
            if self.resume is not None:
                note = f"resumed {self.out_dir}: no checkpoint yet, starting at step 0"
        self._notes = [note] if note else []
        self._notes += [f"warning: config changed since the run started: {c}"
                        for c in (self.resume or {}).get("changes", [])]
        return state, meta

    def open(self, steps: int) -> None:
        """The logs (cut back to the resumed step) and the console, then the start's notes."""
        self.logs = run_dir.RunLogs(self.cfg, self.out_dir, self.first, primary=self.primary,
                                    samples=self._samples)
        self.console = Console(steps, self.first, enabled=self.primary, log=self.log,
                               **self._console_args)
        for note in self._notes:
            self.console.print(note)

    def evaluate(self, job: Job, done: int, state, out: Outcome) -> None:
        """One evaluation after `done` steps, logged to eval.jsonl."""
        m = job.evaluate(done, state) if job.evaluate is not None else None
        if m is not None:
            out.evaluations.append((done, m))
            self.logs.evaluation(done, m)

    def save(self, done: int, state, job: Job) -> None:
        """Start the checkpoint of `done` steps (no-op without a run directory)."""
        if self.ckpt is not None:
            self.ckpt.save(done, state, job.meta(done, state))

    def loop(self, job: Job, state) -> Outcome:
        """Steps first..job.steps with the cadence of the module docstring; then the final
        evaluation and save, and the resume hint after a stop signal."""
        out = Outcome(state, [], [], done=self.first)
        if job.evaluate is not None and self.first == 0 and job.eval_at_start:
            self.evaluate(job, 0, state, out)
        for k in range(self.first, job.steps):
            if self.stop.requested():  # e.g. during the evaluation at the start: no new step
                break
            res = job.step(k, state)
            if res is None:  # stopped before the update
                break
            state, m = res
            out.state, out.done = state, k + 1
            out.history.append(dict(m, step=k))
            self.logs.step(k, m)
            self.console.step(k, m)
            if job.after_step is not None:
                job.after_step(k, state, m)
            if self._too_many_skips(state, k, out):
                break
            if job.evaluate is not None and (job.due(out.done) or out.done == job.steps):
                self.evaluate(job, out.done, state, out)
            if self.save_every and out.done % self.save_every == 0:
                self.save(out.done, state, job)
        return self._finish(job, out)

    def _too_many_skips(self, state, k: int, out: Outcome) -> bool:
        n = int(state.consecutive_skips)
        if n < self.max_skips:
            return False
        out.status = (f"stopped at step {k}: {n} consecutive updates with NaN/Inf loss or "
                      f"gradients ({self.skips_key}={self.max_skips}); the state is the last "
                      "good one")
        out.exit_code = 1
        self.console.print(out.status)
        return True

    def _finish(self, job: Job, out: Outcome) -> Outcome:
        stopped = self.stop.signum is not None
        if stopped:
            out.status = f"stopped by {self.stop.name} after {out.done} steps"
            out.exit_code = self.stop.exit_code
            self.console.print(out.status)
        last_eval = out.evaluations[-1][0] if out.evaluations else -1
        if job.eval_at_end and out.done > self.first and last_eval != out.done:
            self.evaluate(job, out.done, out.state, out)
        if self.ckpt is not None and out.done > 0:
            self.save(out.done, out.state, job)
            self.ckpt.wait()
            self.console.print(f"checkpoint: {os.path.join(self.ckpt.root, str(out.done))}")
        if stopped and self.out_dir:
            self.console.print(resume_hint(self.command, self.out_dir))
        return out

    def close(self) -> None:
        """Close the console, the logs and the checkpointer (pending saves finish first)."""
        for part in (self.console, self.logs, self.ckpt):
            if part is not None:
                part.close()
        sys.stdout.flush()
