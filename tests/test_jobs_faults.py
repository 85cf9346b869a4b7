"""The training jobs lose no data and answer a user's mistake with one line (issue 24, job side):
folders a run would clobber are refused, stop signals during the warm start save it, the printed
resume hint works as printed, and a damaged newest checkpoint falls back to the one before."""

import os
import shlex
import signal

import pytest

from socialr1_jax import cli
from socialr1_jax.jobs import run_dir, sft
from socialr1_jax.jobs import train as train_mod
from socialr1_jax.yaml_config import ConfigError
from tests.train_args import TOY

FAST = ["run.progress=false", "run.steps=3", "rollout.prompts_per_step=8",
        "rollout.max_new_tokens=4"]


def _cfg(*overrides):
    return train_mod.parse_args(TOY + ["run.progress=false", *overrides])


def test_a_folder_that_is_not_a_run_but_holds_its_files_is_refused(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(ConfigError, match="is not a run directory but holds samples.jsonl"):
        train_mod.prepare(_cfg(f"run.out_dir={tmp_path}"))
    assert (tmp_path / "samples.jsonl").read_text() == '{"mine": 1}\n'


def test_an_uncreatable_run_directory_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = cli.run(train_mod.main, TOY + [f"run.out_dir={blocker}/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == f"error: run.out_dir={blocker}/run: cannot be created ({blocker} is a file)"


def test_batch_that_does_not_split_names_the_keys_the_user_set(capsys):
    code = cli.run(train_mod.main, TOY + ["rollout.prompts_per_step=3", "grpo.group_size=3",
                                          "run.out_dir="])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: rollout.prompts_per_step=3 x grpo.group_size=3 = 9 "
                             "sequences per update is not a multiple of the mesh's 8 batch")
    assert "micro_batch_size" not in err[0]


def test_a_tensor_size_that_does_not_divide_the_heads_is_one_error_line(capsys):
    code = cli.run(train_mod.main, TOY + ["mesh.tensor=8", "run.out_dir="])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: mesh.tensor=8: mesh tensor=8 does not divide num_heads=")


def test_sft_refuses_a_used_folder_and_the_input_model_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    used = tmp_path / "used"
    used.mkdir()
    (used / "3").mkdir()
    base = ["sft.steps=2", "sft.data.path=tomi", "model.tokenizer=demo"]
    for out, match in [(used, "is not empty"), (model, "is, holds or lies in the input "
                                                       "model.path"),
                       (model / "sub", "is, holds or lies in the input model.path")]:
        cfg = sft.load_sft_config(None, base + [f"model.path={model}", f"run.out_dir={out}"])
        with pytest.raises(cli.UsageError, match=match):
            sft.check_out_dir(cfg)
    assert sorted(os.listdir(model)) == ["config.json"]


def test_the_grpo_job_refuses_its_input_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is, holds or lies in the input model.path"):
        run_dir.check_outside_inputs(str(tmp_path / "run"), {"model.path": str(tmp_path)})


def _hint(lines):
    hint = [ln for ln in lines if ln.startswith("resume with: ")]
    assert len(hint) == 1, lines
    words = shlex.split(hint[0][len("resume with: "):])
    assert words[:3] == ["python", "-m", "socialr1_jax.train"]
    return words[3:]


@pytest.mark.slow
def test_sigterm_hint_resumes_as_printed_over_a_damaged_newest_checkpoint(tmp_path, capsys):
    """A --config run stopped by SIGTERM prints a hint; its newest checkpoint is then cut short
    on disk; the hint, run as printed, resumes from the step before with a warning naming the
    damaged step and ends the run."""
    out = tmp_path / "run"
    cfg, _ = train_mod.parse_command(TOY + FAST + [f"run.out_dir={out}", "run.save_every=1"])
    lines = []

    def stop_at_1(step, state, m):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train_mod.train(cfg, log=lines.append, on_step=stop_at_1)
    assert res.exit_code == 143 and res.status == "stopped by SIGTERM after 2 steps"
    argv = _hint(lines)
    assert argv[:2] == ["--config", str(out / "config.yaml")]
    params = out / "checkpoints" / "2" / "params"
    for d, _, names in os.walk(params):
        for n in names:
            with open(os.path.join(d, n), "r+b") as f:
                f.truncate(0)
    capsys.readouterr()
    assert cli.run(train_mod.main, argv) == 0
    printed = capsys.readouterr().out
    assert "warning: checkpoint step 2 of " in printed and "damaged" in printed, printed
    assert f"resumed {out} at step 1" in printed
    assert sorted(int(s) for s in os.listdir(out / "checkpoints") if s.isdigit())[-1] == 3


@pytest.mark.slow
def test_sigterm_in_the_warm_start_saves_it_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    warm = ["model.tokenizer=demo", "model.vocab_size=512", "sft.steps=3", "sft.batch_size=8",
            "sft.data.path=tomi", "sft.data.rows=16", "sft.log_every=1",
            "sft.max_prompt_len=256", "sft.max_response_len=256", "run.steps=1"]
    cfg = train_mod.parse_args(TOY + FAST + warm + [f"run.out_dir={out}"])
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("sft step    0"):  # the first update is done
            os.kill(os.getpid(), signal.SIGTERM)

    res = train_mod.train(cfg, log=log)
    assert res.exit_code == 143, lines
    assert os.listdir(out / "warm_start") and (out / "config.yaml").is_file()
    saved = [int(s) for s in os.listdir(out / "warm_start") if s.isdigit()]
    assert saved == [1], saved
    argv = _hint(lines)
    cfg2, _ = train_mod.parse_command(argv)
    lines.clear()
    res2 = train_mod.train(cfg2, log=lines.append)
    assert res2.exit_code == 0 and len(res2.history) == 1, lines
    assert any("holds 1 of 3 steps (stopped); running it again" in ln for ln in lines), lines


def test_a_stop_during_the_first_evaluation_runs_no_step():
    """SIGTERM while the harness evaluates before the first step (the demo's evaluation before
    its warm start) ends the job before any update, not after one."""
    from socialr1_jax.jobs.harness import Job, Run
    from socialr1_jax.jobs.preemption import StopSignals

    ran = []

    def evaluate(done, state):
        os.kill(os.getpid(), signal.SIGTERM)
        return {"eval/accuracy": 0.0}

    with StopSignals() as stop:
        run = Run(None, "", None, command="train", stop=stop, console={"progress": False})
        run.open(5)
        out = run.loop(Job(5, lambda k, st: ran.append(k) or (st, {}), lambda d, st: {},
                           evaluate=evaluate), None)
        run.close()
    assert ran == [] and out.done == 0 and out.exit_code == 143, (ran, out)
    assert out.status == "stopped by SIGTERM after 0 steps"


def test_train_rm_reads_its_nan_skip_stop_from_the_config():
    from socialr1_jax.jobs.rm_data import load_rm_config

    base = ["model.path=m", "data.train=t.jsonl"]
    assert load_rm_config(None, base + ["run.max_consecutive_skips=5"]).run \
        .max_consecutive_skips == 5
    with pytest.raises(ValueError, match="run.max_consecutive_skips"):
        load_rm_config(None, base + ["run.max_consecutive_skips=0"])


def _readme_line(command: str) -> list[str]:
    """The README's command line for `python -m socialr1_jax.COMMAND` (continuations joined,
    comment dropped), as words after the module name."""
    from tests.train_args import REPO

    text = open(os.path.join(REPO, "README.md")).read().replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if ln.startswith(f"python -m socialr1_jax.{command} ")]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].split("  #")[0])
    return [os.path.join(REPO, w) if w.startswith("configs/") else w for w in words[3:]]


