"""Accuracy of a model on a multiple-choice ToM benchmark, through the training sampler.

    python -m socialr1_jax.evaluate --model PATH --benchmark tombench --data DIR \\
        [--limit N] [--num-samples k --temperature T] [--mesh 1x8x1] [--out report.json]
        [--overwrite] [--resume]

With --out, SIGTERM or Ctrl-C stops between batches and keeps the questions done; `--resume`
continues from them (socialr1_jax.social.eval_resume).

`run(model, tokenizer, rows, config=EvalConfig(...))` is the library entry (the trainer's
periodic evaluation): the rows become chat prompts (`prompts.build_prompts`), the prompts are
generated in batches by `rollout.sampler.sample` (the trainer's jitted sampler; greedy unless a
temperature is given), and each completion's answer is read with the reward's rules
(`answers.extract_answer`: the first capital letter after `<Answer>`). The report holds accuracy
overall and per dimension / ability / task; with k > 1 samples per question also pass@k (some
sample right) and majority vote (the most frequent parsed letter; ties go to the letter that came
first); the number of completions with no parsable answer; tokens generated and tokens/s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from socialr1_jax import cli
from socialr1_jax.yaml_config import check_at_least
from socialr1_jax.rollout.generate import (add_model_args, add_sampling_args, check_model_args,
                                           check_model_dir, check_sampling_flags, model_mesh,
                                           use_host_devices)
from socialr1_jax.social.answers import extract_answer, format_ok
from socialr1_jax.social.data import DataError, MCQRow
from socialr1_jax.social.prompts import PromptConfig, PromptSet, build_prompts

__all__ = ["EvalConfig", "format_table", "main", "majority", "metrics", "run", "score_row",
           "summarize"]

GROUPS = ("dimension", "ability", "task")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Generation settings of an evaluation (greedy, one sample per question by default).

    num_samples k > 1 needs temperature > 0 (greedy samples would be identical). batch_size:
    questions per sampler call (each sampled k times).
    """

    batch_size: int = 16
    max_new_tokens: int = 1024
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    prompt: PromptConfig = PromptConfig()

    def __post_init__(self):
        check_at_least(self, "eval", 1, "batch_size", "max_new_tokens", "num_samples",
                       error=ValueError)
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"eval.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"eval.num_samples={self.num_samples} needs a temperature > 0: "
                             "greedy samples of one prompt are identical")


def majority(answers: Sequence[Optional[str]]) -> Optional[str]:
    """The most frequent parsed answer (None ignored); ties go to the one that came first."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def score_row(row: MCQRow, completions: Sequence[str]) -> dict:
    """One question's record: the answers read from its completions and whether each is right."""
    answers = [extract_answer(c) for c in completions]
    return {"id": row.id, "dimension": row.dimension, "ability": row.ability, "task": row.task,
            "gold": row.gold, "answers": answers, "correct": [a == row.gold for a in answers],
            "vote": majority(answers), "format_ok": [format_ok(c) for c in completions],
            "completions": list(completions)}


def summarize(records: Sequence[dict], k: int) -> dict:
    """Accuracy (mean over samples), unparsable and format counts; pass@k and majority if k > 1."""
    n = len(records)
    out = {"n": n,
           "accuracy": float(np.mean([np.mean(r["correct"]) for r in records])) if n else 0.0,
           "unparsable": sum(a is None for r in records for a in r["answers"]),
           "format_ok": sum(sum(r["format_ok"]) for r in records)}
    if k > 1:
        out["pass_at_k"] = float(np.mean([any(r["correct"]) for r in records])) if n else 0.0
        out["majority"] = float(np.mean([r["vote"] == r["gold"] for r in records])) if n else 0.0
    return out


def metrics(records: Sequence[dict], k: int) -> dict:
    """Overall and per-group (dimension, ability, task) summaries of question records."""
    out = {"overall": summarize(records, k)}
    for g in GROUPS:
        keys = sorted({r[g] for r in records if r[g]})
        if keys:
            out[f"by_{g}"] = {key: summarize([r for r in records if r[g] == key], k)
                              for key in keys}
    return out


_compile_seconds = [0.0]


def _on_event(name, secs, **_):
    if name.startswith("/jax/core/compile/"):
        _compile_seconds[0] += secs


