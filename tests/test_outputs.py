"""The one rule for files a command writes (socialr1_jax.cli.output_file / atomic_write), the
provenance of benchmark results files, and small friction fixes (presets, override typos)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from socialr1_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refused(fn, *needles):
    with pytest.raises(cli.UsageError) as e:
        fn()
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    return str(e.value)


def test_output_file_rule(tmp_path):
    jsonl = cli.jsonl_with("completion")
    out = tmp_path / "o.jsonl"
    assert cli.output_file("--out", str(out), overwrite=False, ours=jsonl, kind="k") == str(out)
    out.write_text('{"completion": "x"}\n')
    _refused(lambda: cli.output_file("--out", str(out), overwrite=False, ours=jsonl, kind="k"),
             "already exists", "--overwrite")
    assert cli.output_file("--out", str(out), overwrite=True, ours=jsonl, kind="k") == str(out)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    _refused(lambda: cli.output_file("--out", str(notes), overwrite=True, ours=jsonl,
                                      kind="a JSONL file of generate's"),
             "a text file, not a JSONL file of generate's")
    _refused(lambda: cli.output_file("--out", str(tmp_path / "no" / "x"), overwrite=False,
                                      ours=jsonl, kind="k"), "does not exist")
    assert not (tmp_path / "no").exists()
    model = tmp_path / "m"
    (model / "3").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    _refused(lambda: cli.output_file("--out", str(model / "3" / "x.jsonl"), overwrite=True,
                                      ours=jsonl, kind="k"), "inside the model/checkpoint")
    _refused(lambda: cli.output_file("--out", str(notes), overwrite=True, ours=jsonl, kind="k",
                                      inputs={"--prompts-file": str(notes)}), "--prompts-file")


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with cli.atomic_write(str(out)) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]
    with cli.atomic_write(str(out)) as f:
        f.write("new")
    assert out.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]


def test_presets_any_case_with_did_you_mean():
    from socialr1_jax.model.config import preset

    assert preset("Qwen3-4B") == preset("qwen3-4b")
    with pytest.raises(ValueError, match="did you mean 'qwen3-4b'"):
        preset("qwen3_4b")


def test_override_typo_is_named_as_the_command_line():
    from socialr1_jax.jobs.train_config import load_train_config
    from socialr1_jax.yaml_config import ConfigError

    with pytest.raises(ConfigError, match=r"^command-line grpo\.lrr=3: unknown config key"):
        load_train_config(os.path.join(ROOT, "configs", "toy.yaml"), ["grpo.lrr=3"])
    with pytest.raises(ConfigError, match=r"^command-line grpo\.group_size=x: "):
        load_train_config(os.path.join(ROOT, "configs", "toy.yaml"), ["grpo.group_size=x"])


def test_mcq_rows_count_from_one_and_ids_are_unique(tmp_path):
    from socialr1_jax.social.benchmarks import load_benchmark
    from socialr1_jax.social.data import DataError

    rows = [{"id": f"q{i}", "story": "s", "question": "q", "options": ["a", "b"], "gold": "A"}
            for i in range(3)]
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(dict(r, gold=None if i == 1 else "A")) + "\n"
                         for i, r in enumerate(rows)))
    with pytest.raises(DataError, match="row 2: no gold"):
        load_benchmark("mcq", str(p))
    rows[2]["id"] = "q0"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"rows 1 and 3 have the same id 'q0'"):
        load_benchmark("mcq", str(p))


def test_results_files_record_commit_date_and_load(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from bench_common import write_results
    finally:
        sys.path.pop(0)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    data = json.load(open(write_results(str(tmp_path / "r.json"), {"x": 1})))
    assert data["x"] == 1 and data["provenance"]["commit"].startswith(head)
    assert len(data["provenance"]["load_avg"]) == 3 and data["provenance"]["date"][:2] == "20"
    first = open(write_results(str(tmp_path / "r.md"), "| a |\n")).readline()
    assert first.startswith(f"Commit {head}") and "load average" in first


def test_every_results_file_names_its_commit_date_and_load():
    """Each file under benchmarks/results says which commit and day it is from and the load
    average (or that it was not recorded), as the README says of them."""
    import re

    results = os.path.join(ROOT, "benchmarks", "results")
    checks = {"commit": re.compile(r"commit[^A-Za-z0-9]{1,6}[0-9a-f]{7}", re.I),
              "date": re.compile(r"20\d\d-\d\d-\d\d"), "load average": re.compile(r"load", re.I)}
    missing = {name: [what for what, rx in checks.items()
                      if not rx.search(open(os.path.join(results, name)).read())]
               for name in sorted(os.listdir(results))}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"results files without their provenance: {missing}"
