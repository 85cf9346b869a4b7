"""What XLA:CPU's compiled sampler program does with the KV cache inside its decode loop.

    PYTHONPATH=CHECKOUT python benchmarks/decode_copies.py [--batch 8] [--out FILE.json]

Compiles `sampler._generate` of the checkout first on PYTHONPATH (nothing is run) for the
bench-100m model (fp32, 64-token prompts, 128 new tokens, greedy, as benchmarks/sampler_bench.py)
and reads the optimized HLO of the decode `while` loop's body (the loop body with the most
hidden-sized instructions: the decode step's, or with `unstack_layers=False` the layer scan's
inside it): every
instruction whose result has the shape of the whole cache ([L, B, K, S, H]) or of one layer's
([B, K, S, H]) is counted by opcode (a fusion by its root's). A `copy` there is a copy of the cache
on every decode step; an in-place write is a `dynamic-update-slice`.

The script only uses `sampler._generate`, `sampler._Plan` and `create_model`, so it runs against
older checkouts too (it never inserts this checkout on sys.path).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys



def computations(text: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of compiled HLO text."""
    comps, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if m:
            name = m.group(1)
            comps[name] = []
        elif name and line.strip() not in ("", "}"):
            comps[name].append(line.strip())
    return comps


def root_ops(comps: dict[str, list[str]]) -> dict[str, str]:
    """{computation name: the opcode of its ROOT instruction}."""
    out = {}
    for name, lines in comps.items():
        root = next((ln for ln in lines if ln.startswith("ROOT")), "")
        m = re.search(r"= .*? ([\w-]+)\(", root)
        out[name] = m.group(1) if m else "?"
    return out


def loop_computations(comps: dict[str, list[str]]) -> set[str]:
    """Every computation run inside a while loop: the bodies and what they call, transitively."""
    todo = [b for lines in comps.values() for ln in lines
            for b in re.findall(r"body=%([\w.-]+)", ln)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [c for ln in comps[name]
                     for c in re.findall(r"(?:calls|body)=%([\w.-]+)", ln)]
    return seen


def decode_body(comps: dict[str, list[str]], hidden: int) -> str:
    """The while body with the most instructions of the hidden size: the decode step's."""
    bodies = {b for lines in comps.values() for ln in lines
              for b in re.findall(r"body=%([\w.-]+)", ln)}
    return max(bodies, key=lambda b: sum(f",{hidden}]" in ln for ln in comps[b]))


def producers(comps, names, shape: str) -> collections.Counter:
    """Opcodes (a fusion's: its root's) of the instructions in computations `names` whose result
    type is f32[shape]."""
    root = root_ops(comps)
    out = collections.Counter()
    for name in names:
        for ln in comps[name]:
            m = re.search(rf"= f32\[{shape}\]\S* ([\w-]+)\(", ln)
            if m and m.group(1) == "fusion":
                out["fusion:" + root[re.search(r"calls=%([\w.-]+)", ln).group(1)]] += 1
            elif m:
                out[m.group(1)] += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the counts as JSON")
    a = ap.parse_args(argv)
    # Set here, not at import: tests import this module's HLO readers into a running process.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                     os.environ.get("XLA_FLAGS", "")).strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import socialr1_jax
    from socialr1_jax.model.build import create_model
    from socialr1_jax.model.config import preset
    from socialr1_jax.rollout import sampler

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(socialr1_jax.__file__)))
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cfg = preset("bench-100m")
    graphdef, state = nnx.split(create_model(cfg))
    b, p, n = a.batch, 64, 128
    fields = {f.name for f in dataclasses.fields(sampler._Plan)}
    modes = [True, False] if "unstack_layers" in fields else [None]
    ids = np.ones((b, p), np.int32)
    result = {"checkout": checkout, "commit": commit, "batch": b, "slots": p + n, "modes": {}}
    for unstack in modes:
        kw = {} if unstack is None else {"unstack_layers": unstack}
        plan = sampler._Plan(new_len=n, greedy=True, top_k=0, use_top_p=False, pad_id=0,
                             prefill_chunk=p, **kw)
        text = sampler._generate.lower(
            graphdef, state, ids, ids, np.ones(b, bool), jax.random.key(0), jnp.float32(1),
            jnp.float32(1), jnp.asarray([-1], jnp.int32), jnp.int32(n), plan=plan
        ).compile().as_text()
        comps = computations(text)
        body = decode_body(comps, cfg.hidden_size)
        layer = f"{b},{cfg.num_kv_heads},{p + n},{cfg.head_dim}"
        name = "default" if unstack is None else f"unstack_layers={unstack}"
        stacked = f"{cfg.num_layers},{layer}"
        result["modes"][name] = {
            "stacked cache [L, B, K, S, H]": dict(producers(comps, [body], stacked)),
            "one layer's cache [B, K, S, H]": dict(producers(comps, [body], layer)),
        }
    mb = 4 * b * cfg.num_kv_heads * (p + n) * cfg.head_dim * cfg.num_layers / 1e6
    print(f"# Decode loop of the compiled sampler, bench-100m fp32, B={b}, {p + n} slots "
          f"(commit {commit}; the whole cache is {mb:.1f} MB per K or V)")
    for mode, shapes in result["modes"].items():
        for shape, ops in shapes.items():
            counts = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) or "none"
            print(f"{mode:22s} {shape:32s} {counts}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
