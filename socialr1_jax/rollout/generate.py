"""Generate text from a checkpoint: `python -m socialr1_jax.generate --model PATH --prompt TEXT`.

Loads the model (`load_model`: HF directory or our Orbax checkpoint) and the tokenizer saved next
to it, optionally wraps each prompt in the chat template (`--chat`), samples with
`socialr1_jax.sample`, and prints the completions or writes them as JSONL (`--out`). Token counts
and tokens/s go to stderr. Prompts file: one JSON object per line with a "prompt" string.

Everything the user gives is checked before the model loads, each mistake one `error:` line
naming the flag (exit code 2): the sampling values, --mesh and --host-devices, the checkpoint
folder and its config.json, the tokenizer, the prompts (encoded and checked against the
vocabulary and the context length), and --out (`cli.output_file`: its folder exists and is
writable, an existing file is replaced only with --overwrite and only if it is generate's JSONL,
never inside a model folder) so no completion is sampled only to be thrown away. --out is
written through a temporary file renamed into place (`cli.atomic_write`). --chat on a tokenizer
without a chat template is refused unless --chat-format qwen names the format.

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

from socialr1_jax import cli


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring), every value checked (UsageError)."""
    ap = cli.ArgumentParser(prog="python -m socialr1_jax.generate",
                            description="Sample completions from a Qwen3 checkpoint.")
    ap.add_argument("--model", required=True, help="HF checkpoint directory or Orbax checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt text")
    src.add_argument("--prompts-file", help='JSONL file, one {"prompt": "..."} per line')
    ap.add_argument("--chat", action="store_true",
                    help="wrap each prompt as a user turn of the tokenizer's chat template "
                         "(refused when it has none; see --chat-format)")
    ap.add_argument("--chat-format", default=None, choices=["qwen"],
                    help="with --chat on a tokenizer without a chat template: use Qwen's turn "
                         "format written out")
    add_sampling_args(ap, temperature=1.0, max_new_tokens=256,
                      samples_help="completions per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=None,
                    help="refill (continuous batching): decode this many rows at a time, each "
                         "finished row's slot taking the next completion (default: all at once)")
    add_model_args(ap)
    ap.add_argument("--out", default=None, help="write JSONL here instead of printing")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out (only a JSONL file of generate's)")
    ap.add_argument("--allow-nonfinite", action="store_true",
                    help="load weights with NaN/Inf instead of refusing them (debugging only)")
    args = ap.parse_args(argv)
    check_sampling_flags(args)
    if args.slots is not None and args.slots < 1:
        raise cli.UsageError(f"--slots {args.slots}: must be a positive integer")
    check_model_args(args)
    if args.chat_format and not args.chat:
        raise cli.UsageError("--chat-format qwen: needs --chat")
    if args.out:
        args.out = cli.output_file("--out", args.out, overwrite=args.overwrite,
                                   ours=cli.jsonl_with("prompt_index", "completion"),
                                   kind="a JSONL file of generate's",
                                   inputs={"--prompts-file": args.prompts_file,
                                           "--model": args.model})
    return args


def add_sampling_args(ap, *, temperature: float, max_new_tokens: int, samples_help: str) -> None:
    """The sampler's flags (--temperature, --top-p, --top-k, --max-new-tokens, --num-samples),
    shared by `generate` and `evaluate`; check them with `check_sampling_flags`."""
    ap.add_argument("--temperature", type=float, default=temperature,
                    help="0 = greedy" + (" (default)" if temperature == 0 else ""))
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--num-samples", type=int, default=1, help=samples_help)


def add_model_args(ap) -> None:
    """How the checkpoint is loaded and sharded (--dtype, --mesh, --host-devices), shared by
    `generate` and `evaluate`; check them with `check_model_args`, place them with
    `use_host_devices` and `model_mesh`."""
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp32", "bfloat16", "float32"],
                    help="default: the checkpoint's")
    ap.add_argument("--mesh", default=None, help="DATAxFSDPxTENSOR, e.g. 1x8x1")
    ap.add_argument("--host-devices", type=cli.positive_int, default=None,
                    help="split the CPU into this many XLA devices (to try --mesh on a CPU)")


def check_model_args(args) -> None:
    """--mesh parsed into `args.mesh_sizes` (every size >= 1), or a UsageError naming it."""
    args.mesh_sizes = cli.mesh_sizes("--mesh", args.mesh) if args.mesh else None


def use_host_devices(args) -> None:
    """--host-devices as XLA's forced CPU device count (before JAX starts a backend)."""
    if args.host_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")


def model_mesh(args, cfg):
    """The mesh of --mesh (None without it), checked against the model's heads (UsageError)."""
    from socialr1_jax.parallel.sharding import check_model_fits_mesh, make_mesh

    if not args.mesh_sizes:
        return None
    try:
        mesh = make_mesh(**args.mesh_sizes)
        check_model_fits_mesh(cfg, mesh)
    except ValueError as e:
        raise cli.UsageError(f"--mesh {args.mesh}: {e}") from None
    return mesh


def check_sampling_flags(args) -> None:
    """The sampling values, with the sampler's own rules, reported by flag name."""
    from socialr1_jax.rollout.checks import ArgumentError, check_sampling

    try:
        check_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, num_samples=args.num_samples)
    except ArgumentError as e:
        raise cli.UsageError(f"--{e.arg.replace('_', '-')} {e.value}: {e.reason}") from None


