"""`python -m socialr1_jax.episodes`: SOTOPIA's interactive evaluation of a model.

    python -m socialr1_jax.episodes --model CKPT_OR_URL --partner CKPT_OR_URL \\
        --evaluator URL --scenarios FILE --out episodes.jsonl [--resume | --overwrite]

Each scenario (SOTOPIA's schema, JSONL; `--scenarios demo` is the dozen shipped with the
project) is played with the tested model as agent 1 and as agent 2 (`--sides`), against the
partner (a second checkpoint loaded in-process, the same one for self-play, or any
OpenAI-compatible endpoint), and every finished episode is rated by the evaluator endpoint on
SOTOPIA's seven dimensions. `--parallel-episodes` episodes advance together, one batched
sampler call per turn for all of them (socialr1_jax.social.sotopia.episodes). Finished episodes
are appended to --out as they are rated (full transcript, evaluation, scores); --out must not
exist unless --resume (skip the episodes already in it) or --overwrite is given. At the end the
summary table (mean, std, n per dimension for the model and the partner) is printed and written
to <out without .jsonl>.summary.json.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from socialr1_jax import cli
from socialr1_jax.rollout.generate import (add_model_args, check_model_args, check_model_dir,
                                           check_sampling_flags, model_mesh, use_host_devices)

DEMO_SCENARIOS = os.path.join(os.path.dirname(__file__), "social", "sotopia", "scenarios.jsonl")
SIDES = {"both": (0, 1), "agent1": (0,), "agent2": (1,)}


def parse_args(argv=None):
    """The command line (see the module docstring and --help), every value checked."""
    ap = cli.ArgumentParser(prog="python -m socialr1_jax.episodes",
                            description="SOTOPIA episodes between the model and a partner, "
                                        "rated by an LLM evaluator.")
    ap.add_argument("--model", required=True,
                    help="the tested agent: a checkpoint folder or an http(s):// endpoint")
    ap.add_argument("--model-name", default=None, help="served model name at a --model URL")
    ap.add_argument("--partner", default=None, help="checkpoint or endpoint (default: --model)")
    ap.add_argument("--partner-name", default=None)
    ap.add_argument("--evaluator", required=True, help="OpenAI-compatible endpoint URL")
    ap.add_argument("--evaluator-model", default=None,
                    help="served model name (default: the server's only model)")
    ap.add_argument("--api-key-env", default="",
                    help="NAME of the environment variable holding the endpoints' API key")
    ap.add_argument("--scenarios", required=True, help="JSONL file, or 'demo'")
    ap.add_argument("--limit", type=cli.positive_int, default=None, help="first N scenarios")
    ap.add_argument("--sides", default="both", choices=tuple(SIDES),
                    help="which agent the model plays (both: one episode each)")
    ap.add_argument("--repeats", type=cli.positive_int, default=1, help="episodes per side")
    ap.add_argument("--out", required=True, help="episode records (JSONL)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip the episodes in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--parallel-episodes", type=cli.positive_int, default=32)
    ap.add_argument("--batch-size", type=cli.positive_int, default=32,
                    help="prompts per sampler call of a local agent")
    ap.add_argument("--max-turns", type=cli.positive_int, default=20)
    ap.add_argument("--max-stale", type=cli.nonnegative_int, default=2)
    ap.add_argument("--temperature", type=float, default=0.7, help="the agents' (SOTOPIA: 0.7)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=512, help="per agent action")
    ap.add_argument("--evaluator-max-tokens", type=cli.positive_int, default=2048)
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per endpoint request")
    ap.add_argument("--max-retries", type=cli.nonnegative_int, default=2)
    ap.add_argument("--max-concurrency", type=cli.positive_int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    add_model_args(ap)
    ap.add_argument("--progress", default=None, choices=("on", "off"),
                    help="progress bar over episodes (default: on a terminal only)")
    args = ap.parse_args(argv)
    args.num_samples = 1
    check_sampling_flags(args)
    check_model_args(args)
    if not args.timeout_s > 0:
        raise cli.UsageError(f"--timeout-s {args.timeout_s}: must be > 0")
    args.partner = args.partner or args.model
    if args.partner == args.model and args.partner_name is None:
        args.partner_name = args.model_name
    _check_out(args)
    return args


def _check_out(args) -> None:
    """--out: the one output rule (cli.output_file); --resume continues it (its
    records are checked line by line as they are read back)."""
    looks_like_episodes = cli.jsonl_with("episode_id", "scenario_id", "model_side")
    if os.path.isfile(args.out) and not (args.resume or args.overwrite):
        raise cli.UsageError(f"--out {args.out} exists; add --resume to continue it or "
                             "--overwrite to replace it")
    args.out = cli.output_file("--out", args.out, overwrite=args.overwrite or args.resume,
                               ours=(lambda p: True) if args.resume else looks_like_episodes,
                               kind="an episodes file",
                               inputs={"--scenarios": args.scenarios})


def is_url(value: str) -> bool:
    """Whether an agent flag names an endpoint rather than a checkpoint folder."""
    return value.startswith(("http://", "https://"))


def _client(flag: str, url: str, name: Optional[str], args):
    from socialr1_jax.social.sotopia.chat import ChatClient, ChatError

    key = ""
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "")
        if not key:
            raise cli.UsageError(f"--api-key-env {args.api_key_env}: the variable is not set")
    try:
        return ChatClient(url, name, api_key=key, timeout_s=args.timeout_s,
                          max_retries=args.max_retries, max_concurrency=args.max_concurrency)
    except (ValueError, ChatError) as e:
        raise cli.UsageError(f"{flag} {url}: {e}") from None


def _local_spec(flag: str, path: str, args) -> dict:
    """A local agent's checkpoint config, tokenizer and stop ids, checked before any loading."""
    from socialr1_jax.rollout import tokenizer as tk

    try:
        cfg = check_model_dir(path)
    except cli.UsageError as e:
        raise cli.UsageError(str(e).replace("--model", flag, 1)) from None
    try:
        tok = tk.load_tokenizer(path)
        eos = tk.stop_ids(path, tok)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"{flag} {path}: {e}") from None
    return {"path": path, "cfg": cfg, "tok": tok, "eos": eos, "mesh": model_mesh(args, cfg)}


