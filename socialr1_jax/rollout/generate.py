"""Generate text from a checkpoint: `python -m socialr1_jax.generate --model PATH --prompt TEXT`.

Loads the model (`load_model`: HF directory or our Orbax checkpoint) and the tokenizer saved next
to it, optionally wraps each prompt in the chat template (`--chat`), samples with
`socialr1_jax.sample`, and prints the completions or writes them as JSONL (`--out`). Token counts
and tokens/s go to stderr. Prompts file: one JSON object per line with a "prompt" string.

Examples:
    python -m socialr1_jax.generate --model ckpt --prompt "Why is the sky blue?" --chat \\
        --temperature 0.7 --top-p 0.9 --max-new-tokens 256
    python -m socialr1_jax.generate --model ckpt --prompts-file qs.jsonl --chat --num-samples 5 \\
        --mesh 1x8x1 --host-devices 8 --out samples.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m socialr1_jax.generate",
                                 description="Sample completions from a Qwen3 checkpoint.")
    ap.add_argument("--model", required=True, help="HF checkpoint directory or Orbax checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt text")
    src.add_argument("--prompts-file", help='JSONL file, one {"prompt": "..."} per line')
    ap.add_argument("--chat", action="store_true",
                    help="wrap each prompt as a user turn of the chat template")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default=None, help="bf16 / fp32 (default: the checkpoint's)")
    ap.add_argument("--mesh", default=None, help="DATAxFSDPxTENSOR, e.g. 1x8x1")
    ap.add_argument("--host-devices", type=int, default=None,
                    help="split the CPU into this many XLA devices (to try --mesh on a CPU)")
    ap.add_argument("--out", default=None, help="write JSONL here instead of printing")
    return ap.parse_args(argv)


def read_prompts(args) -> list[str]:
    """The prompt texts from --prompt or --prompts-file (errors name the file and line)."""
    if args.prompt is not None:
        return [args.prompt]
    texts = []
    with open(args.prompts_file) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{args.prompts_file}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f'{args.prompts_file}:{n}: expected an object with a "prompt" '
                                 f"string, got {line.strip()[:80]!r}")
            texts.append(row["prompt"])
    if not texts:
        raise ValueError(f"{args.prompts_file}: no prompts")
    return texts


def main(argv=None) -> list[dict]:
    """Run the CLI; returns the rows it printed or wrote (one per completion)."""
    args = parse_args(argv)
    if args.host_devices:  # must precede the first jax import
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
    import numpy as np

    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout.sampler import sample
    from socialr1_jax.parallel.sharding import make_mesh, parse_mesh

    texts = read_prompts(args)
    mesh = make_mesh(**parse_mesh(args.mesh)) if args.mesh else None
    tok = tk.load_tokenizer(args.model)
    eos = tk.stop_ids(args.model, tok)
    model = load_model(args.model, dtype=args.dtype, mesh=mesh)
    inputs = [tk.chat_text(tok, t) if args.chat else t for t in texts]
    prompts = [tk.encode(tok, t) for t in inputs]

    import jax

    compile_s = []  # time spent tracing and compiling during the call, reported apart

    def on_event(name, secs, **_):
        if name.startswith("/jax/core/compile/"):
            compile_s.append(secs)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    start = time.perf_counter()
    res = sample(model, prompts, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 num_samples=args.num_samples, eos_ids=eos, seed=args.seed, mesh=mesh,
                 pad_id=tk.pad_id(tok, eos))
    tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
    elapsed = time.perf_counter() - start
    compiling = min(sum(compile_s), elapsed)

    rows = []
    for r in range(tokens.shape[0]):
        i, j = divmod(r, args.num_samples)
        ids = tokens[r, :lengths[r]].tolist()
        stopped = bool(ids) and ids[-1] in eos
        text = tok.decode(ids[:-1] if stopped else ids, skip_special_tokens=False)
        rows.append({"prompt_index": i, "sample_index": j, "prompt": texts[i],
                     "completion": text, "completion_ids": ids,
                     "prompt_tokens": len(prompts[i]), "completion_tokens": len(ids),
                     "finish_reason": "eos" if stopped else "length"})

    if args.out:
        with open(args.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        for row in rows:
            print(f"=== prompt {row['prompt_index']} sample {row['sample_index']} "
                  f"({row['completion_tokens']} tokens, {row['finish_reason']})")
            print(row["completion"])
        sys.stdout.flush()  # completions before the stats line on a shared terminal
    total = int(lengths.sum())
    run = max(elapsed - compiling, 1e-9)
    print(f"{len(prompts)} prompt(s) x {args.num_samples} sample(s): "
          f"{sum(len(p) for p in prompts) * args.num_samples} prompt tokens, {total} generated "
          f"tokens in {run:.2f} s = {total / run:.1f} tokens/s "
          f"(plus {compiling:.2f} s compiling)", file=sys.stderr)
    if args.out:
        print(f"wrote {len(rows)} completion(s) to {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