def test_sft_help_names_keys_that_exist():
    import re

    keys = set(re.findall(r"`(sft\.[a-z_.]+)=", sft.__doc__))
    assert "sft.data.chat" in keys and "data.chat" not in sft.__doc__.replace("sft.data.chat", "")
    base = ["model.path=m", "sft.steps=1", "sft.data.path=tomi", "run.out_dir=o"]
    sft.load_sft_config(None, base + [f"{k}=true" for k in keys])  # every key it names exists


@pytest.mark.slow
def test_readme_sft_and_train_rm_lines_run_as_written(tmp_path, monkeypatch, capsys):
    """README's `sft` and `train_rm` lines, CKPT a tiny checkpoint, with only the step count
    (and the reward model's batch, for 16 pairs) cut down."""
    import json

    from socialr1_jax.jobs import train_rm
    from tests.hf_fixtures import make_tiny_chat_checkpoint

    monkeypatch.chdir(tmp_path)
    make_tiny_chat_checkpoint(str(tmp_path / "ckpt"), seed=1)
    with open("pairs.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"Where is ball {i}?", "response": "In the box."}) + "\n")
    with open("rm_pairs.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"story": f"Ball {i} is in the box.", "question": "Where?",
                                "chosen": "In the box.", "rejected": "No."}) + "\n")
    ckpt = lambda words: [w.replace("=CKPT", f"={tmp_path}/ckpt") for w in words]  # noqa: E731
    words = _readme_line("sft")
    steps = [i for i, w in enumerate(words) if w.startswith("sft.steps=")]
    assert steps, f"README's sft line names no sft.steps (it defaults to 0): {words}"
    words[steps[0]] = "sft.steps=1"
    assert cli.run(sft.main, ckpt(words)) == 0, capsys.readouterr().err
    assert os.path.isdir("ckpt_sft/checkpoints/1")
    assert cli.run(train_rm.main, ckpt(_readme_line("train_rm")) + [
        "run.steps=1", "run.batch_size=8", "run.micro_batch_size=8"]) == 0, \
        capsys.readouterr().err
    assert os.path.isdir("runs/rm/checkpoints/1")
