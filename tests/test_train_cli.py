"""`python -m socialr1_jax.train` refuses bad input with ONE `error:` line and exit code 2, before
anything is compiled or written (the commands run with JAX_LOG_COMPILES=1: a compilation would
add lines to stderr)."""

import os
import socket
import subprocess
import sys

from tests.train_args import TOY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "unknown key": (["optim.lrr=1e-6"],
                    "unknown config key optim.lrr (did you mean optim.lr?)"),
    "unknown section": (["rollot.temperature=0.5"],
                        "unknown config key rollot (did you mean rollout?)"),
    "wrong type": (["run.steps=ten"], "run.steps: expected an integer, got 'ten'"),
    "negative steps": (["run.steps=-5"], "run.steps=-5 must be >= 1"),
    "log_every 0": (["run.log_every=0"], "run.log_every=0 must be >= 1"),
    "mesh vs devices": (["mesh.data=3", "mesh.fsdp=1"],
                        "mesh data=3 x fsdp=1 x tensor=1 = 3 devices, but 8 are available"),
    "used run dir": (["run.out_dir={used}"], "already holds a run; continue it with run.resume=true"),
    "resume without run dir": (["run.resume=true"],
                               "run.resume=true needs the run directory to continue"),
    "resume of nothing": (["run.resume=true", "run.out_dir={tmp}/nothing"],
                          "run.resume=true but run.out_dir={tmp}/nothing does not exist"),
    "random 4B": (["model.preset=qwen3-4b"], "model.path is required"),
    "missing model.path": (["model.path={tmp}/no-such-model"],
                           "model.path={tmp}/no-such-model does not exist"),
    "missing config file": (["--config", "{tmp}/nope.yaml"], "config file {tmp}/nope.yaml does not exist"),
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad value": (["rollout.top_p=1.5"], "rollout.top_p=1.5 must be in (0, 1]"),
    "bad multi-host env": (["--process-id", "1"], "partial multi-host configuration"),
    "missing eval data": (["eval.every=5", "eval.data={tmp}/held.jsonl"], "{tmp}/held.jsonl"),
    "eval without tokenizer": (["eval.every=5", "eval.data={data}"], "needs a tokenizer"),
    "social-r1 without tokenizer": (["run.task=social-r1", "data.benchmark=mcq",
                                     "data.path={data}"], "model.tokenizer is required"),
    "warm start without data": (["sft.steps=5"], "sft.steps > 0 needs sft.data.path"),
    "warm start data missing": (["sft.steps=5", "sft.data.path={tmp}/pairs.jsonl"],
                                "sft.data.path={tmp}/pairs.jsonl: no such file"),
    "missing column": (["run.task=social-r1", "data.benchmark=mcq", "data.path={nogold}"],
                       "gold"),
    "judge unreachable": (["run.task=social-r1", "data.benchmark=mcq", "data.path={data}",
                           "reward.struct_judge.kind=http", "reward.struct_judge.model=judge",
                           "reward.struct_judge.base_url=http://127.0.0.1:{port}",
                           "reward.struct_judge.fallback=null", "reward.struct_judge.max_retries=0",
                           "reward.struct_judge.timeout_s=5"],
                          "struct judge at http://127.0.0.1:{port}"),
    "unknown reward function": (["run.task=social-r1", "data.benchmark=mcq", "data.path={data}",
                                 "reward.functions=[nosuchmodule:fn]"], "nosuchmodule"),
}


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path):
    data = tmp_path / "mcq.jsonl"
    data.write_text('{"id": "1", "story": "s", "question": "q", "options": ["a", "b"], '
                    '"gold": "A"}\n')
    nogold = tmp_path / "nogold.jsonl"
    nogold.write_text('{"id": "1", "story": "s", "question": "q", "options": ["a", "b"]}\n')
    port = _closed_port()
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIALR1_")}
    env.update(JAX_LOG_COMPILES="1", PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    procs = {}
    for name, (args, _) in CASES.items():
        fill = dict(tmp=tmp_path, used=used, data=data, nogold=nogold, port=port)
        args = [a.format(**fill) for a in args]
        cwd = tmp_path / name.replace(" ", "_")
        cwd.mkdir()
        procs[name] = (cwd, subprocess.Popen(
            [sys.executable, "-m", "socialr1_jax.train", *TOY, "run.progress=false", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (cwd, p) in procs.items():
        out, err = p.communicate(timeout=300)
        want = CASES[name][1].format(**fill)
        lines = err.strip().splitlines()
        assert p.returncode == 2, (name, p.returncode, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
        assert want in lines[0], (name, lines[0])
        assert os.listdir(cwd) == [], (name, os.listdir(cwd))  # nothing written (no runs/)
    assert sorted(os.listdir(used)) == ["metrics.jsonl"]
