"""Fault scenarios of the converters: --out against the input and what is there, NaN weights,
bad inputs, kill -9 at random points, a crash after each step of the --overwrite swap, stale
staging folders, a read-only or full output filesystem (run by tests/test_faults.py)."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess

from tests.fault_tools import (CRASH_DRIVER, H2O, O2H, PY, ROOT, ckpt_tensors, copy_with_config,
                               digest, env_vars, exit2, hf_tensors, in_tmpfs, kill_at_random_point,
                               removal_notes, run, scenario, sh_copy, siblings, staging_window)

KILLS = 5  # random kill points per conversion direction
NAN_NAMES = "tensor model.layers.1.mlp.up_proj.weight has a NaN at [3, 5]"


def _refused_conversion(env, module, args, guarded: list[str], *names: str) -> str:
    """Run a conversion that must be refused (with an error naming `names`); the `guarded`
    paths must be byte for byte as before."""
    before = {p: digest(p) for p in guarded}
    line = exit2(env, run(module, *args, "--no-progress"), *names)
    for p in guarded:
        assert digest(p) == before[p], p
    return line


@scenario("out_is_input")
def _(env):
    line = _refused_conversion(env, H2O, ["--hf-dir", env.hf, "--out", env.hf, "--overwrite"],
                               [env.hf], "--out", "is the input")
    return "`hf_to_orbax --out` = `--hf-dir`, with `--overwrite`", line, "input unchanged"


@scenario("out_inside_input")
def _(env):
    line = _refused_conversion(env, H2O, ["--hf-dir", env.hf, "--out", env.hf + "/sub"], [env.hf],
                               "--out", "inside the input")
    assert not os.path.exists(env.hf + "/sub")
    return "`hf_to_orbax --out` inside `--hf-dir`", line, "input unchanged, nothing created"


@scenario("out_contains_input")
def _(env):
    d = env.fresh("parent")
    shutil.copytree(env.hf, os.path.join(d, "hf"))
    line = _refused_conversion(env, H2O, ["--hf-dir", os.path.join(d, "hf"), "--out", d,
                                          "--overwrite"], [d], "--out", "contains the input")
    return "`hf_to_orbax --out` a parent of `--hf-dir`, with `--overwrite`", line, "input unchanged"


@scenario("export_out_is_ckpt")
def _(env):
    line = _refused_conversion(env, O2H, ["--ckpt", env.ckpt, "--out", env.ckpt, "--overwrite"],
                               [env.ckpt], "--out", "is the input")
    return "`orbax_to_hf --out` = `--ckpt`, with `--overwrite`", line, "checkpoint unchanged"


@scenario("export_out_in_step")
def _(env):
    out = os.path.join(env.ckpt, "0", "hf")
    line = _refused_conversion(env, O2H, ["--ckpt", env.ckpt, "--out", out], [env.ckpt],
                               "--out", "inside the input")
    return "`orbax_to_hf --out` inside `--ckpt`", line, "checkpoint unchanged"


@scenario("overwrite_not_a_checkpoint")
def _(env):
    d = env.fresh("mine")
    with open(os.path.join(d, "notes.txt"), "w") as f:
        f.write("my notes")
    line = _refused_conversion(env, H2O, ["--hf-dir", env.hf, "--out", d, "--overwrite"],
                               [d, env.hf], "--out", "not a checkpoint")
    return ("`--overwrite` onto a folder that is not a checkpoint", line,
            "the folder and its files unchanged")


@scenario("exists_no_overwrite")
def _(env):
    d = env.fresh("exists")
    out = os.path.join(d, "ckpt")
    shutil.copytree(env.ckpt, out)
    line = _refused_conversion(env, H2O, ["--hf-dir", env.hf, "--out", out], [out],
                               "--out", "--overwrite")
    return "`--out` an existing checkpoint, no `--overwrite`", line, "existing checkpoint unchanged"


@scenario("overwrite_checkpoint")
def _(env):
    d = env.fresh("overwrite")
    out = os.path.join(d, "export")
    r = run(O2H, "--ckpt", env.ckpt, "--out", out, "--dtype", "bf16", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run(O2H, "--ckpt", env.ckpt, "--out", out, "--overwrite", "--no-progress")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert hf_tensors(out) == hf_tensors(env.hf) and siblings(out) == ["export"]
    return ("`--overwrite` onto an HF checkpoint", "exit 0: replaced by the new export",
            "old output kept under its name until the new one is whole (one atomic swap)")


@scenario("nan_hf_raw")
def _(env):
    d = env.fresh("nan_raw")
    line = _refused_conversion(env, H2O, ["--hf-dir", env.nan_hf, "--out", d + "/c"], [env.nan_hf],
                               NAN_NAMES)
    assert siblings(d + "/c") == []
    return "a NaN weight in the HF checkpoint (kernel-copy path)", line, "no output written"


@scenario("nan_hf_cast")
def _(env):
    d = env.fresh("nan_cast")
    line = _refused_conversion(env, H2O, ["--hf-dir", env.nan_hf, "--out", d + "/c", "--dtype",
                                          "bf16"], [env.nan_hf], NAN_NAMES)
    assert siblings(d + "/c") == []
    return "a NaN weight, converted with `--dtype bf16` (cast path)", line, "no output written"


@scenario("nan_export")
def _(env):
    d = env.fresh("nan_export")
    line = _refused_conversion(env, O2H, ["--ckpt", env.nan_ckpt, "--out", d + "/o"],
                               [env.nan_ckpt], NAN_NAMES)
    assert siblings(d + "/o") == []
    return "a NaN weight in the Orbax checkpoint (export)", line, "no output written"


@scenario("nan_allowed")
def _(env):
    d = env.fresh("nan_allowed")
    r = run(O2H, "--ckpt", env.nan_ckpt, "--out", d + "/o", "--allow-nonfinite", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert hf_tensors(d + "/o") == hf_tensors(env.nan_hf)
    return ("the same with `--allow-nonfinite` (debugging)", "exit 0: converted as it is, NaN kept",
            "-")


@scenario("missing_hf_dir")
def _(env):
    line = exit2(env, run(H2O, "--hf-dir", env.path("nowhere"), "--out", env.path("x")),
                 "--hf-dir", "no such")
    assert not os.path.exists(env.path("x"))
    return "`--hf-dir` that does not exist", line, "nothing created"


@scenario("truncated_shard")
def _(env):
    d = env.fresh("truncated")
    shutil.copytree(env.hf, d + "/hf")
    path = d + "/hf/model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    line = _refused_conversion(env, H2O, ["--hf-dir", d + "/hf", "--out", d + "/c"], [d + "/hf"],
                               "model.safetensors", "truncated")
    return "a truncated safetensors file", line, "input unchanged, no output"


@scenario("bad_config_layers")
def _(env):
    d = env.fresh("layers")
    copy_with_config(env.hf, d + "/hf", num_hidden_layers=-1)
    line = _refused_conversion(env, H2O, ["--hf-dir", d + "/hf", "--out", d + "/c"], [d + "/hf"],
                               "config.json", "num_hidden_layers=-1")
    return "`num_hidden_layers: -1` in config.json", line, "input unchanged, no output"


@scenario("bad_shard_size")
def _(env):
    d = env.fresh("shard_size")
    line = exit2(env, run(O2H, "--ckpt", env.ckpt, "--out", d + "/o", "--max-shard-size", "5XB"),
                 "--max-shard-size", "5XB")
    return "`--max-shard-size 5XB`", line, "nothing created"


@scenario("missing_step")
def _(env):
    d = env.fresh("step")
    line = exit2(env, run(O2H, "--ckpt", env.ckpt, "--out", d + "/o", "--step", "7"), "step 7")
    return "`--step 7` that does not exist", line, "nothing created"


@scenario("unknown_flag")
def _(env):
    line = exit2(env, run(H2O, "--hf-dir", env.hf, "--out", env.path("x"), "--bogus"), "--bogus")
    return "an unknown flag (`--bogus`)", line, "nothing created"


# -- kill -9, crashes, stale leftovers.

@scenario("kill_hf_to_orbax", slow=True)
def _(env):
    src = env.big_hf
    before = digest(src)
    want = hf_tensors(src)
    d = env.fresh("kill_h2o")
    out = d + "/ckpt"
    cmd = [PY, "-m", H2O, "--hf-dir", src, "--out", out, "--no-progress"]
    window = 1.1 * staging_window(cmd, out)
    shutil.rmtree(out)
    rng, midway, notes = random.Random(14), 0, 0
    for _ in range(KILLS):
        left, err = kill_at_random_point(cmd, out, window, rng)
        midway, notes = midway + left, notes + removal_notes(err)
        assert digest(src) == before
        names = siblings(out)
        assert all(n == "ckpt" or n.startswith("ckpt.tmp-") for n in names), names
        if "ckpt" in names:  # killed after the swap: it must be whole
            assert ckpt_tensors(out) == want
            shutil.rmtree(out)
    assert midway >= 2, f"only {midway} of {KILLS} kills landed before the swap"
    r = run(H2O, "--hf-dir", src, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert siblings(out) == ["ckpt"] and ckpt_tensors(out) == want
    # every folder a kill left was deleted by the next run, which said so
    assert notes + removal_notes(r.stderr) == midway
    return (f"`kill -9` at {KILLS} random points of `hf_to_orbax` (seed 14)",
            "nothing under `--out` until the checkpoint is whole; the rerun succeeds and deletes "
            "the `OUT.tmp-*` a killed run left, saying so", "input unchanged (every byte compared)")


@scenario("kill_orbax_to_hf_overwrite", slow=True)
def _(env):
    from conversion import hf_to_orbax

    d = env.fresh("kill_o2h")
    ckpt, out, old = d + "/ckpt", d + "/export", d + "/old"
    hf_to_orbax.convert(env.big_hf, ckpt, progress=False)
    r = run(O2H, "--ckpt", ckpt, "--out", old, "--dtype", "bf16", "--no-progress")
    assert r.returncode == 0, r.stderr
    old_t, new_t, ckpt_digest = hf_tensors(old), hf_tensors(env.big_hf), digest(ckpt)
    cmd = [PY, "-m", O2H, "--ckpt", ckpt, "--out", out, "--overwrite", "--no-progress",
           "--max-shard-size", "3MB"]
    shutil.copytree(old, out)
    window = 1.1 * staging_window(cmd, out)
    rng, seen, left_behind, notes = random.Random(41), [], 0, 0
    for _ in range(KILLS):
        shutil.rmtree(out)
        shutil.copytree(old, out)
        left, err = kill_at_random_point(cmd, out, window, rng)
        left_behind, notes = left_behind + left, notes + removal_notes(err)
        got = hf_tensors(out)  # OUT always exists and is one of the two, whole
        assert got in (old_t, new_t)
        seen.append("old" if got == old_t else "new")
        assert all(n == "export" or n.startswith("export.tmp-") for n in siblings(out))
        assert digest(ckpt) == ckpt_digest
    assert seen.count("old") >= 2, f"too few kills landed before the swap: {seen}"
    r = run(*cmd[2:])
    assert r.returncode == 0, r.stderr
    assert siblings(out) == ["export"] and hf_tensors(out) == new_t
    assert notes + removal_notes(r.stderr) == left_behind
    return (f"`kill -9` at {KILLS} random points of `orbax_to_hf --overwrite` (seed 41)",
            "`--out` is at every moment either the old export or the new one, whole; the rerun "
            "succeeds and deletes the `OUT.tmp-*` a killed run left, saying so", "old export intact until replaced; checkpoint unchanged")


def _crash_each_swap_step(env, name: str, no_exchange: bool):
    d = env.fresh(name)
    out, old = d + "/export", d + "/old"
    r = run(O2H, "--ckpt", env.ckpt, "--out", old, "--dtype", "bf16", "--no-progress")
    assert r.returncode == 0, r.stderr
    old_t, new_t = hf_tensors(old), hf_tensors(env.hf)
    outcomes = []
    for k in range(1, 10):
        shutil.rmtree(out, ignore_errors=True)
        for n in siblings(out):
            shutil.rmtree(os.path.join(d, n))
        shutil.copytree(old, out)
        p = subprocess.run([PY, "-c", CRASH_DRIVER, "--ckpt", env.ckpt, "--out", out,
                            "--overwrite", "--no-progress"], cwd=ROOT, capture_output=True,
                           text=True, env=env_vars(CRASH_AFTER=str(k),
                                                    NO_EXCHANGE="1" if no_exchange else ""))
        if p.returncode == 0:
            break
        assert p.returncode == 137, p.stderr
        names = siblings(out)
        if os.path.exists(out):
            got = hf_tensors(out)
            assert got in (old_t, new_t)
            outcomes.append("old" if got == old_t else "new")
            continue
        # Only the two-rename fallback may leave OUT missing: the old one waits as OUT.old-*,
        # and the next run puts it back before anything else.
        assert no_exchange, f"crash after step {k}: {out} is missing ({names})"
        olds = [n for n in names if n.startswith("export.old-")]
        assert len(olds) == 1 and hf_tensors(os.path.join(d, olds[0])) == old_t
        outcomes.append("missing, old kept as OUT.old-*")
        r = run(O2H, "--ckpt", env.ckpt, "--out", out, "--overwrite", "--no-progress")
        assert r.returncode == 0 and "note: restored" in r.stderr, r.stderr
        assert hf_tensors(out) == new_t and siblings(out) == ["export"]
    else:
        raise AssertionError("the export never completed")
    assert hf_tensors(out) == new_t and siblings(out) == ["export"]
    return outcomes


@scenario("crash_each_swap_step", slow=True)
def _(env):
    outcomes = _crash_each_swap_step(env, "crash_swap", no_exchange=False)
    assert outcomes == ["new", "new"]  # the exchange itself is the first step
    return ("a crash after each step of `--overwrite`'s swap (renameat2 RENAME_EXCHANGE)",
            f"after each of the {len(outcomes)} steps `--out` is whole: "
            f"{' / '.join(outcomes)}", "old output until the one-step swap, then the new")


@scenario("crash_each_swap_step_two_renames", slow=True)
def _(env):
    outcomes = _crash_each_swap_step(env, "crash_swap2", no_exchange=True)
    assert outcomes[0].startswith("missing") and outcomes[1:] == ["new", "new"]
    return ("the same on a filesystem without RENAME_EXCHANGE (two renames)",
            f"after each of the {len(outcomes)} steps: {' / '.join(outcomes)}; the next run "
            "renames `OUT.old-*` back first, saying so", "old output kept as `OUT.old-*`")


@scenario("stale_live_tmp", slow=True)
def _(env):
    from socialr1_jax.checkpoint.staging import _HOST

    d = env.fresh("live")
    out = d + "/ckpt"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other = f"{out}.tmp-{sleeper.pid}-deadbeef-{_HOST}"
        os.makedirs(other)
        with open(other + "/data", "w") as f:
            f.write("being written")
        r = run(H2O, "--hf-dir", env.hf, "--out", out, "--no-progress")
        assert r.returncode == 0, r.stderr
        notes = [env.norm(ln) for ln in r.stderr.splitlines() if ln.startswith("note:")]
        assert len(notes) == 1 and "alone" in notes[0], r.stderr
        assert open(other + "/data").read() == "being written"
    finally:
        sleeper.kill()
        sleeper.wait()
    note = re.sub(r"process \d+", "process N", notes[0])
    return ("an `OUT.tmp-*` of a conversion still running", f"exit 0, and one line: `{note}`",
            "the other run's folder untouched")


# -- A read-only or full output filesystem: a tmpfs in a private mount namespace.

@scenario("readonly_out", slow=True)
def _(env):
    mnt = env.fresh("ro")
    before = digest(env.hf)
    p, files = in_tmpfs(env, mnt, "4m", "echo mine > " + mnt + "/keep.txt",
                        [PY, "-m", H2O, "--hf-dir", env.hf, "--out", mnt + "/ckpt",
                         "--no-progress"], readonly=True)
    line = exit2(env, p, "--out", "Read-only file system")
    assert list(files) == ["keep.txt"] and digest(env.hf) == before
    return "`hf_to_orbax --out` on a read-only filesystem", line, "input unchanged"


@scenario("full_out", slow=True)
def _(env):
    mnt = env.fresh("full")
    before = digest(env.hf)
    p, files = in_tmpfs(env, mnt, "128k", "true", [PY, "-m", H2O, "--hf-dir", env.hf, "--out",
                                                   mnt + "/ckpt", "--no-progress"])
    line = exit2(env, p, "--out", "No space left on device")
    assert files == {} and digest(env.hf) == before  # the partial output was removed
    return ("`hf_to_orbax --out` on a full filesystem (128 KiB tmpfs)", line,
            "input unchanged, partial output removed")


@scenario("full_out_cast", slow=True)
def _(env):
    mnt = env.fresh("full_cast")
    p, files = in_tmpfs(env, mnt, "128k", "true", [PY, "-m", H2O, "--hf-dir", env.hf, "--out",
                                                   mnt + "/ckpt", "--dtype", "bf16",
                                                   "--no-progress"])
    line = exit2(env, p, "--out", "No space left on device")
    assert files == {}
    return ("the same with `--dtype bf16` (written by TensorStore)", line,
            "input unchanged, partial output removed")


@scenario("full_out_overwrite", slow=True)
def _(env):
    d = env.fresh("full_ow")
    old = d + "/old"
    r = run(O2H, "--ckpt", env.ckpt, "--out", old, "--dtype", "bf16", "--no-progress")
    assert r.returncode == 0, r.stderr
    old_files = digest(old)
    size = sum(os.path.getsize(os.path.join(old, f)) for f in old_files)
    mnt = d + "/mnt"
    p, files = in_tmpfs(env, mnt, f"{size // 1024 + 96}k", sh_copy(old, mnt + "/export"),
                        [PY, "-m", O2H, "--ckpt", env.ckpt, "--out", mnt + "/export",
                         "--overwrite", "--no-progress"])
    line = exit2(env, p, "--out", "No space left on device")
    assert files == {os.path.join("export", f): h for f, h in old_files.items()}
    return ("`orbax_to_hf --overwrite` onto a full filesystem", line,
            "old export intact (every byte compared), partial output removed")
