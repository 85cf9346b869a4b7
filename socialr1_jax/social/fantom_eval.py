"""`python -m socialr1_jax.evaluate --benchmark fantom`: FanToM, open-ended, through the sampler.

    python -m socialr1_jax.evaluate --model CKPT --benchmark fantom --data fantom_v1.json \\
        (--embedder PATH_OR_URL | --judge-url URL) [--context short|full] [--out report.json]

Each question (fantom.py) becomes a chat prompt (FanToM's text, then the Social-R1 instruction
unless `--instruction ""`), is answered greedily, and is scored by FanToM's rules
(fantom_score.py); free-form beliefs by `--embedder` (FanToM's protocol) or `--judge-url` (an
LLM judge, fantom_judge.py, not FanToM's protocol). A set with a prompt longer than the limit is
dropped whole and counted. `--data generated:N[:SEED]` evaluates fantom_gen's conversations.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from socialr1_jax import cli
from socialr1_jax.social import fantom, fantom_score
from socialr1_jax.social.data import DataError
from socialr1_jax.social.prompts import SOCIAL_R1_INSTRUCTION


def add_fantom_args(ap) -> None:
    """FanToM's flags on the evaluate command line."""
    g = ap.add_argument_group("fantom")
    g.add_argument("--embedder", default=None, help="fantom: sentence-transformers model path, "
                   "or the URL of an OpenAI-compatible /v1/embeddings server")
    g.add_argument("--embedder-model", default=None,
                   help="fantom: model name sent to an embeddings server (default "
                        "sentence-transformers/all-roberta-large-v1)")
    g.add_argument("--judge-url", default=None, help="fantom: an OpenAI-compatible chat server "
                   "that judges free-form beliefs instead (not FanToM's protocol)")
    g.add_argument("--judge-model", default=None, help="fantom: the judge's model name")
    g.add_argument("--context", default=None, help="fantom: short (default) or full")


FANTOM_FLAGS = ("embedder", "embedder_model", "judge_url", "judge_model", "context")


def refuse_fantom_flags(args) -> None:
    """A FanToM flag given to another benchmark is an error, not ignored."""
    for key in FANTOM_FLAGS:
        if getattr(args, key, None) is not None:
            raise cli.UsageError(f"--{key.replace('_', '-')} is for --benchmark fantom only")


def _scorer(args):
    if (args.embedder is None) == (args.judge_url is None):
        raise cli.UsageError("--benchmark fantom needs one of --embedder or --judge-url")
    if args.judge_url:
        from socialr1_jax.social.fantom_judge import FantomJudge
        from socialr1_jax.social.judges import JudgeConfigError, JudgeUnavailable

        try:
            judge = FantomJudge(args.judge_url, args.judge_model or "judge")
            judge.check()
        except (JudgeConfigError, JudgeUnavailable) as e:
            raise cli.UsageError(f"--judge-url {args.judge_url}: {e}") from None
        return judge
    from socialr1_jax.social.embedder import FANTOM_EMBEDDER, build_embedder

    emb = build_embedder(args.embedder, args.embedder_model or FANTOM_EMBEDDER)
    emb.check()
    return emb


def _predictions_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".predictions.jsonl"


def _check_args(args) -> None:
    for flag, bad in (("--num-samples", args.num_samples != 1),
                      ("--shuffle-options", args.shuffle_options),
                      ("--column", bool(args.column)), ("--language", args.language is not None),
                      ("--split", args.split is not None),
                      ("--resume", getattr(args, "resume", False))):
        if bad:
            raise cli.UsageError(f"{flag}: not used by --benchmark fantom")
    if args.data is None:
        raise DataError("benchmark 'fantom' needs --data (FanToM's fantom_v1.json, or "
                        "generated:N[:SEED])")


def _question_text(q) -> str:
    return q.prompt.rsplit("Question: ", 1)[-1].rsplit("\nAnswer:", 1)[0]


def score_free_form(scorer, questions, replies) -> tuple[list[dict], dict]:
    """Records of free-form belief questions: by embedding similarity, or the judge's verdict."""
    from socialr1_jax.social.fantom_judge import FantomJudge

    if isinstance(scorer, FantomJudge):
        verdicts, counts = scorer.judge([(q.id, _question_text(q), q.correct,
                                          q.wrong, r) for q, r in zip(questions, replies)])
        recs = [{"correct": v, "word_overlap": (fantom_score.token_f1(q.correct, r) if v else
                                                0.0)} for q, r, v in
                zip(questions, replies, verdicts)]
        return recs, counts
    from socialr1_jax.social.embedder import cosine_rows

    n = len(questions)
    vecs = scorer.embed(list(replies) + [q.correct for q in questions] +
                        [q.wrong for q in questions]) if n else np.zeros((0, 1))
    sim_c = cosine_rows(vecs[:n], vecs[n:2 * n])
    sim_w = cosine_rows(vecs[:n], vecs[2 * n:])
    return [fantom_score.belief_by_similarity(r, c, w, q.correct, q.wrong)
            for q, r, c, w in zip(questions, replies, sim_c, sim_w)], {}


def score_all(scorer, questions, completions) -> tuple[list[dict], dict]:
    """Every question's record (FanToM's rules) and the judge's counters."""
    replies = [fantom.reply_text(c) for c in completions]
    free = [i for i, q in enumerate(questions) if q.kind == "belief"]
    free_recs, counts = score_free_form(scorer, [questions[i] for i in free],
                                        [replies[i] for i in free])
    records = [None] * len(questions)
    for i, rec in zip(free, free_recs):
        q = questions[i]
        records[i] = {"id": q.id, "set_id": q.set_id, "kind": q.kind,
                      "question_type": q.question_type, "tom_type": q.tom_type,
                      "accessibility": q.accessibility, "reply": replies[i]} | rec
    for i, q in enumerate(questions):
        if records[i] is None:
            records[i] = fantom_score.score_question(q, replies[i])
        records[i]["completion"] = completions[i]
    return records, counts


