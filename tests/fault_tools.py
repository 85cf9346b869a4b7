"""What tests/test_faults.py drives the commands with: shared checkpoints, subprocess runners,
kill and crash injection, a tmpfs in a private mount namespace, and the table's rendering."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
H2O, O2H, GEN, PLAN = ("conversion.hf_to_orbax", "conversion.orbax_to_hf", "socialr1_jax.generate",
                       "socialr1_jax.memory_plan")
EVAL = "socialr1_jax.evaluate"
TABLE_BEGIN, TABLE_END = "<!-- data-safety-table:begin -->", "<!-- data-safety-table:end -->"


class Env:
    """Checkpoints shared by the scenarios (built once): a tiny chat model in HF form (`hf`) and
    converted (`ckpt`), the same with one NaN weight (`nan_hf`, `nan_ckpt`), and a larger one for
    the kill tests (`big_hf`, built on first use)."""

    NAN_TENSOR, NAN_AT = "model.layers.1.mlp.up_proj.weight", (3, 5)

    def __init__(self, root: str):
        from conversion import hf_to_orbax
        from tests.hf_fixtures import make_tiny_chat_checkpoint

        self.root = root
        self.hf, self.ckpt = self.path("hf"), self.path("ckpt")
        make_tiny_chat_checkpoint(self.hf, seed=4)
        hf_to_orbax.convert(self.hf, self.ckpt, progress=False)
        self.nan_hf, self.nan_ckpt = self.path("nan_hf"), self.path("nan_ckpt")
        shutil.copytree(self.hf, self.nan_hf)
        poke_nan(self.nan_hf, self.NAN_TENSOR, self.NAN_AT)
        hf_to_orbax.convert(self.nan_hf, self.nan_ckpt, progress=False, allow_nonfinite=True)
        self._big = None

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def fresh(self, name: str) -> str:
        """An empty folder `name` for one scenario (its outputs go inside)."""
        d = self.path(name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    @property
    def big_hf(self) -> str:
        if self._big is None:
            from tests.hf_fixtures import make_hf_checkpoint

            self._big = self.path("big_hf")
            make_hf_checkpoint(self._big, hidden=256, layers=4, inter=768, vocab=2048, heads=4,
                               kv_heads=2, head_dim=64, tie=False, max_shard_size="4MB", seed=9)
        return self._big

    def norm(self, text: str) -> str:
        """Paths relative to the scenario root, staging names without pid/host."""
        text = text.replace(self.root + os.sep, "").replace(self.root, ".")
        return re.sub(r"\.(tmp|old)-\d+-[0-9a-f]{8}-[^\s/:)]+", r".\1-*", text)


def poke_nan(hf_dir: str, name: str, at: tuple) -> None:
    from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir

    st = SafetensorsDir(hf_dir)
    f = st.files[st.weight_map[name]]
    shape, dtype = f.info(name)
    offset = f.data_start + f.header[name]["data_offsets"][0]
    offset += int(np.ravel_multi_index(at, shape)) * dtype.itemsize
    st.close()
    with open(f.path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.array([np.nan], dtype).tobytes())


def copy_with_config(src: str, dst: str, **changes) -> None:
    """Copy a checkpoint folder with some config.json fields changed."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)