def check_model_dir(path: str):
    """The ModelConfig of the checkpoint at --model, from its config.json alone (no weights read).

    Refuses a missing folder, a folder that is no checkpoint, and a config.json we cannot run.
    """
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.model.config import from_hf_config

    if not os.path.exists(path):
        raise cli.UsageError(f"--model {path}: no such checkpoint folder")
    if not os.path.isdir(path):
        raise cli.UsageError(f"--model {path} is a file; give the checkpoint folder")
    if orbax_io.is_orbax_checkpoint(path):
        root, _ = orbax_io.resolve(path)
        config = os.path.join(root, "config.json")
    else:
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise cli.UsageError(f"--model {path}: not a checkpoint (no config.json, and not an "
                                 "Orbax checkpoint with a finished step)")
    try:
        return from_hf_config(config)
    except (ValueError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None


def read_prompts(args) -> list[str]:
    """The prompt texts from --prompt or --prompts-file (errors name the file and line)."""
    if args.prompt is not None:
        return [args.prompt]
    texts = []
    try:
        with open(args.prompts_file) as f:
            lines = list(f)
    except OSError as e:
        raise cli.os_error("--prompts-file", args.prompts_file, e) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise cli.UsageError(f"--prompts-file {args.prompts_file}:{n}: not valid JSON "
                                 f"({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise cli.UsageError(f'--prompts-file {args.prompts_file}:{n}: expected an object '
                                 f'with a "prompt" string, got {line.strip()[:80]!r}')
        texts.append(row["prompt"])
    if not texts:
        raise cli.UsageError(f"--prompts-file {args.prompts_file}: no prompts")
    return texts


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with cli.atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def chat_inputs(args, tok, texts: list[str]) -> list[str]:
    """The prompt texts as the model sees them: with --chat, a user turn of the tokenizer's chat
    template; a tokenizer without one is refused unless --chat-format names the format."""
    from socialr1_jax.rollout import tokenizer as tk

    if not args.chat:
        return texts
    if args.chat_format == "qwen":
        return [tk.QWEN_TURN.format(role="user", content=t) + tk.QWEN_GENERATION_PROMPT
                for t in texts]
    if not getattr(tok, "chat_template", None):
        raise cli.UsageError(f"--chat: the tokenizer of --model {args.model} has no chat "
                             "template; pass --chat-format qwen to use Qwen's turn format, or "
                             "drop --chat")
    return [tk.chat_text(tok, t) for t in texts]


def _rows(tok, tokens, lengths, eos, texts, prompts, num_samples: int) -> list[dict]:
    """One output row per completion: prompt and sample index, text, ids and why it ended."""
    rows = []
    for r in range(tokens.shape[0]):
        i, j = divmod(r, num_samples)
        ids = tokens[r, :lengths[r]].tolist()
        stopped = bool(ids) and ids[-1] in eos
        text = tok.decode(ids[:-1] if stopped else ids, skip_special_tokens=False)
        rows.append({"prompt_index": i, "sample_index": j, "prompt": texts[i],
                     "completion": text, "completion_ids": ids,
                     "prompt_tokens": len(prompts[i]), "completion_tokens": len(ids),
                     "finish_reason": "eos" if stopped else "length"})
    return rows


def generate(argv=None) -> list[dict]:
    """Run the command; returns the rows it printed or wrote (one per completion)."""
    args = parse_args(argv)
    use_host_devices(args)
    texts = read_prompts(args)
    from socialr1_jax.checkpoint.orbax_io import run_checkpoints

    args.model = run_checkpoints(args.model)  # a run folder: its checkpoints/
    cfg = check_model_dir(args.model)

    import numpy as np

    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.rollout.checks import check_against_model
    from socialr1_jax.rollout.sampler import sample

    mesh = model_mesh(args, cfg)
    try:
        tok = tk.load_tokenizer(args.model)
        eos = tk.stop_ids(args.model, tok)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"--model {args.model}: {e}") from None
    inputs = chat_inputs(args, tok, texts)
    prompts = [tk.encode(tok, t) for t in inputs]
    pad = tk.pad_id(tok, eos)
    try:
        check_against_model(prompts, vocab=cfg.vocab_size, max_len=cfg.max_position_embeddings,
                            max_new_tokens=args.max_new_tokens, eos_ids=eos, pad_id=pad)
    except ValueError as e:
        raise cli.UsageError(f"--model {args.model}: {e}") from None

    model = load_model(args.model, dtype=args.dtype, mesh=mesh,
                       allow_nonfinite=args.allow_nonfinite)

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
                 pad_id=pad, slots=args.slots)
    tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
    elapsed = time.perf_counter() - start
    compiling = min(sum(compile_s), elapsed)

    rows = _rows(tok, tokens, lengths, eos, texts, prompts, args.num_samples)

    if args.out:
        try:
            _write_jsonl(args.out, rows)
        except OSError as e:  # the disk filled up while sampling: keep the completions anyway
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
            raise cli.UsageError(f"--out {args.out}: {e.strerror or e}; the {len(rows)} "
                                 "completion(s) were printed to stdout instead") from None
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


def main(argv=None) -> int:
    """The command-line entry point: `generate`, exit code 0 (a user's mistake raises UsageError,
    which `cli.run` prints as one line with exit code 2)."""
    generate(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