def build_report(records, counts, *, sets: int, dropped: int, context: str, scorer: str) -> dict:
    """The report: FanToM's headline (inaccessible) and control (accessible) metrics."""
    return {"benchmark": "fantom", "context": context, "scorer": scorer, "sets": sets,
            "dropped_sets": dropped, "questions": len(records),
            "overall": fantom_score.report(records, "inaccessible"),
            "control": fantom_score.report(records, "accessible"),
            "fact_f1": fantom_score.fact_f1(records),
            "binary_neither": sum(r.get("pred") == -1 for r in records),
            "judge": counts, "predictions": records}


def _prompts(args, sets, tok, limit):
    from socialr1_jax.rollout import tokenizer as tk

    instruction = SOCIAL_R1_INSTRUCTION if args.instruction is None else args.instruction
    kept, questions, ids, dropped = [], [], [], 0
    for s in sets:
        qs = fantom.set_questions(s, args.context or "short")
        texts = [tk.chat_text(tok, q.prompt + (f"\n\n{instruction}" if instruction else ""))
                 for q in qs]
        enc = [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
        if max(len(e) for e in enc) > limit:
            dropped += 1
            continue
        kept.append(s)
        questions += qs
        ids += enc
    if not questions:
        raise DataError(f"every FanToM set has a prompt longer than {limit} tokens")
    return kept, questions, ids, dropped


def generate_texts(model, tok, ids, *, args, eos, pad, mesh) -> tuple[list[str], int]:
    """Greedy completions of every prompt, `--batch-size` per sampler call."""
    from socialr1_jax.rollout.sampler import sample

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    width, out, total = min(args.batch_size, len(ids)), [None] * len(ids), 0
    for b in range(0, len(order), width):
        batch = order[b:b + width]
        prompts = [ids[i] for i in batch] + [ids[batch[-1]]] * (width - len(batch))
        res = sample(model, prompts, max_new_tokens=args.max_new_tokens, temperature=0.0,
                     eos_ids=eos, seed=args.seed, mesh=mesh, pad_id=pad)
        tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
        for j, i in enumerate(batch):
            t = tokens[j, :lengths[j]].tolist()
            total += len(t)
            out[i] = tok.decode(t[:-1] if t and t[-1] in eos else t, skip_special_tokens=False)
        print(f"fantom: {min(b + width, len(order))}/{len(order)} questions", file=sys.stderr)
    return out, total


def main(args) -> int:
    """The FanToM evaluation of `--model` (args from evaluate's parser)."""
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.rollout.generate import check_model_dir, check_sampling_flags, model_mesh

    _check_args(args)
    check_sampling_flags(args)
    if args.context not in (None, *fantom.CONTEXTS):
        raise cli.UsageError(f"--context {args.context}: expected short or full")
    sets = fantom.load_fantom(args.data)
    if args.limit:
        sets = sets[:args.limit]
    if args.out:  # the one output rule (cli.output_file), before any work
        args.out = cli.output_file("--out", args.out, overwrite=args.overwrite,
                                   ours=cli.json_with("model", "data", "predictions_file"),
                                   kind="a FanToM report", inputs={"--data": args.data})
        cli.output_file("--out", _predictions_path(args.out), overwrite=args.overwrite,
                        ours=cli.jsonl_with("id", "set_id", "kind"),
                        kind="a FanToM predictions file", inputs={"--data": args.data})
    model_cfg = check_model_dir(args.model)
    try:
        tok = tk.load_tokenizer(args.tokenizer or args.model)
        eos = tk.stop_ids(args.model, tok)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UsageError(f"--{'tokenizer' if args.tokenizer else 'model'}: {e}") from None
    limit = min(args.max_prompt_tokens,
                int(model_cfg.max_position_embeddings) - args.max_new_tokens)
    kept, questions, ids, dropped = _prompts(args, sets, tok, limit)
    scorer = _scorer(args)  # reachable before the model loads
    mesh = model_mesh(args, model_cfg)
    from socialr1_jax.checkpoint.loading import load_model

    model = load_model(args.model, dtype=args.dtype, mesh=mesh)
    start = time.perf_counter()
    try:
        comps, n_tok = generate_texts(model, tok, ids, args=args, eos=eos,
                                      pad=tk.pad_id(tok, eos), mesh=mesh)
        records, counts = score_all(scorer, questions, comps)
    finally:
        scorer.close()
    rep = build_report(records, counts, sets=len(kept), dropped=dropped,
                       context=args.context or "short",
                       scorer="judge" if args.judge_url else "embedding")
    rep = {"model": os.path.abspath(args.model), "data": args.data, **rep,
           "generated_tokens": n_tok, "wall_seconds": time.perf_counter() - start}
    print(fantom_score.format_table(rep))
    if args.out:
        preds = _predictions_path(args.out)
        with cli.atomic_write(preds) as f:
            for r in rep.pop("predictions"):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        rep["predictions_file"] = preds
        with cli.atomic_write(args.out) as f:
            json.dump(rep, f, indent=1, ensure_ascii=False)
        print(f"wrote {args.out} and {preds}", file=sys.stderr)
    return 0