def digest(path: str) -> dict:
    """{relative path: sha256} of every file under `path` (or of `path` itself)."""
    if os.path.isfile(path):
        return {".": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def env_vars(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **extra}


def run(module: str, *args, timeout: int = 300, **extra_env) -> subprocess.CompletedProcess:
    """`python -m module args...` in a fresh process."""
    return subprocess.run([PY, "-m", module, *map(str, args)], cwd=ROOT, env=env_vars(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def _real_lines(stderr: str) -> list[str]:
    # transformers' tokenizer loading may print progress bars; nothing else may appear
    return [ln for ln in stderr.splitlines() if ln.strip()]


def error_line(env: Env, proc: subprocess.CompletedProcess, *names: str) -> str:
    """Assert exit code 2 and exactly one `error:` line on stderr, naming each of `names` (the
    flag, key, file or value); return it with paths made relative."""
    lines = _real_lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    line = env.norm(lines[0])
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    return line


def exit2(env: Env, proc, *names: str) -> str:
    """`error_line` as the table shows it."""
    return f"exit 2: `{error_line(env, proc, *names)}`"


def hf_tensors(hf_dir: str) -> dict:
    from socialr1_jax.checkpoint.safetensors_io import SafetensorsDir

    st = SafetensorsDir(hf_dir)
    out = {n: st.get(n).tobytes() for n in st.keys()}
    st.close()
    return out


def ckpt_tensors(ckpt: str) -> dict:
    """HF name -> bytes of every parameter of an Orbax checkpoint root (read with TensorStore)."""
    from socialr1_jax.checkpoint import hf_layout
    from socialr1_jax.checkpoint.orbax_io import read_config
    from socialr1_jax.checkpoint.stream import open_param_stores

    stores = open_param_stores(os.path.join(ckpt, "0", "params"))
    def read(e):  # a stacked parameter's layer is one HF tensor
        store = stores[e.path][0]
        return np.asarray((store[e.index] if e.index else store).read().result()).tobytes()

    return {e.hf_name: read(e) for e in hf_layout.layout(read_config(ckpt))}


def siblings(out: str) -> list[str]:
    base = os.path.basename(out)
    return sorted(n for n in os.listdir(os.path.dirname(out)) if n.startswith(base))


def _wait_for(p, parent: str, prefix: str, present: bool) -> None:
    """Poll until an entry of `parent` starting with `prefix` exists (or no longer does)."""
    while p.poll() is None and any(n.startswith(prefix) for n in os.listdir(parent)) != present:
        time.sleep(0.002)


def staging_window(cmd: list[str], out: str) -> float:
    """Seconds from the appearance of a full run's staging folder to its swap into place (the
    part of a conversion that writes under --out's folder)."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env_vars(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    mine = f"{os.path.basename(out)}.tmp-{p.pid}-"
    _wait_for(p, os.path.dirname(out), mine, True)
    t0 = time.perf_counter()
    _wait_for(p, os.path.dirname(out), mine, False)
    window = time.perf_counter() - t0
    _, err = p.communicate()
    assert p.returncode == 0, err
    return window


def kill_at_random_point(cmd: list[str], out: str, window: float, rng) -> tuple[bool, str]:
    """Start `cmd`, wait until its staging folder appears, SIGKILL it a random part of `window`
    later. Returns (its staging folder was left behind, what it wrote to stderr)."""
    with open(out + ".killed-stderr", "w+") as err:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env_vars(), stdout=subprocess.DEVNULL,
                             stderr=err)
        mine = f"{os.path.basename(out)}.tmp-{p.pid}-"
        _wait_for(p, os.path.dirname(out), mine, True)
        time.sleep(rng.uniform(0, window))
        p.send_signal(signal.SIGKILL)
        p.wait()
        err.seek(0)
        text = err.read()
    os.remove(out + ".killed-stderr")
    return any(n.startswith(mine) for n in os.listdir(os.path.dirname(out))), text


def removal_notes(stderr: str) -> int:
    """How many stale staging folders a run said it deleted."""
    return sum(ln.startswith("note: removed ") for ln in stderr.splitlines())


CRASH_DRIVER = r"""
import errno, os, sys
import socialr1_jax.checkpoint.staging as st
limit, steps = int(os.environ["CRASH_AFTER"]), [0]

def counted(fn):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        steps[0] += 1
        if steps[0] == limit:
            os._exit(137)  # like kill -9: no cleanup handler runs
        return out
    return wrapped

class _Os:
    def __getattr__(self, name):
        return getattr(os, name)
    replace = staticmethod(counted(os.replace))

def _no_exchange(a, b):
    raise OSError(errno.EINVAL, "no RENAME_EXCHANGE on this filesystem")

st._exchange = counted(_no_exchange if os.environ.get("NO_EXCHANGE") else st._exchange)
st._remove = counted(st._remove)
st.os = _Os()
from socialr1_jax import cli
from conversion import orbax_to_hf
sys.exit(cli.run(orbax_to_hf.main, sys.argv[1:]))
"""


def _unshare() -> list[str] | None:
    for cmd in (["unshare", "-rm"], ["unshare", "-m"]):
        try:
            ok = subprocess.run(cmd + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                                capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cmd
    return None


_UNSHARE: list = []


def in_tmpfs(env, mnt: str, size: str, setup: str, command: list[str], *, readonly=False):
    """Run `command` with a fresh tmpfs of `size` mounted at `mnt` (after `setup` shell lines,
    then remounted read-only if asked). Returns (process, files left in the tmpfs with sha256)."""
    if not _UNSHARE:
        _UNSHARE.append(_unshare())
    if _UNSHARE[0] is None:
        pytest.skip("cannot mount a tmpfs here (no unshare / mount namespaces)")
    os.makedirs(mnt, exist_ok=True)
    quoted = " ".join("'" + c.replace("'", "'\\''") + "'" for c in command)
    script = "\n".join([
        "set -e", f"mount -t tmpfs -o size={size} tmpfs '{mnt}'", setup,
        f"mount -o remount,ro '{mnt}'" if readonly else "", "set +e",
        f"{quoted}", 'echo "@@rc=$?"',
        f"cd '{mnt}' && find . -type f | sort | while read f; do sha256sum \"$f\"; done",
    ])
    p = subprocess.run(_UNSHARE[0] + ["sh", "-c", script], cwd=ROOT, env=env_vars(),
                       capture_output=True, text=True, timeout=600)
    head, _, tail = p.stdout.partition("@@rc=")
    rc_text, _, listing = tail.partition("\n")
    assert rc_text.strip().isdigit(), f"the tmpfs setup failed: {p.stderr[-2000:]}"
    files = {}
    for ln in listing.splitlines():
        h, _, name = ln.partition("  ")
        files[os.path.normpath(name)] = h
    p.stdout, p.returncode = head, int(rc_text)
    return p, files


def sh_copy(src: str, dst: str) -> str:
    return f"cp -a '{src}' '{dst}'"


def render_table(rows: list) -> str:
    """The Markdown table of the rows (input or fault, what happens, nothing lost)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| input or fault | what happens | nothing lost |", "|---|---|---|"]
    lines += [f"| {cell(a)} | {cell(b)} | {cell(c)} |" for a, b, c in rows]
    return "\n".join(lines)


def table_block(text: str, path: str) -> str:
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise AssertionError(f"{path} has no {TABLE_BEGIN} ... {TABLE_END} block")
    return text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()


def replace_table_block(path: str, table: str) -> None:
    text = open(path).read()
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}")


# ----------------------------------------------------------------------------------------------
# The scenarios: name -> (function(env) returning (input or fault, what happens, nothing
# lost), slow). tests/faults_*.py register them; tests/test_faults.py runs them.

SCENARIOS: dict = {}
ROWS: dict = {}


def scenario(name: str, slow: bool = False):
    def register(fn):
        SCENARIOS[name] = (fn, slow)
        return fn
    return register


def run_main(module: str, *args) -> subprocess.CompletedProcess:
    """`module`'s main(argv) through cli.run in this process (argument-time checks, where a
    fresh interpreter would only add seconds), as a CompletedProcess with its stderr."""
    import contextlib
    import importlib
    import io

    from socialr1_jax import cli

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = cli.run(importlib.import_module(module).main, [str(a) for a in args])
    return subprocess.CompletedProcess([module, *args], rc, out.getvalue(), err.getvalue())