def _batch_seed(seed: int, batch: int) -> int:
    """A sampling seed per batch, distinct across (seed, batch) pairs."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, batch]).generate_state(1)[0] >> 1)


def _decode(tokenizer, ids: np.ndarray, eos: set[int]) -> str:
    ids = ids.tolist()
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def _fitting_prompts(model, tokenizer, dataset, cfg: EvalConfig):
    """The prompts that leave max_new_tokens in the model's context, and that token limit."""
    context = int(model.cfg.max_position_embeddings) - cfg.max_new_tokens
    if context < 1:  # the command line names its flag before this (_check_context)
        raise DataError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the "
                        f"model's {model.cfg.max_position_embeddings} positions")
    limit = min(cfg.prompt.max_prompt_tokens, context)
    if isinstance(dataset, PromptSet):
        ps = dataset.limited(limit, cfg.prompt.on_too_long)
    else:
        ps = build_prompts(dataset, tokenizer, cfg.prompt, max_prompt_tokens=limit)
    if not len(ps):
        raise DataError(f"no prompt fits in {limit} tokens ({len(ps.dropped)} dropped as too long)")
    return ps, limit


def run(model, tokenizer, dataset: Iterable | PromptSet, *, config: EvalConfig = EvalConfig(),
        eos_ids: Optional[Sequence[int]] = None, pad_id: Optional[int] = None, mesh=None,
        name: str = "eval", progress: Optional[bool] = None,
        on_batch: Optional[Callable[[list[dict]], None]] = None,
        sample_fn: Optional[Callable] = None, done: Optional[dict] = None) -> dict:
    """Evaluate `model` on `dataset` (rows, dicts or a built PromptSet); returns the report.

    eos_ids / pad_id: default the tokenizer's EOS and pad. Prompts that would not leave
    `max_new_tokens` in the model's context are dropped or refused like any too-long prompt.
    progress: a bar over batches (None: only on a terminal). on_batch: called with each batch's
    question records as soon as they are scored (to stream them to disk). sample_fn: the sampler
    (default `rollout.sampler.sample`; tests pass a fake with its signature). done: records by
    question id from an interrupted run; a batch whose every question is there is not sampled
    again (the batches and their seeds are the same), so the report is an uninterrupted run's.
    """
    import jax
    from tqdm import tqdm

    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.rollout.sampler import sample

    cfg = config
    sample_fn = sample_fn or sample
    eos = [int(e) for e in (eos_ids if eos_ids is not None else
                            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])]
    pad = int(pad_id) if pad_id is not None else tk.pad_id(tokenizer, eos)
    ps, limit = _fitting_prompts(model, tokenizer, dataset, cfg)

    k = cfg.num_samples
    by_length = sorted(range(len(ps)), key=lambda i: -len(ps.ids[i]))  # longest first: fail early
    batches = [by_length[i:i + cfg.batch_size] for i in range(0, len(ps), cfg.batch_size)]
    width = min(cfg.batch_size, len(ps))
    stops = set(eos)
    records: list[Optional[dict]] = [None] * len(ps)
    tokens_out = 0
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    compile0 = _compile_seconds[0]
    start = time.perf_counter()
    try:
        bar = tqdm(batches, desc=name, unit="batch", file=sys.stderr,
                   disable=(not sys.stderr.isatty()) if progress is None else not progress)
        for b, batch in enumerate(bar):
            if done and all(ps.rows[i].id in done for i in batch):
                for i in batch:
                    records[i] = done[ps.rows[i].id]
                    tokens_out += sum(records[i]["completion_tokens"])
                continue
            # A short last batch repeats its last prompt: one compiled shape for every batch.
            prompts = [ps.ids[i] for i in batch] + [ps.ids[batch[-1]]] * (width - len(batch))
            res = sample_fn(model, prompts, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                            num_samples=k, eos_ids=eos, seed=_batch_seed(cfg.seed, b),
                            mesh=mesh, pad_id=pad)
            tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
            done = []
            for j, i in enumerate(batch):
                rows = range(j * k, (j + 1) * k)
                comps = [_decode(tokenizer, tokens[r, :lengths[r]], stops) for r in rows]
                tokens_out += int(sum(lengths[r] for r in rows))
                records[i] = score_row(ps.rows[i], comps) | {
                    "option_order": list(ps.orders[i]),
                    "completion_tokens": [int(lengths[r]) for r in rows]}
                done.append(records[i])
            if on_batch is not None:
                on_batch(done)
            if not bar.disable:
                bar.set_postfix(acc=f"{np.mean([np.mean(r['correct']) for r in records if r]):.3f}")
    finally:
        jax.monitoring.unregister_event_duration_listener(_on_event)
    wall = time.perf_counter() - start
    compiling = min(_compile_seconds[0] - compile0, wall)
    return _report(name, ps, cfg, limit, records, tokens_out, wall, compiling)


