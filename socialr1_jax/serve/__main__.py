"""`python -m socialr1_jax.serve --model CKPT`: an OpenAI-compatible server over the sampler.

CKPT is an HF directory, an Orbax checkpoint written by our converter, a training run's
`checkpoints/` folder (the latest step, or `--step`), or the run folder itself. Flags are
checked, and the tokenizer read, before the port opens; the model then loads and warms up in the
background while `/health` answers 503, and is ready when it answers 200. Ctrl-C / SIGTERM stop
it: uvicorn stops taking connections and lets open requests finish (up to
--graceful-shutdown-s), the running sampler call finishes, queued requests get a 503.

Examples:
    python -m socialr1_jax.serve --model runs/r1/checkpoints --served-model-name socialr1
    python -m socialr1_jax.serve --model ckpt --mesh 1x8x1 --host 0.0.0.0 --api-key "$KEY"
"""

from __future__ import annotations

import logging
import os
import sys

from socialr1_jax import cli
from socialr1_jax.rollout.generate import (add_model_args, check_model_args, check_model_dir,
                                           model_mesh, use_host_devices)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("socialr1_jax.serve")


def parse_args(argv=None):
    """The command line (see the module docstring), every value checked (UsageError)."""
    ap = cli.ArgumentParser(prog="python -m socialr1_jax.serve",
                            description="Serve a Qwen3 checkpoint over the OpenAI API.")
    ap.add_argument("--model", required=True,
                    help="HF directory, Orbax checkpoint, a run's checkpoints/ or the run folder")
    ap.add_argument("--step", type=cli.nonnegative_int, default=None,
                    help="which step of an Orbax checkpoint (default: the latest)")
    ap.add_argument("--served-model-name", default=None,
                    help="the name clients give as `model` (default: the folder's name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=cli.nonnegative_int, default=8000)
    ap.add_argument("--api-key", default=os.environ.get("SOCIALR1_API_KEY") or None,
                    help="require 'Authorization: Bearer KEY' (default: $SOCIALR1_API_KEY)")
    ap.add_argument("--max-batch", type=cli.positive_int, default=32,
                    help="most rows (prompts x n) in one sampler call")
    ap.add_argument("--max-model-len", type=cli.positive_int, default=None,
                    help="context length: prompt + new tokens (default: the model's)")
    ap.add_argument("--batch-window-ms", type=float, default=10.0,
                    help="how long the first waiting request waits for others to join it")
    ap.add_argument("--batch-buckets", default=None,
                    help="batch sizes compiled, e.g. 1,4,16,32 (default: powers of 4 and "
                         "--max-batch)")
    ap.add_argument("--prompt-buckets", default=None,
                    help="prompt lengths compiled, e.g. 64,256,1024 (default: powers of two "
                         "and max-model-len minus powers of two)")
    ap.add_argument("--max-body-bytes", type=cli.positive_int, default=1 << 20)
    ap.add_argument("--graceful-shutdown-s", type=float, default=30.0)
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--no-token-streaming", action="store_true",
                    help="compile the sampler without its per-step host callback: streamed "
                         "requests then get their text when the call ends")
    ap.add_argument("--allow-nonfinite", action="store_true",
                    help="load weights with NaN/Inf instead of refusing them (debugging only)")
    add_model_args(ap)
    args = ap.parse_args(argv)
    check_model_args(args)
    if args.batch_window_ms < 0:
        raise cli.UsageError(f"--batch-window-ms {args.batch_window_ms}: must be >= 0")
    return args


def resolve_checkpoint(args) -> tuple[str, str]:
    """(the path load_model takes, the folder with the tokenizer and generation_config)."""
    from socialr1_jax.checkpoint import orbax_io
    from socialr1_jax.checkpoint.errors import CheckpointError

    path = orbax_io.run_checkpoints(args.model)
    if orbax_io.is_orbax_checkpoint(path):
        try:
            root, step = orbax_io.resolve(path, args.step)
        except CheckpointError as e:
            raise cli.UsageError(f"--model {args.model}: {e}") from None
        args.step = step
        return path, root
    if args.step is not None:
        raise cli.UsageError(f"--step {args.step}: --model {args.model} is an HF directory, "
                             "which has no steps")
    return path, path


