"""Fault scenarios of the files commands write (the one rule of `cli.output_file` and
`cli.atomic_write`), evaluate's stop and resume, and the friction items of issue 24 (run by
tests/test_faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

from tests.fault_tools import (EVAL, GEN, O2H, PLAN, ROOT, PY, digest, env_vars, error_line,
                               exit2, run, run_main, scenario)


def _mcq(path: str, rows: int, dup: int | None = None) -> str:
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"q{0 if dup is not None and i == dup else i}",
                                "story": f"Sally puts ball {i} in the box.",
                                "question": "Where will Sally look?",
                                "options": ["box", "basket"], "gold": "A"}) + "\n")
    return path


@scenario("gen_out_weights_overwrite")
def _(env):
    d = env.fresh("gen_weights")
    victim = os.path.join(d, "model.safetensors")
    shutil.copy(os.path.join(env.hf, "model.safetensors"), victim)
    before = digest(victim)
    r = run_main(GEN, "--model", env.nan_hf, "--prompt", "hi", "--out", victim, "--overwrite")
    line = error_line(env, r, "--out", "safetensors weights file", "--overwrite")
    assert digest(victim) == before and os.listdir(d) == ["model.safetensors"]
    return ("`generate --out model.safetensors --overwrite` (a weights file)",
            f"exit 2, before the model loads: `{line}`", "weights file byte for byte")


@scenario("gen_out_in_model_dir")
def _(env):
    d = env.fresh("gen_in_model")
    shutil.copytree(env.hf, d + "/m")
    before = digest(d + "/m")
    r = run_main(GEN, "--model", d + "/m", "--prompt", "hi", "--out", d + "/m/out.jsonl")
    line = error_line(env, r, "--out", "inside the model/checkpoint folder")
    assert digest(d + "/m") == before
    return ("`generate --out` inside the model's own folder", f"exit 2: `{line}`",
            "model folder byte for byte")


@scenario("gen_out_exists")
def _(env):
    d = env.fresh("gen_exists")
    out = os.path.join(d, "old.jsonl")
    with open(out, "w") as f:
        f.write('{"prompt_index": 0, "completion": "old"}\n')
    r = run_main(GEN, "--model", env.nan_hf, "--prompt", "hi", "--out", out)
    line = error_line(env, r, "--out", "already exists", "--overwrite")
    assert open(out).read() == '{"prompt_index": 0, "completion": "old"}\n'
    return "`generate --out` an existing file, no `--overwrite`", f"exit 2: `{line}`", "old file"


@scenario("gen_out_is_prompts_file")
def _(env):
    d = env.fresh("gen_same")
    p = os.path.join(d, "qs.jsonl")
    with open(p, "w") as f:
        f.write('{"prompt": "hi"}\n')
    r = run_main(GEN, "--model", env.nan_hf, "--prompts-file", p, "--out", p, "--overwrite")
    line = error_line(env, r, "--out", "--prompts-file")
    assert open(p).read() == '{"prompt": "hi"}\n'
    return "`generate --prompts-file qs.jsonl --out qs.jsonl`", f"exit 2: `{line}`", "prompts file"


@scenario("eval_out_exists")
def _(env):
    d = env.fresh("eval_exists")
    data = _mcq(os.path.join(d, "q.jsonl"), 2)
    preds = os.path.join(d, "r.predictions.jsonl")
    with open(preds, "w") as f:
        f.write("my notes\n")
    r = run_main(EVAL, "--model", env.nan_hf, "--benchmark", "mcq", "--data", data, "--out",
                 os.path.join(d, "r.json"), "--overwrite")
    line = error_line(env, r, "--out", "r.predictions.jsonl", "a text file")
    assert open(preds).read() == "my notes\n" and not os.path.exists(d + "/r.json")
    return ("`evaluate --out r.json --overwrite` beside a `r.predictions.jsonl` not of ours",
            f"exit 2, before the model loads: `{line}`", "the sibling file")


@scenario("plan_out_no_parent")
def _(env):
    out = env.path("no_such_root") + "/plan"
    line = exit2(env, run_main(PLAN, "--preset", "tiny", "--out", out), "--out",
                 "does not exist")
    assert not os.path.exists(env.path("no_such_root"))
    return "`memory_plan --out /nonexistent/plan`", line, "no folder created"


@scenario("plan_preset_case")
def _(env):
    line = exit2(env, run_main(PLAN, "--preset", "qwen3_4b"), "--preset", "did you mean "
                 "'qwen3-4b'")
    return "`memory_plan --preset qwen3_4b` (`Qwen3-4B` is accepted as written)", line, "-"


@scenario("eval_csv_bad_line")
def _(env):
    d = env.fresh("eval_csv")
    p = os.path.join(d, "q.csv")
    with open(p, "w") as f:
        f.write("id,story,question,options,gold\n1,s,q,a,A\n2,s,q,a,A,extra\n")
    line = exit2(env, run_main(EVAL, "--model", env.nan_hf, "--benchmark", "mcq", "--data", p),
                 "q.csv", "line 3")
    return "`evaluate --data` a CSV with a malformed line", line, "-"


@scenario("eval_duplicate_ids")
def _(env):
    d = env.fresh("eval_dup")
    data = _mcq(os.path.join(d, "q.jsonl"), 3, dup=2)
    line = exit2(env, run_main(EVAL, "--model", env.nan_hf, "--benchmark", "mcq", "--data", data),
                 "rows 1 and 3", "'q0'")
    return "`evaluate --data` with two rows of one id", line, "-"


@scenario("eval_max_new_tokens")
def _(env):
    d = env.fresh("eval_mnt")
    data = _mcq(os.path.join(d, "q.jsonl"), 2)
    with open(os.path.join(env.hf, "config.json")) as f:
        n = json.load(f)["max_position_embeddings"] - 8
    line = exit2(env, run_main(EVAL, "--model", env.nan_hf, "--benchmark", "mcq", "--data", data,
                               "--max-new-tokens", n), f"--max-new-tokens {n}")
    assert "NaN" not in line
    return (f"`evaluate --max-new-tokens {n}` (8 positions left for the prompt)", line, "-")


@scenario("gen_chat_no_template")
def _(env):
    line = exit2(env, run_main(GEN, "--model", env.nan_hf, "--prompt", "hi", "--chat"),
                 "--chat", "no chat template", "--chat-format")
    return "`generate --chat` on a tokenizer without a chat template", line, "-"


@scenario("config_override_typo")
def _(env):
    from socialr1_jax.jobs.train_config import load_train_config
    from socialr1_jax.yaml_config import ConfigError

    try:
        load_train_config(os.path.join(ROOT, "configs", "toy.yaml"), ["grpo.lrr=3"])
    except ConfigError as e:
        msg = str(e)
    assert msg.startswith("command-line grpo.lrr=3: unknown config key grpo.lrr"), msg
    return ("`--config configs/toy.yaml grpo.lrr=3` (a typo on the command line)",
            f"exit 2: `error: {msg.split(';')[0]}; ...`", "-")


def _damaged(env, name: str, cut) -> str:
    d = env.fresh(name)
    shutil.copytree(env.ckpt, d + "/ck")
    chunk = os.path.join(d, "ck", "0", "params", "layers.up_lfd", "1.0.0")
    cut(chunk)
    return d


@scenario("o2h_chunk_missing")
def _(env):
    d = _damaged(env, "o2h_missing", os.remove)
    line = exit2(env, run(O2H, "--ckpt", d + "/ck", "--out", d + "/hf", "--no-progress"), "layers.up_lfd",
                 "1.0.0 is missing", "ck/0")
    assert sorted(os.listdir(d)) == ["ck"]
    return "`orbax_to_hf` of a checkpoint with a chunk file deleted", line, "no partial --out"


@scenario("gen_chunk_truncated")
def _(env):
    d = _damaged(env, "gen_trunc", lambda p: os.truncate(p, 10))
    line = exit2(env, run(GEN, "--model", d + "/ck", "--prompt", "hi"), "layers.up_lfd",
                 "1.0.0 is truncated")
    return "`generate --model` a checkpoint with a truncated chunk file", line, "-"


def _eval_cmd(env, data, out, *extra):
    return [PY, "-m", EVAL, "--model", env.hf, "--benchmark", "mcq", "--data", data,
            "--max-new-tokens", "6", "--batch-size", "1", "--out", out, *extra]


def _report(path):
    rep = json.load(open(path))
    preds = [json.loads(ln) for ln in open(rep["predictions_file"])]
    keep = ("accuracy", "unparsable", "format_ok")
    return ({k: rep["overall"][k] for k in keep}, rep["generated_tokens"],
            [(p["id"], p["completions"]) for p in preds])


@scenario("eval_sigterm_resume", slow=True)
def _(env):
    d = env.fresh("eval_resume")
    data = _mcq(os.path.join(d, "q.jsonl"), 6)
    full = subprocess.run(_eval_cmd(env, data, d + "/full.json"), cwd=ROOT, env=env_vars(),
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    partial = d + "/cut.predictions.jsonl.partial"
    p = subprocess.Popen(_eval_cmd(env, data, d + "/cut.json"), cwd=ROOT, env=env_vars(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not (os.path.exists(partial)
                                    and len(open(partial).read().splitlines()) >= 3):
        time.sleep(0.01)  # header + two questions written: stop it mid-run
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "resume with: python -m socialr1_jax.evaluate" in err, err
    hint = err.split("resume with: ")[1].strip().split()
    assert hint[-1] == "--resume" and not os.path.exists(d + "/cut.json")
    again = subprocess.run([PY] + hint[1:], cwd=ROOT, env=env_vars(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _report(d + "/cut.json") == _report(d + "/full.json")
    assert not os.path.exists(partial)
    return ("SIGTERM during `evaluate --out`, then the printed `--resume` command",
            "exit 143 with `evaluate: SIGTERM after N of 6 question(s); ... resume with: ...`; "
            "the resume samples only the rest", "report and predictions = an uninterrupted run's")