def _report(name, ps, cfg, limit, records, tokens_out, wall, compiling) -> dict:
    k = cfg.num_samples
    return {"benchmark": name, "questions": len(ps), "dropped_too_long": len(ps.dropped),
            "dropped_ids": [d[0] for d in ps.dropped], "max_prompt_tokens": limit,
            "num_samples": k, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "top_k": cfg.top_k, "max_new_tokens": cfg.max_new_tokens,
            "shuffle_options": cfg.prompt.shuffle, "seed": cfg.seed,
            "completions": len(ps) * k, "prompt_tokens": sum(len(i) for i in ps.ids),
            "generated_tokens": tokens_out,
            "wall_seconds": wall, "compile_seconds": compiling,
            "tokens_per_second": tokens_out / max(wall - compiling, 1e-9),
            **metrics(records, k), "predictions": records}


def format_table(report: dict) -> str:
    """The report as a readable table: overall, then per dimension, ability and task."""
    k = report["num_samples"]
    cols = ["n", "accuracy"] + (["pass_at_k", "majority"] if k > 1 else []) + ["unparsable"]
    heads = {"n": "n", "accuracy": "acc" if k == 1 else f"mean@{k}", "pass_at_k": f"pass@{k}",
             "majority": f"maj@{k}", "unparsable": "unparsable"}
    lines = []

    def section(title, items):
        width = max([len(title)] + [len(key) for key, _ in items])
        lines.append(f"{title:<{width}}  " + "  ".join(f"{heads[c]:>10}" for c in cols))
        for key, m in items:
            cells = [f"{m[c]:>10d}" if isinstance(m[c], int) else f"{100 * m[c]:>9.1f}%"
                     for c in cols]
            lines.append(f"{key:<{width}}  " + "  ".join(cells))
        lines.append("")

    section(report["benchmark"], [("overall", report["overall"])])
    for g in GROUPS:
        if f"by_{g}" in report:
            section(g, list(report[f"by_{g}"].items()))
    lines.append(f"{report['questions']} question(s) x {k} sample(s), "
                 f"{report['dropped_too_long']} dropped as longer than "
                 f"{report['max_prompt_tokens']} tokens; {report['prompt_tokens']} prompt and "
                 f"{report['generated_tokens']} generated tokens in "
                 f"{report['wall_seconds']:.1f} s ({report['compile_seconds']:.1f} s compiling) = "
                 f"{report['tokens_per_second']:.1f} generated tokens/s")
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------------

def parse_args(argv=None):
    """The command line (see the module docstring and `--help`)."""
    from socialr1_jax.social.benchmarks import BENCHMARKS

    ap = cli.ArgumentParser(prog="python -m socialr1_jax.evaluate",
                            description="Accuracy of a Qwen3 checkpoint on a multiple-choice "
                                        "Theory-of-Mind benchmark.")
    ap.add_argument("--model", required=True, help="HF checkpoint directory or Orbax checkpoint")
    ap.add_argument("--benchmark", required=True, help=" | ".join(BENCHMARKS))
    ap.add_argument("--data", default=None,
                    help="data file / folder / hub name (default: the benchmark's own, if any)")
    ap.add_argument("--split", default=None, help="split of a hub data set")
    ap.add_argument("--language", default=None, help="ToMBench: en (default) or zh")
    ap.add_argument("--column", action="append", default=[], metavar="KEY=NAME",
                    help="column mapping (tombench-hard, socialiqa, mcq), repeatable: "
                         "story=, question=, options=A,B,C,D, gold=, gold_format=letter|index1|"
                         "index0, dimension=, ability=, task=, id=")
    ap.add_argument("--limit", type=int, default=None, help="the first N questions only")
    add_sampling_args(ap, temperature=0.0, max_new_tokens=1024,
                      samples_help="k samples per question: pass@k and majority vote "
                                   "(needs --temperature)")
    ap.add_argument("--batch-size", type=int, default=16, help="questions per sampler call")
    ap.add_argument("--max-prompt-tokens", type=int, default=2048)
    ap.add_argument("--on-too-long", default="drop", help="drop (and count) or error")
    ap.add_argument("--shuffle-options", action="store_true",
                    help="permute each question's options (seeded; the gold follows)")
    ap.add_argument("--instruction", default=None, help="replace the Social-R1 instruction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    add_model_args(ap)
    ap.add_argument("--out", default=None,
                    help="write the JSON report here; per-question records stream to "
                         "<out without .json>.predictions.jsonl as batches finish")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing report and predictions file (only ours), or "
                         "start over an interrupted evaluation")
    ap.add_argument("--resume", action="store_true",
                    help="continue the evaluation interrupted (SIGTERM, Ctrl-C) into --out")
    ap.add_argument("--progress", default=None, choices=("on", "off"),
                    help="progress bar (default: on a terminal only)")
    from socialr1_jax.social.fantom_eval import add_fantom_args
    add_fantom_args(ap)  # FanToM: open-ended, its own runner (social/fantom_eval.py)
    args = ap.parse_args(argv)
    check_model_args(args)
    return args