def buckets(args, max_model_len: int) -> tuple[list[int], list[int]]:
    """(batch buckets, prompt buckets) from the flags or their defaults, checked."""
    from socialr1_jax.serve.engine import default_prompt_buckets

    if args.batch_buckets:
        rows = cli.int_list("--batch-buckets", args.batch_buckets, minimum=1)
        if max(rows) != args.max_batch:
            raise cli.UsageError(f"--batch-buckets {args.batch_buckets}: the largest must be "
                                 f"--max-batch ({args.max_batch})")
    else:
        rows = [4 ** k for k in range(8) if 4 ** k < args.max_batch] + [args.max_batch]
    if args.prompt_buckets:
        prompts = cli.int_list("--prompt-buckets", args.prompt_buckets, minimum=1)
        bad = [p for p in prompts if p >= max_model_len]
        if bad:
            raise cli.UsageError(f"--prompt-buckets {args.prompt_buckets}: {bad[0]} leaves no "
                                 f"room to generate within --max-model-len {max_model_len}")
    else:
        prompts = default_prompt_buckets(max_model_len)
    return rows, prompts


def main(argv=None) -> int:
    """Run the server until Ctrl-C / SIGTERM (a user's mistake raises UsageError first)."""
    args = parse_args(argv)
    use_host_devices(args)
    name, load = build_loader(args)
    run_server(args, name, load)
    return 0


def build_loader(args):
    """(served model name, load) for parsed args: everything a user can get wrong is checked
    here, before the port opens; `load()` -> (Engine, tokenizer) loads and warms up."""
    load_path, side_dir = resolve_checkpoint(args)
    cfg = check_model_dir(load_path)
    max_len = args.max_model_len or cfg.max_position_embeddings
    if max_len > cfg.max_position_embeddings:
        raise cli.UsageError(f"--max-model-len {max_len}: the model's context is "
                             f"{cfg.max_position_embeddings} (max_position_embeddings)")
    rows, prompts = buckets(args, max_len)
    from socialr1_jax.rollout import tokenizer as tk

    try:
        tok = tk.load_tokenizer(side_dir)
        eos = tk.stop_ids(side_dir, tok)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"--model {args.model}: {e}") from None
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in LOOPBACK and not args.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this port can use the "
                    "model (give --api-key or SOCIALR1_API_KEY)", args.host)
    mesh = model_mesh(args, cfg)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))

    def load():
        from socialr1_jax.checkpoint.loading import load_model
        from socialr1_jax.serve.engine import Engine

        model = load_model(load_path, dtype=args.dtype, mesh=mesh,
                           allow_nonfinite=args.allow_nonfinite, step=args.step)
        engine = Engine(model, eos_ids=eos, pad_id=tk.pad_id(tok, eos), max_model_len=max_len,
                        batch_buckets=rows, prompt_buckets=prompts, mesh=mesh,
                        stream=not args.no_token_streaming)
        log.info("warming up: batch sizes %s, prompt buckets %s, context %d",
                 engine.batch_buckets, engine.prompt_buckets, max_len)
        engine.warm_up(log=log.info)
        return engine, tok

    return name, load


def run_server(args, name: str, load) -> None:
    """uvicorn over the app until a signal stops it."""
    import uvicorn

    from socialr1_jax.serve.app import create_app, Server, ServerConfig

    config = ServerConfig(model_name=name, api_key=args.api_key,
                          max_body_bytes=args.max_body_bytes,
                          max_rows_per_request=8 * args.max_batch,
                          batch_window_s=args.batch_window_ms / 1e3)
    server = Server(config, load)
    log.info("serving %s as %r on http://%s:%d/v1", args.model, name, args.host, args.port)
    uvicorn.Server(uvicorn.Config(create_app(server), host=args.host, port=args.port,
                                  log_level=args.log_level, access_log=False,
                                  timeout_graceful_shutdown=args.graceful_shutdown_s)).run()


if __name__ == "__main__":
    sys.exit(cli.run(main))
