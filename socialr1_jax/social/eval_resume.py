"""Where `python -m socialr1_jax.evaluate` writes, and how an interrupted evaluation resumes.

With `--out R.json` the question records stream, batch by batch, to `R.predictions.jsonl.partial`
(first line: the settings that decide the records). A finished run writes `R.predictions.jsonl`
and `R.json` (each through a temporary file renamed into place) and removes the partial file.
SIGTERM or Ctrl-C stops between batches with a message and leaves the partial file; `--resume`
reads it back (a torn last line is dropped), refuses it when a setting differs, and samples only
the batches not yet in it, so the report is the one an uninterrupted run writes. The outputs
follow `cli.output_file`'s rule: an existing file is replaced only with `--overwrite`, and only
when it is one of ours.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from typing import Optional

from socialr1_jax import cli

# The flags that decide the records (--mesh, --progress, --out, --resume and --overwrite don't).
SETTINGS = ("benchmark", "data", "split", "language", "column", "limit", "temperature", "top_p",
            "top_k", "max_new_tokens", "num_samples", "batch_size", "max_prompt_tokens",
            "on_too_long", "shuffle_options", "instruction", "seed", "tokenizer", "dtype")


class Outputs:
    """The report, predictions and partial file of one evaluation (all None without --out)."""

    def __init__(self, args):
        self.report = self.preds = self.partial = None
        if args.resume and not args.out:
            raise cli.UsageError("--resume needs --out (the report whose predictions to resume)")
        if not args.out:
            return
        inputs = {"--data": args.data, "--model": args.model, "--tokenizer": args.tokenizer}
        self.report = cli.output_file("--out", args.out, overwrite=args.overwrite,
                                      ours=cli.json_with("benchmark", "questions"),
                                      kind="an evaluate report", inputs=inputs)
        self.preds = cli.output_file(
            "--out", os.path.splitext(self.report)[0] + ".predictions.jsonl",
            overwrite=args.overwrite, ours=cli.jsonl_with("id", "gold", "answers"),
            kind="an evaluate predictions file", inputs=inputs)
        self.partial = self.preds + ".partial"
        self.settings = {"model": os.path.abspath(args.model),
                         **{k: getattr(args, k) for k in SETTINGS}}
        there = os.path.exists(self.partial)
        if args.resume and not there:
            raise cli.UsageError(f"--resume: {self.partial} does not exist (no interrupted "
                                 "evaluation to continue)")
        if there and not args.resume and not args.overwrite:
            raise cli.UsageError(f"--out {self.report}: an interrupted evaluation left "
                                 f"{self.partial}; pass --resume to continue it or --overwrite "
                                 "to start over")
        self.done = self._read_partial() if args.resume else {}

    def _read_partial(self) -> dict:
        with open(self.partial, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            saved = json.loads(lines[0])["evaluate_resume"]
        except (ValueError, KeyError, TypeError):
            raise cli.UsageError(f"--resume: {self.partial} is not an evaluation's partial "
                                 "predictions file") from None
        diff = sorted(k for k in set(saved) | set(self.settings)
                      if saved.get(k) != self.settings.get(k))
        if diff:
            raise cli.UsageError(
                f"--resume: {self.partial} was written with other settings ("
                + ", ".join(f"{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} now"
                            for k in diff) + "); give the same flags or --overwrite")
        done = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except ValueError:  # the torn last line of a killed write
                break
            done[rec["id"]] = rec
        return done

    def open_sink(self):
        """The partial file, rewritten with the records kept, open for appending."""
        if not self.partial:
            return None
        with cli.atomic_write(self.partial) as f:
            f.write(json.dumps({"evaluate_resume": self.settings}) + "\n")
            for rec in self.done.values():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return open(self.partial, "a", encoding="utf-8")

    def finish(self, report: dict) -> None:
        """Predictions, then the report, each whole; then the partial file goes."""
        with cli.atomic_write(self.preds) as f:
            for rec in report.pop("predictions"):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        report["predictions_file"] = self.preds
        with cli.atomic_write(self.report) as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        os.remove(self.partial)
        print(f"wrote {self.report} and {self.preds}", file=sys.stderr)


class Stop(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


def on_sigterm():
    """Turn SIGTERM into `Stop` while the evaluation runs; returns the previous handler."""
    def handler(signum, frame):
        raise Stop()
    return signal.signal(signal.SIGTERM, handler)


def stopped_message(e: KeyboardInterrupt, outs: Outputs, written: int, total: int,
                    argv: Optional[list]) -> int:
    """What a stopped evaluation says (and how to resume it); its exit code (143 / 130)."""
    what = "SIGTERM" if isinstance(e, Stop) else "interrupted"
    if outs.partial is None:
        print(f"evaluate: {what}; nothing saved (no --out)", file=sys.stderr)
    else:
        argv = list(sys.argv[1:] if argv is None else argv)
        if "--resume" not in argv:
            argv.append("--resume")
        print(f"evaluate: {what} after {written} of {total} question(s); their predictions are "
              f"in {outs.partial}; resume with: python -m socialr1_jax.evaluate "
              + " ".join(shlex.quote(a) for a in argv), file=sys.stderr)
    return 143 if isinstance(e, Stop) else 130
