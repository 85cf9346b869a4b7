"""What a run prints: a progress bar on a terminal, labelled step lines that fit 100 columns.

One implementation for every job (GRPO, SFT, the reward model: each gives its line and bar
figures). GRPO's bar (tqdm, on stderr) shows step, reward, KL, accuracy and generated tokens/s;
it is off when stderr is not a terminal (a log file, a pod's log collector), where only the step lines appear.
On a pod only process 0 prints.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import numpy as np

WIDTH = 100


def _num(x: Optional[float], fmt: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, fmt)


def step_line(step: int, steps: int, m: dict) -> str:
    """One labelled line per step, at most WIDTH characters, e.g.

    step 12/600 reward 0.512 acc 0.400 kl 0.0012 loss +0.0123 ent 1.23 |g| 0.45 len 312 1234 tok/s
    """
    w = len(str(steps))
    parts = [f"step {step:>{w}}/{steps}",
             f"reward {_num(m.get('reward_mean'), '.3f')}"]
    if m.get("accuracy") is not None:
        parts.append(f"acc {_num(m['accuracy'], '.3f')}")
    parts += [f"kl {_num(m.get('kl'), '.4f')}",
              f"loss {_num(m.get('loss'), '+.4f')}",
              f"ent {_num(m.get('entropy'), '.2f')}",
              f"|g| {_num(m.get('grad_norm'), '.3f')}",
              f"len {_num(m.get('response_len'), '.0f')}",
              f"{_num(m.get('tokens_per_s'), '.0f')} tok/s"]
    if m.get("skipped"):
        parts.append("SKIPPED")
    line = " ".join(parts)
    return line if len(line) <= WIDTH else line[:WIDTH - 1] + "~"


def grpo_postfix(m: dict) -> dict:
    """The GRPO bar's figures: reward, KL, accuracy (when scored) and generated tokens/s."""
    post = {"reward": _num(m.get("reward_mean"), ".3f"), "kl": _num(m.get("kl"), ".4f")}
    if m.get("accuracy") is not None:
        post["acc"] = _num(m["accuracy"], ".3f")
    post["tok/s"] = _num(m.get("tokens_per_s"), ".0f")
    return post


class Console:
    """Step lines every `log_every` steps and a progress bar when `stream` is a terminal: the one
    console of every job. desc: the bar's label; line(step, steps, m): a step's line (default:
    GRPO's `step_line`); postfix(m): the figures beside the bar (default: GRPO's).

    `enabled=False` (processes other than 0) prints nothing.
    """

    def __init__(self, steps: int, first: int = 0, *, log_every: int = 1, progress: bool = True,
                 enabled: bool = True, stream=None, log: Optional[Callable[[str], None]] = None,
                 desc: str = "GRPO", line: Optional[Callable[[int, int, dict], str]] = None,
                 postfix: Optional[Callable[[dict], dict]] = None):
        self.steps, self.log_every, self.enabled = steps, log_every, enabled
        self.stream = stream or sys.stderr
        self._log = log
        self._line, self._postfix = line or step_line, postfix or grpo_postfix
        self.bar = None
        if enabled and progress and _isatty(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=steps, initial=first, desc=desc, unit="step",
                            file=self.stream, dynamic_ncols=True, leave=False)

    def print(self, text: str) -> None:
        """A line above the bar (or plain, without one)."""
        if not self.enabled:
            return
        if self._log is not None:
            self._log(text)
        elif self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=sys.stdout, flush=True)

    def step(self, step: int, m: dict) -> None:
        """Advance the bar; print the step line when due (and for the last step)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(self._postfix(m), refresh=False)
        if step % self.log_every == 0 or step == self.steps - 1:
            self.print(self._line(step, self.steps, m))

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def summary(result) -> str:
    """What a `train.TrainResult` says the run did: steps and updates, the mean reward in the first and last quarter of the
    steps, held-out accuracy before the warm start / before GRPO / after it (when evaluated),
    why it ended and where the run directory is."""
    h = result.history
    where = f"\n  run directory: {result.out_dir}" if result.out_dir else ""
    if not h:
        return f"no step ran ({result.status}){where}"
    q = max(1, len(h) // 4)
    rewards = [m["reward_mean"] for m in h]
    lines = [f"{len(h)} GRPO steps, {int(result.state.step)} updates "
             f"({int(result.state.skipped)} skipped): {result.status}",
             f"  mean reward: first quarter {np.mean(rewards[:q]):.3f} -> last quarter "
             f"{np.mean(rewards[-q:]):.3f} (first step {rewards[0]:.3f}, last {rewards[-1]:.3f})"]
    stages = []  # (label, eval metrics)
    before = result.warm_start.get("eval_before")
    if before is not None:
        stages.append(("before the warm start", before))
    if result.warm_start.get("loss_first") is not None:
        lines.append(f"  warm start: loss {result.warm_start['loss_first']:.3f} -> "
                     f"{result.warm_start['loss_last']:.3f}")
    for done, m in result.evaluations:
        warm = done == 0 and result.warm_start.get("loss_first") is not None
        stages.append(("after the warm start" if warm else f"after {done} GRPO steps", m))
    if stages:
        n = stages[-1][1]["eval/questions"]
        lines.append(f"  held-out accuracy ({n} questions): "
                     + ", ".join(f"{label} {m['eval/accuracy']:.3f}" for label, m in stages))
        lines += _accuracy_table(stages)
    return "\n".join(lines) + where


def _accuracy_table(stages) -> list[str]:
    """Per-group held-out accuracy (dimension, question type), one column per evaluation."""
    prefix = "eval/accuracy/"
    keys = sorted({k for _, m in stages for k in m if k.startswith(prefix)})
    low = [k.lower() for k in keys]
    keys = [k for k in keys if k == k.lower() or low.count(k.lower()) == 1]  # Memory == memory
    if not keys:
        return []
    width = max(len(k) - len(prefix) for k in keys)
    heads = [label.replace("before the warm start", "random").replace("after the ", "")
             .replace(" GRPO steps", " steps") for label, _ in stages]
    cols = [max(6, len(h)) for h in heads]
    out = ["    " + " " * width + "  " + "  ".join(h.rjust(c) for h, c in zip(heads, cols))]
    for k in keys:
        cells = [(f"{m[k]:.3f}" if k in m else "-").rjust(c) for (_, m), c in zip(stages, cols)]
        out.append(f"    {k[len(prefix):].ljust(width)}  " + "  ".join(cells))
    return out