def _configs(args) -> EvalConfig:
    kw = {} if args.instruction is None else {"instruction": args.instruction}
    try:
        prompt = PromptConfig(shuffle=args.shuffle_options, seed=args.seed,
                              max_prompt_tokens=args.max_prompt_tokens,
                              on_too_long=args.on_too_long, **kw)
        return EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          num_samples=args.num_samples, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed, prompt=prompt)
    except ValueError as e:  # name the flag, not the config key
        flag = str(e).split("=")[0].split(".")[-1].replace("_", "-")
        if flag == "shuffle":
            flag = "shuffle-options"
        raise cli.UsageError(f"--{flag}: {e}") from None


def _check_context(args, cfg: EvalConfig, model_cfg, prompts: PromptSet) -> None:
    """--max-new-tokens against the model's context, and some prompt fitting what is left,
    named by the flag that decides it (before the model loads)."""
    positions = int(model_cfg.max_position_embeddings)
    room = positions - cfg.max_new_tokens
    if room < 1:
        raise cli.UsageError(f"--max-new-tokens {cfg.max_new_tokens} leaves no room for a prompt "
                             f"in the model's {positions} positions")
    if cfg.prompt.max_prompt_tokens <= room:
        return
    if not any(len(ids) <= room for ids in prompts.ids):
        raise cli.UsageError(f"--max-new-tokens {cfg.max_new_tokens}: no prompt fits in the "
                             f"{room} tokens it leaves of the model's {positions} positions "
                             f"(the shortest has {min(len(i) for i in prompts.ids)})")


def _load_inputs(args, cfg: EvalConfig):
    """Rows, tokenizer, EOS ids, prompts and model config, every one checked (UsageError)."""
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.social.benchmarks import load_benchmark
    from socialr1_jax.social.data import column_map

    columns = column_map(args.column) if args.column else None
    rows = load_benchmark(args.benchmark, args.data, limit=args.limit, split=args.split,
                          language=args.language, columns=columns)
    from socialr1_jax.checkpoint.orbax_io import run_checkpoints

    args.model = run_checkpoints(args.model)  # a run folder: its checkpoints/
    model_cfg = check_model_dir(args.model)
    try:
        tok = tk.load_tokenizer(args.tokenizer or args.model)
        eos = tk.stop_ids(args.model, tok)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UsageError(f"--{'tokenizer' if args.tokenizer else 'model'}: {e}") from None
    prompts = build_prompts(rows, tok, cfg.prompt)  # too-long errors before the model loads
    if not len(prompts):
        raise DataError(f"every prompt is longer than --max-prompt-tokens "
                        f"{cfg.prompt.max_prompt_tokens}")
    _check_context(args, cfg, model_cfg, prompts)
    return rows, tok, eos, prompts, model_cfg


def main(argv=None) -> int:
    """Run the command line: every check on user input happens before the model is loaded."""
    from socialr1_jax.social.eval_resume import Outputs, on_sigterm, stopped_message

    args = parse_args(argv)
    use_host_devices(args)  # before jax starts its backend
    from socialr1_jax.social import fantom_eval
    if args.benchmark == "fantom":
        return fantom_eval.main(args)
    fantom_eval.refuse_fantom_flags(args)
    cfg = _configs(args)
    check_sampling_flags(args)
    outs = Outputs(args)
    rows, tok, eos, prompts, model_cfg = _load_inputs(args, cfg)
    mesh = model_mesh(args, model_cfg)
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk

    print(f"{args.benchmark}: {len(rows)} question(s) from {args.data or 'its default source'}"
          f", {len(prompts.dropped)} longer than {cfg.prompt.max_prompt_tokens} tokens dropped"
          + (f"; resuming with {len(outs.done)} done" if args.resume else ""), file=sys.stderr)
    previous = on_sigterm()  # from here on a stop keeps what is written
    sink, written = None, [len(getattr(outs, "done", {}))]
    try:
        model = load_model(args.model, dtype=args.dtype, mesh=mesh)
        sink = outs.open_sink()

        def stream(records):
            for r in records:
                sink.write(json.dumps(r, ensure_ascii=False) + "\n")
            sink.flush()
            written[0] += len(records)

        report = run(model, tok, prompts, config=cfg, eos_ids=eos, mesh=mesh,
                     pad_id=tk.pad_id(tok, eos), name=args.benchmark,
                     progress=None if args.progress is None else args.progress == "on",
                     on_batch=stream if sink else None, done=getattr(outs, "done", None))
    except KeyboardInterrupt as e:
        return stopped_message(e, outs, written[0], len(prompts), argv)
    finally:
        import signal

        signal.signal(signal.SIGTERM, previous)
        if sink:
            sink.close()
    report = {"model": os.path.abspath(args.model), "data": args.data, **report}
    print(format_table(report))
    if outs.report:
        outs.finish(report)
    return 0