def _local_agent(spec: dict, args, width: int):
    from socialr1_jax.checkpoint.loading import load_model
    from socialr1_jax.rollout import tokenizer as tk
    from socialr1_jax.social.sotopia.episodes import LocalAgent

    model = load_model(spec["path"], dtype=args.dtype, mesh=spec["mesh"])
    tok, eos = spec["tok"], spec["eos"]
    return LocalAgent(model, tok, eos_ids=eos, pad_id=tk.pad_id(tok, eos),
                      name=os.path.abspath(spec["path"]), batch_size=args.batch_size,
                      width=width, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      seed=args.seed, mesh=spec["mesh"])


def check_agents(args) -> dict:
    """Each agent flag checked (a checkpoint's files, an endpoint's served model) before any
    model loads: {"model": spec, "partner": spec or None when it is the same agent}."""
    from socialr1_jax.social.sotopia.episodes import EndpointAgent

    def spec(flag, value, name):
        if is_url(value):
            return EndpointAgent(_client(flag, value, name, args),
                                 temperature=args.temperature, max_tokens=args.max_new_tokens)
        return _local_spec(flag, value, args)

    same = args.partner == args.model and args.partner_name == args.model_name
    model = spec("--model", args.model, args.model_name)
    return {"model": model,
            "partner": None if same else spec("--partner", args.partner, args.partner_name)}


