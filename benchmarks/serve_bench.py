"""Benchmark: `python -m socialr1_jax.serve` under 32 concurrent chat requests vs one direct
`socialr1_jax.sample` call over the same prompts, in one run.

    python benchmarks/serve_bench.py [--clients 32] [--new-tokens 64] [--repeats 3]
                                     [--window-ms 20] [--work DIR] [--max-load 3]

Model: the 'bench-100m' preset shapes (hidden 512, 8 layers, 151,936-token vocabulary; 103M
parameters, fp32), random transformers weights saved as an HF directory, with the tiny byte
tokenizer and a chat template (tests/hf_fixtures.py). The embedding rows past the 256 byte tokens
are zeroed (the embeddings are tied, so those tokens' logits are 0 and a byte token wins almost
surely): the random model then writes byte tokens, so streamed deltas carry text (ids past the
tokenizer's vocabulary decode to ""), at the same compute per step. Prompts: 32 different one-turn chats
(~30 tokens after the template), greedy, 64 new tokens each; the only EOS id is one the random
model practically never picks, so every request does the same work (tokens are counted anyway).

Measured, each after warm-up (the server warms up before /health is ready; the direct call
once untimed), rounds alternating direct / served so a slow patch of the shared machine hits
both; medians over --repeats rounds:
- direct: one `sample` call of all prompts (prompt bucket 64, as the server pads them);
- served, batched: the clients send at once (httpx, asyncio); total generated tokens / wall;
  latency per request p50 / p90 / p99;
- direct, streaming program: the same call with `on_tokens` (the per-step host callback the
  server's programs carry), to show what token streaming costs;
- served, one at a time: the first --single requests sent sequentially (batch size 1);
- time to first token with `stream: true` (the clients at once, streaming).
Results: a table on stdout and benchmarks/results/serve_bench.md (+ .json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_common import hf_qwen3_config, wait_for_quiet, write_results  # noqa: E402

NO_EOS = 151935


def build_model(path: str) -> None:
    """The bench-100m-shaped HF checkpoint with the tiny tokenizer and a chat template."""
    import torch
    from transformers import Qwen3ForCausalLM

    from socialr1_jax.rollout import tokenizer as tk
    from tests.hf_fixtures import make_tiny_tokenizer

    if os.path.exists(os.path.join(path, "bytes_only")):
        return
    cfg = hf_qwen3_config("bench-100m")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[256:] = 0.0  # only byte tokens get positive logits
    model.save_pretrained(path)
    make_tiny_tokenizer(path, chat_template=tk.DEMO_CHAT_TEMPLATE)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [NO_EOS], "pad_token_id": 256}, f)
    open(os.path.join(path, "bytes_only"), "w").close()


def start_server(path: str, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "socialr1_jax.serve", "--model", path, "--port", str(port),
           "--served-model-name", "bench", "--max-batch", str(args.clients),
           "--batch-buckets", f"1,{args.clients}", "--prompt-buckets", "64",
           "--max-model-len", str(64 + args.new_tokens), "--batch-window-ms",
           str(args.window_ms), "--log-level", "warning"]
    log = open(os.path.join(args.work, "server.log"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    import httpx

    while True:
        if proc.poll() is not None:
            sys.exit(f"the server exited; see {args.work}/server.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(1)


async def _one(client, url, msg, new_tokens, stream):
    body = {"model": "bench", "messages": [{"role": "user", "content": msg}],
            "temperature": 0, "max_tokens": new_tokens}
    t0 = time.perf_counter()
    if not stream:
        r = await client.post(url, json=body)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"], None
    first = None
    async with client.stream("POST", url, json={**body, "stream": True}) as r:
        async for line in r.aiter_lines():
            if first is None and line.startswith("data:") and line[5:].strip() != "[DONE]":
                delta = json.loads(line[5:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    first = time.perf_counter() - t0
    return time.perf_counter() - t0, None, first


async def _served(port, msgs, new_tokens, *, concurrent: bool, stream: bool = False):
    import httpx

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        t0 = time.perf_counter()
        if concurrent:
            out = await asyncio.gather(*(_one(c, url, m, new_tokens, stream) for m in msgs))
        else:
            out = [await _one(c, url, m, new_tokens, stream) for m in msgs]
        return time.perf_counter() - t0, out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single", type=int, default=8, help="requests of the one-at-a-time run")
    ap.add_argument("--window-ms", type=float, default=20.0)
    ap.add_argument("--work", default="/tmp/serve_bench")
    ap.add_argument("--max-load", type=float, default=None)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    path = os.path.join(args.work, "bench100m")
    build_model(path)
    load = wait_for_quiet(args.max_load)

    import numpy as np

    from socialr1_jax import load_model, sample
    from socialr1_jax.rollout import tokenizer as tk

    tok = tk.load_tokenizer(path)
    msgs = [f"Q{i}: where is the ball?" for i in range(args.clients)]
    prompts = [tk.encode(tok, tok.apply_chat_template([{"role": "user", "content": m}],
                                                      tokenize=False, add_generation_prompt=True))
               for m in msgs]
    model = load_model(path)

    def direct(on_tokens=None):
        t0 = time.perf_counter()
        r = sample(model, prompts, max_new_tokens=args.new_tokens, temperature=0,
                   eos_ids=[NO_EOS], pad_id=256, max_cache_len=64 + args.new_tokens,
                   shapes=(args.clients, 64, args.new_tokens), on_tokens=on_tokens)
        n = int(np.asarray(r.lengths).sum())
        return time.perf_counter() - t0, n

    direct()  # compile
    direct(_no_tokens)  # and the streaming program (what the server runs)
    port = _port()
    proc = start_server(path, port, args)
    rounds = []
    try:
        asyncio.run(_served(port, msgs[:2], 4, concurrent=True))  # connections, first requests
        for _ in range(args.repeats):
            d_s, d_n = direct()
            c_s, c_n = direct(_no_tokens)
            b_s, b_out = asyncio.run(_served(port, msgs, args.new_tokens, concurrent=True))
            rounds.append({"direct_s": d_s, "direct_tokens": d_n, "direct_stream_s": c_s,
                           "direct_stream_tokens": c_n, "batched_s": b_s,
                           "batched_tokens": sum(o[1] for o in b_out),
                           "latency_s": [o[0] for o in b_out]})
        s_s, s_out = asyncio.run(_served(port, msgs[:args.single], args.new_tokens,
                                         concurrent=False))
        t_s, t_out = asyncio.run(_served(port, msgs, args.new_tokens, concurrent=True,
                                         stream=True))
    finally:
        proc.terminate()
        proc.wait(60)
    report(args, load, rounds, (s_s, s_out), (t_s, t_out))


def _no_tokens(step, tokens) -> None:
    """The per-step host callback of the streaming program, doing nothing."""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(args, load, rounds, single, streamed) -> None:
    """Print the table and write benchmarks/results/serve_bench.{md,json}."""
    med = lambda k: statistics.median(r[k] for r in rounds)  # noqa: E731
    direct_tps = statistics.median(r["direct_tokens"] / r["direct_s"] for r in rounds)
    stream_tps = statistics.median(r["direct_stream_tokens"] / r["direct_stream_s"]
                                   for r in rounds)
    batched_tps = statistics.median(r["batched_tokens"] / r["batched_s"] for r in rounds)
    lat = rounds[len(rounds) // 2]["latency_s"]
    s_s, s_out = single
    single_tps = sum(o[1] for o in s_out) / s_s
    ttft = [o[2] for o in streamed[1] if o[2] is not None]
    if not ttft:
        raise SystemExit("no streamed response carried content: time to first token unknown")
    rows = [("direct sample() call, 32 prompts", f"{direct_tps:.0f}", f"{med('direct_s'):.2f}"),
            ("direct sample(..., on_tokens=no-op), 32 prompts", f"{stream_tps:.0f}",
             f"{med('direct_stream_s'):.2f}"),
            ("server, 32 concurrent clients", f"{batched_tps:.0f}", f"{med('batched_s'):.2f}"),
            (f"server, one request at a time ({args.single} requests)", f"{single_tps:.0f}",
             f"{s_s:.2f}")]
    lines = [f"# serve_bench: {args.clients} chat requests x {args.new_tokens} new tokens, "
             "bench-100m shapes, fp32, CPU", "",
             f"Load average (1 min) when the timed part started: {load:.2f}; batch window "
             f"{args.window_ms:g} ms; medians of {args.repeats} alternating rounds.", "",
             "| path | tokens/s | wall s |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"- served batched / direct: **{batched_tps / direct_tps:.2f}x** (goal >= 0.8x)",
              f"- the per-step host callback of token streaming (direct with on_tokens / "
              f"without): **{stream_tps / direct_tps:.2f}x**",
              f"- batched / one at a time: **{batched_tps / single_tps:.1f}x**",
              f"- latency per request (batched round): p50 {pct(lat, 50):.2f} s, p90 "
              f"{pct(lat, 90):.2f} s, p99 {pct(lat, 99):.2f} s",
              f"- time to first token, streaming, {args.clients} at once: p50 "
              f"{pct(ttft, 50):.2f} s, p90 {pct(ttft, 90):.2f} s, p99 {pct(ttft, 99):.2f} s "
              f"({len(ttft)} of {len(streamed[1])} streams carried text; whole streamed round "
              f"{streamed[0]:.2f} s)"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(HERE, "results", "serve_bench")
    write_results(out + ".md", text)
    write_results(out + ".json", {"rounds": rounds, "single_s": s_s, "ttft_s": ttft,
                                  "streamed_round_s": streamed[0], "args": vars(args),
                                  "load_at_start": load})


if __name__ == "__main__":
    main()
