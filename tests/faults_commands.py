"""Fault scenarios of generate, memory_plan and the library calls: every bad input, checked
before the model loads, and generate's --out on a read-only or full filesystem (run by
tests/test_faults.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fault_tools import (GEN, PLAN, PY, Env, copy_with_config, error_line, exit2, in_tmpfs,
                               run, scenario)


# -- generate: every check before the model loads (the model given is the NaN one, whose loading
#    would fail with a different message), --out before sampling.

def _gen_refused(env, *args, model=None, names=()) -> str:
    """generate with `args` must fail naming `names` (default: the flag and its value)."""
    r = run(GEN, "--model", model or env.nan_hf, "--prompt", "Where is the ball?", *args)
    line = error_line(env, r, *(names or args))
    assert "NaN" not in line, "the model was loaded before the argument was checked"
    return f"exit 2, before the model loads: `{line}`"


@scenario("gen_model_missing")
def _(env):
    return ("`generate --model /nonexistent`", _gen_refused(env, model=env.path("nowhere"),
                                                         names=("--model", "no such")), "-")


@scenario("gen_model_not_ckpt")
def _(env):
    d = env.fresh("not_ckpt")
    line = _gen_refused(env, model=d, names=("--model", "not a checkpoint"))
    return "`generate --model` a folder that is no checkpoint", line, "-"


@scenario("gen_model_layers")
def _(env):
    d = env.fresh("gen_layers")
    copy_with_config(env.nan_hf, d + "/m", num_hidden_layers=-1)
    return ("`generate --model` whose config.json has `num_hidden_layers: -1`",
            _gen_refused(env, model=d + "/m", names=("config.json", "num_hidden_layers=-1")), "-")


# A flag's bad value: (scenario, the row's first cell, the flag and value, what the error names).
GENERATE_FLAGS = [
    ("gen_mesh_abc", "`generate --mesh abc`", ["--mesh", "abc"], ()),
    ("gen_mesh_devices", "`generate --mesh 1x3x1` on 8 devices", ["--mesh", "1x3x1"],
     ("--mesh", "1x3x1", "8")),
    ("gen_host_devices", "`generate --host-devices -1`", ["--host-devices", "-1"], ()),
    ("gen_max_new_float", "`generate --max-new-tokens 2.7`", ["--max-new-tokens", "2.7"], ()),
    ("gen_max_new_zero", "`generate --max-new-tokens 0`", ["--max-new-tokens", "0"], ()),
    ("gen_temperature", "`generate --temperature -1`", ["--temperature", "-1"], ()),
    ("gen_top_p", "`generate --top-p 1.5`", ["--top-p", "1.5"], ()),
    ("gen_dtype", "`generate --dtype fp8`", ["--dtype", "fp8"], ()),
]


def _flag_scenario(title, args, names):
    return lambda env: (title, _gen_refused(env, *args, names=names), "-")


for _name, _title, _args, _names in GENERATE_FLAGS:
    scenario(_name)(_flag_scenario(_title, _args, _names))


@scenario("gen_out_missing_dir")
def _(env):
    out = env.path("no_such_folder") + "/out.jsonl"
    line = _gen_refused(env, "--out", out, names=("--out", "does not exist"))
    return ("`generate --out` in a folder that does not exist", line,
            "nothing sampled to be lost")


@scenario("gen_out_is_dir")
def _(env):
    d = env.fresh("gen_out_dir")
    line = _gen_refused(env, "--out", d, names=("--out", "is a folder"))
    return ("`generate --out` an existing folder", line,
            "folder untouched")


@scenario("gen_prompts_missing")
def _(env):
    r = run(GEN, "--model", env.nan_hf, "--prompts-file", env.path("nope.jsonl"))
    line = error_line(env, r, "--prompts-file", "nope.jsonl")
    assert "NaN" not in line
    return ("`generate --prompts-file` that does not exist",
            f"exit 2, before the model loads: `{line}`", "-")


@scenario("gen_prompts_bad_line")
def _(env):
    p = env.path("bad.jsonl")
    with open(p, "w") as f:
        f.write('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    r = run(GEN, "--model", env.nan_hf, "--prompts-file", p)
    line = error_line(env, r, "--prompts-file", "bad.jsonl:2")
    assert "NaN" not in line
    return ("`generate --prompts-file` with a bad line",
            f"exit 2, before the model loads: `{line}`", "prompts file unchanged")


@scenario("gen_nan_weights")
def _(env):
    line = exit2(env, run(GEN, "--model", env.nan_hf, "--prompt", "hi"), Env.NAN_TENSOR,
                 "NaN at [3, 5]")
    return "`generate --model` with a NaN weight", line, "-"


# -- memory_plan: checked before anything compiles.

@scenario("plan_mesh")
def _(env):
    line = exit2(env, run(PLAN, "--preset", "tiny", "--mesh", "abc"), "--mesh", "abc")
    return "`memory_plan --mesh abc`", line, "-"


@scenario("plan_devices")
def _(env):
    line = exit2(env, run(PLAN, "--preset", "tiny", "--devices", "0"), "--devices", "0")
    return "`memory_plan --devices 0`", line, "-"


@scenario("plan_micro_batch")
def _(env):
    line = exit2(env, run(PLAN, "--preset", "tiny", "--micro-batch", "7"), "--micro-batch", "7")
    return "`memory_plan --micro-batch 7` (batch 40 on 8 shards)", line, "-"


@scenario("plan_preset")
def _(env):
    line = exit2(env, run(PLAN, "--preset", "qwen9"), "--preset", "qwen9")
    return "`memory_plan --preset qwen9`", line, "-"


# -- Library calls (in this process): the same rules, as ValueErrors naming the value.

def _lib_error(fn, *names: str) -> str:
    """fn() must raise a ValueError naming each of `names`."""
    with pytest.raises(ValueError) as e:
        fn()
    for name in names:
        assert name in str(e.value), f"{name!r} not named in: {e.value}"
    return f"ValueError: `{e.value}`"


def _with_model(env):
    from socialr1_jax import load_model

    if not hasattr(env, "_model"):
        env._model = load_model(env.hf)
    return env._model


@scenario("lib_sample_text")
def _(env):
    from socialr1_jax import sample

    m = _with_model(env)
    return ('`sample(model, ["Where is the ball?"])` (text, not token ids)',
            _lib_error(lambda: sample(m, ["Where is the ball?"], max_new_tokens=4),
                       "prompts[0]", "is text"), "-")


@scenario("lib_max_new_float")
def _(env):
    from socialr1_jax import sample

    m = _with_model(env)
    return ("`sample(..., max_new_tokens=2.7)`",
            _lib_error(lambda: sample(m, [[1, 2]], max_new_tokens=2.7),
                       "max_new_tokens=2.7"), "-")


@scenario("lib_token_float")
def _(env):
    from socialr1_jax import sample

    m = _with_model(env)
    return ("`sample(model, [[5, 1.7]], ...)` (a non-integer token id)",
            _lib_error(lambda: sample(m, [[5, 1.7]], max_new_tokens=4),
                       "prompts[0][1]=1.7"), "-")


@scenario("lib_prefill_chunk")
def _(env):
    from socialr1_jax import sample

    m = _with_model(env)
    return ("`sample(..., prefill_chunk=0)`",
            _lib_error(lambda: sample(m, [[1, 2]], max_new_tokens=4, prefill_chunk=0),
                       "prefill_chunk=0"), "-")


@scenario("lib_load_nan")
def _(env):
    from socialr1_jax import load_model

    import jax
    from flax import nnx

    msg = _lib_error(lambda: load_model(env.nan_ckpt), Env.NAN_TENSOR, "NaN at [3, 5]")
    m = load_model(env.nan_ckpt, allow_nonfinite=True)  # the debugging escape still loads it
    assert sum(int(np.isnan(np.asarray(x)).sum()) for x in jax.tree.leaves(nnx.state(m))) == 1
    return "`load_model` of a checkpoint with a NaN weight", env.norm(msg), "-"


@scenario("gen_out_readonly", slow=True)
def _(env):
    mnt = env.fresh("gen_ro")
    p, files = in_tmpfs(env, mnt, "64k", "true",
                        [PY, "-m", GEN, "--model", env.nan_hf, "--prompt", "hi", "--out",
                         mnt + "/out.jsonl"], readonly=True)
    line = error_line(env, p, "--out", "Read-only file system")
    assert "NaN" not in line and files == {}
    return ("`generate --out` on a read-only filesystem",
            f"exit 2, before the model loads: `{line}`", "nothing sampled to be lost")


@scenario("gen_out_full", slow=True)
def _(env):
    mnt = env.fresh("gen_full")
    p, files = in_tmpfs(env, mnt, "16k", f"dd if=/dev/zero of='{mnt}/fill' bs=1k count=64 "
                        "2>/dev/null || true",
                        [PY, "-m", GEN, "--model", env.hf, "--prompt", "Where is the ball?",
                         "--temperature", "0", "--max-new-tokens", "6", "--num-samples", "2",
                         "--out", mnt + "/out.jsonl"])
    line = error_line(env, p, "--out", "No space left on device", "stdout")
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 2 and all(len(r["completion_ids"]) == 6 for r in rows), p.stdout
    assert set(files) == {"fill"}  # no partial out.jsonl
    return ("`generate --out` on a filesystem that fills up while sampling",
            f"exit 2: `{line}`", "the completions, as JSONL on stdout")
