"""Fault scenarios of the training jobs' run directories and configs (`train`, `sft`,
`train_rm`): folders a run would clobber, folders that cannot be made, a mesh the model does not
fit, and the column mapping of a training config (run by tests/test_faults.py). The jobs' stop
signals, resume hint and damaged-checkpoint fall-back run end to end in tests/test_jobs_faults.py.
"""

from __future__ import annotations

import json
import os

from tests.fault_tools import ROOT, digest, error_line, exit2, run, run_main, scenario

TRAIN, SFT, RM = "socialr1_jax.train", "socialr1_jax.sft", "socialr1_jax.train_rm"
TOY = ["--config", os.path.join(ROOT, "configs", "toy.yaml")]
UNMAKEABLE = "/proc/socialr1-run"  # /proc takes no new folders, even from root


def _sft_pairs(env) -> str:
    p = env.path("sft_pairs.jsonl")
    with open(p, "w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"Where is ball {i}?", "response": "In the box."}) + "\n")
    return p


def _rm_pairs(env) -> str:
    p = env.path("rm_pairs.jsonl")
    with open(p, "w") as f:
        for i in range(16):  # 15 to train on, one held out
            f.write(json.dumps({"story": f"Sally puts ball {i} in the box.", "question": "Where "
                                "will Sally look?", "chosen": "In the box.", "rejected": "No."})
                    + "\n")
    return p


def _sft(env, *args):
    return run_main(SFT, f"model.path={env.hf}", f"sft.data.path={_sft_pairs(env)}",
                    "sft.steps=1", *args)


def _rm(env, *args):
    return run_main(RM, f"model.path={env.hf}", f"data.train={_rm_pairs(env)}", "run.batch_size=8",
                    "run.micro_batch_size=8", *args)


@scenario("job_out_dir_unmakeable")
def _(env):
    lines = [error_line(env, r, f"run.out_dir={UNMAKEABLE}", "cannot be created")
             for r in (run_main(TRAIN, *TOY, f"run.out_dir={UNMAKEABLE}"),
                       _sft(env, f"run.out_dir={UNMAKEABLE}"), _rm(env, f"run.out_dir={UNMAKEABLE}"))]
    assert len(set(lines)) == 1, lines
    return (f"`train`, `sft`, `train_rm` with `run.out_dir={UNMAKEABLE}` (a folder that cannot be "
            "made)", f"exit 2, each: `{lines[0]}`", "-")


@scenario("job_mesh_tensor")
def _(env):
    d = env.fresh("job_mesh")
    r = run(TRAIN, *TOY, "mesh.tensor=8", f"run.out_dir={d}/run")  # a process of its own: at
    # its exit nothing may print more (Orbax's threads did, when the run folder came first)
    line = error_line(env, r, "mesh.tensor=8", "num_heads=4")
    assert not os.path.exists(d + "/run")
    for other in (_sft(env, f"run.out_dir={d}/sft", "mesh.tensor=8"),
                  _rm(env, f"run.out_dir={d}/rm", "mesh.tensor=8")):
        assert error_line(env, other, "mesh.tensor=8") == line
    assert os.listdir(d) == []
    return ("`train`, `sft`, `train_rm` with `mesh.tensor=8` (the model has 4 heads)",
            f"exit 2, each, before any folder is made: `{line}`", "no run folder created")


@scenario("job_failed_start_folder")
def _(env):
    from socialr1_jax.jobs import run_dir
    from socialr1_jax.jobs import train as train_mod

    d = env.fresh("job_failed_start")
    os.makedirs(d + "/run/checkpoints")  # what a run that failed as it started left
    cfg = train_mod.parse_args(TOY + [f"run.out_dir={d}/run"])
    assert run_dir.check_run_dir(cfg, d + "/run") is None
    return ("`train` into a folder a failed start left (an empty `checkpoints/`)",
            "accepted as a new run (it used to be refused as a run that cannot resume)", "-")


@scenario("train_not_a_run_folder")
def _(env):
    d = env.fresh("job_not_run")
    with open(d + "/samples.jsonl", "w") as f:
        f.write('{"mine": 1}\n')
    line = exit2(env, run_main(TRAIN, *TOY, f"run.out_dir={d}"), "samples.jsonl",
                 "not a run directory")
    assert open(d + "/samples.jsonl").read() == '{"mine": 1}\n'
    return ("`train run.out_dir=` a folder that is not a run but holds `samples.jsonl`", line,
            "the file")


@scenario("train_batch_split")
def _(env):
    line = exit2(env, run_main(TRAIN, *TOY, "rollout.prompts_per_step=3", "grpo.group_size=3",
                               "run.out_dir="), "rollout.prompts_per_step=3", "grpo.group_size=3")
    assert "micro_batch_size" not in line
    return "`train rollout.prompts_per_step=3 grpo.group_size=3` on 8 devices", line, "-"


@scenario("sft_used_folder")
def _(env):
    d = env.fresh("sft_used")
    os.makedirs(d + "/out/3")
    line = exit2(env, _sft(env, f"run.out_dir={d}/out"), "run.out_dir", "is not empty")
    return "`sft run.out_dir=` a folder that holds a checkpoint", line, "the old checkpoint"


@scenario("sft_into_model")
def _(env):
    before = digest(env.hf)
    line = exit2(env, _sft(env, f"run.out_dir={env.hf}/sft"), "run.out_dir", "model.path")
    assert digest(env.hf) == before and not os.path.exists(env.hf + "/sft")
    return "`sft run.out_dir=` inside its own `model.path`", line, "the model folder"


@scenario("train_rm_used_folder")
def _(env):
    d = env.fresh("rm_used")
    os.makedirs(d + "/run/checkpoints/2")
    line = exit2(env, _rm(env, f"run.out_dir={d}/run"), "already holds a run", "run.resume=true")
    return "`train_rm run.out_dir=` a run folder, no `run.resume=true`", line, "the old run"


@scenario("train_columns_options")
def _(env):
    from socialr1_jax.jobs import train as train_mod
    from socialr1_jax.social.data import column_map

    cfg = train_mod.parse_args(TOY + ["data.columns=[story=S,options=A,B,C,gold=G]"])
    cols = column_map(cfg.data.columns)
    assert cols.options == ("A", "B", "C") and cols.gold == "G", cols
    return ("`data.columns=[story=S,options=A,B,C,gold=G]` (the options' commas unquoted)",
            "read as options A, B, C (it was refused: `column mapping 'B' is not of the form "
            "key=column`)", "-")


@scenario("train_rm_export_hf")
def _(env):
    d = env.fresh("rm_export")
    lines = [exit2(env, _rm(env, f"run.out_dir={d}/run", f"run.export_hf={out}"), "run.export_hf",
                   why)
             for out, why in ((f"{d}/no_such/hf", "does not exist"),
                              (f"{env.hf}/hf", "inside the model/checkpoint folder"))]
    assert os.listdir(d) == [] and not os.path.exists(env.hf + "/hf")
    return ("`train_rm run.export_hf=` under a missing folder, or inside `model.path`",
            " / ".join(lines) + " (both before training; the export used to fail after it)",
            "no run made, model folder unchanged")


@scenario("sft_data_missing")
def _(env):
    missing = env.path("no_pairs.jsonl")
    line = exit2(env, run_main(SFT, f"model.path={env.hf}", f"sft.data.path={missing}",
                               "sft.steps=1", f"run.out_dir={env.path('sft_nodata')}"),
                 "sft.data.path=", "no such file")
    return "`sft sft.data.path=` a file that does not exist", line, "-"


@scenario("train_csv_columns")
def _(env):
    d = env.fresh("train_cols")
    with open(d + "/mine.csv", "w") as f:
        f.write("Story,Q,Ans\ns,q,A\n")
    line = exit2(env, run_main(TRAIN, *TOY, "run.task=social-r1", "data.benchmark=mcq",
                               f"data.path={d}/mine.csv"), "mine.csv", "Story", "data.columns")
    return "`train data.benchmark=mcq data.path=` a CSV of other column names", line, "-"