def build_agents(specs: dict, args, width: int) -> dict:
    """{"model": backend, "partner": backend}; the same object when both are the same agent."""
    def make(spec):
        return spec if not isinstance(spec, dict) else _local_agent(spec, args, width)

    model = make(specs["model"])
    return {"model": model, "partner": model if specs["partner"] is None
            else make(specs["partner"])}


def plan_episodes(scenarios, args, done: set) -> list:
    """The episodes still to play: each scenario x side x repeat whose id is not in `done`."""
    from socialr1_jax.social.sotopia.episodes import Episode

    out = []
    for sc in scenarios:
        for side in SIDES[args.sides]:
            for r in range(args.repeats):
                ident = f"{sc.id}#model-agent{side + 1}#{r}"
                if ident not in done:
                    out.append(Episode(id=ident, scenario=sc, model_side=side))
    return out


def _prepare_out(args) -> list[dict]:
    """The records already in --out (with --resume), a cut-off last line removed."""
    from socialr1_jax.social.sotopia.report import RecordError, read_records

    if not os.path.exists(args.out) or args.overwrite:
        open(args.out, "w").close()
        return []
    try:
        records, cut = read_records(args.out)
    except RecordError as e:
        raise cli.UsageError(f"--out: {e}") from None
    except OSError as e:
        raise cli.os_error("--out", args.out, e) from None
    if cut is not None:
        print(f"{args.out}: dropping a last line cut off by an earlier run (byte {cut}); its "
              "episode is played again", file=sys.stderr)
        with open(args.out, "r+b") as f:
            f.truncate(cut)
    return records


def _scenarios(args):
    from socialr1_jax.social.sotopia.scenarios import ScenarioError, load_scenarios

    path = DEMO_SCENARIOS if args.scenarios == "demo" else args.scenarios
    try:
        return load_scenarios(path, limit=args.limit)
    except ScenarioError as e:
        raise cli.UsageError(f"--scenarios {e}") from None


def main(argv=None) -> int:
    """Run the command line; a user's mistake is one `error:` line before any model loads."""
    args = parse_args(argv)
    use_host_devices(args)
    scenarios = _scenarios(args)
    specs = check_agents(args)
    from tqdm import tqdm

    from socialr1_jax.social.sotopia.evaluator import Evaluator
    from socialr1_jax.social.sotopia.report import format_table, summary
    from socialr1_jax.social.sotopia.run import play

    evaluator = Evaluator(_client("--evaluator", args.evaluator, args.evaluator_model, args),
                          max_tokens=args.evaluator_max_tokens)
    records = _prepare_out(args)
    todo = plan_episodes(scenarios, args, {r["episode_id"] for r in records})
    print(f"{len(scenarios)} scenario(s): {len(todo)} episode(s) to play, {len(records)} already "
          f"in {args.out}", file=sys.stderr)
    failed = []
    if todo:
        width = min(args.batch_size, args.parallel_episodes, len(todo))
        agents = build_agents(specs, args, width=width)
        bar = tqdm(total=len(todo), desc="episodes", unit="ep", file=sys.stderr,
                   disable=(not sys.stderr.isatty()) if args.progress is None
                   else args.progress == "off")
        with open(args.out, "a", encoding="utf-8") as sink:
            def write(rec):
                sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
                sink.flush()
                records.append(rec)
                bar.update(1)

            failed = play(todo, agents, evaluator, write, parallel=args.parallel_episodes,
                          max_turns=args.max_turns, max_stale=args.max_stale)
        bar.close()
    summ = summary(records)
    print(format_table(summ))
    stem = args.out[:-len(".jsonl")] if args.out.endswith(".jsonl") else args.out
    with open(stem + ".summary.json", "w", encoding="utf-8") as f:
        json.dump({"out": args.out, "evaluator": evaluator.client.model, **summ}, f, indent=1)
    evaluator.close()
    if failed:
        print(f"{len(failed)} episode(s) not written: an agent's request failed (first: "
              f"{failed[0].id}: {failed[0].failure}); run again with --resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
