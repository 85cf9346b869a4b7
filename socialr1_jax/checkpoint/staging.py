"""Where a converter may write, and how its output replaces what was there, losing nothing.

- `check_out(out, inputs, overwrite)`, before anything is read or written: --out must not be an
  input, lie inside one, or contain one (compared after resolving symlinks); an existing --out is
  replaced only with --overwrite, and only if it is a checkpoint (an HF directory or one of ours)
  or an empty folder; a user's other folders and files are never deleted.
- `staged_dir(out)`: the output is built in `OUT.tmp-<pid>-<random>-<host>` beside it. When it is
  whole it is swapped with the old OUT in ONE step (Linux renameat2 RENAME_EXCHANGE), so at every
  instant OUT is either the old output or the new one; then the old one is deleted. A filesystem
  without the exchange gets two renames (OUT -> OUT.old-*, then tmp -> OUT); a crash between them
  is repaired by the next run (`sweep_stale` renames the old one back).
- `sweep_stale(out)` (run by `check_out`): a killed run leaves its `OUT.tmp-*` (never under the
  name OUT). The next run deletes those whose process is gone (same host), says so on stderr,
  and reports (keeps) those of a live process or of another host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
import sys

from socialr1_jax.cli import UsageError, parent_folder

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_HOST = socket.gethostname().replace(os.sep, "_") or "localhost"


class OutputExistsError(UsageError, FileExistsError):
    """--out exists and --overwrite was not given (one `error:` line; also a FileExistsError)."""


def _inside(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent and path != parent


def is_hf_checkpoint(path: str) -> bool:
    """An HF model directory: config.json and model.safetensors or its index."""
    return (os.path.isfile(os.path.join(path, "config.json"))
            and any(os.path.isfile(os.path.join(path, n))
                    for n in ("model.safetensors", "model.safetensors.index.json")))


def is_our_checkpoint(path: str) -> bool:
    """A checkpoint root of ours: config.json beside at least one finalized step."""
    from socialr1_jax.checkpoint.orbax_io import list_steps

    return os.path.isfile(os.path.join(path, "config.json")) and bool(list_steps(path))


def check_out(out: str, inputs: dict[str, str], *, overwrite: bool) -> str:
    """Validate --out against the inputs ({flag: path}) and what is there; returns it absolute.

    Raises UsageError (one line naming --out and the reason) when writing there could lose data.
    Leftovers of killed runs beside --out are dealt with first (`sweep_stale`).
    """
    out_abs = os.path.abspath(out)
    parent_folder("--out", out_abs)  # a typo'd parent is not created at the filesystem's root
    out_real = os.path.realpath(out_abs)
    for flag, inp in inputs.items():
        in_real = os.path.realpath(inp)
        if out_real == in_real:
            raise UsageError(f"--out {out} is the input ({flag} {inp}); choose another folder")
        if _inside(out_real, in_real):
            raise UsageError(f"--out {out} is inside the input ({flag} {inp}); choose a folder "
                             "outside it")
        if _inside(in_real, out_real):
            raise UsageError(f"--out {out} contains the input ({flag} {inp}); replacing it would "
                             "delete the input")
    sweep_stale(out_abs)  # first: it may put back an OUT that an interrupted swap left aside
    if not os.path.lexists(out_abs):
        return out_abs
    if os.path.isdir(out_abs) and not os.path.islink(out_abs) and not os.listdir(out_abs):
        return out_abs  # an empty folder: nothing to lose
    if not overwrite:
        raise OutputExistsError(f"--out {out} already exists; pass --overwrite to replace it")
    if os.path.islink(out_abs) or not os.path.isdir(out_abs):
        raise UsageError(f"--out {out} is {'a symlink' if os.path.islink(out_abs) else 'a file'}, "
                         "not a checkpoint folder; --overwrite replaces only checkpoints")
    if not (is_hf_checkpoint(out_abs) or is_our_checkpoint(out_abs)):
        raise UsageError(f"--out {out} is not a checkpoint (neither an HF directory with "
                         "config.json and safetensors nor an Orbax checkpoint of ours); "
                         "--overwrite replaces only checkpoints: delete it yourself or choose "
                         "another folder")
    return out_abs


def fsync_tree(path: str) -> None:
    """fsync every file and directory under `path` (and `path` itself)."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: str, b: str) -> None:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); OSError if the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a, None, b)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(tmp: str, out: str, *, fsync: bool = False) -> None:
    """Put the complete `tmp` at `out` (an old `out` is swapped out in one step, then deleted)."""
    parent = os.path.dirname(out)
    if not os.path.lexists(out):
        os.replace(tmp, out)
    else:
        try:
            _exchange(tmp, out)  # now `tmp` names the old output
            old = tmp
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise
            old = f"{out}.old-{os.getpid()}-{secrets.token_hex(4)}-{_HOST}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
        if fsync:
            _fsync_dir(parent)
        _remove(old)
    if fsync:
        _fsync_dir(parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str, prefix: str) -> tuple[int | None, str]:
    """(pid, host) encoded in a staging name `<prefix><pid>-<hex>[-<host>]`."""
    parts = name[len(prefix):].split("-", 2)
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    return pid, parts[2] if len(parts) > 2 else _HOST


def _size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def sweep_stale(out: str, log=None) -> list[str]:
    """Deal with what killed runs left beside `out`; returns (and prints to stderr) one line each.

    `OUT.tmp-*` of a dead process on this host: deleted (an unfinished output, or an old output
    already replaced). `OUT.old-*` with no OUT: a swap interrupted between its two renames, the
    old output is renamed back to OUT. Anything of a live process or another host: reported only.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    parent, base = os.path.split(os.path.abspath(out))
    if not os.path.isdir(parent):
        return []
    lines = []
    for kind in ("old", "tmp"):
        prefix = f"{base}.{kind}-"
        for name in sorted(os.listdir(parent)):
            if not name.startswith(prefix):
                continue
            path = os.path.join(parent, name)
            pid, host = _owner(name, prefix)
            if host != _HOST or (pid is not None and pid != os.getpid() and _pid_alive(pid)):
                who = f"process {pid} on {host}" if host != _HOST else f"running process {pid}"
                lines.append(f"note: left {path} alone: it belongs to {who} (another conversion "
                             "into the same --out?)")
            elif kind == "old" and not os.path.lexists(os.path.join(parent, base)):
                os.replace(path, os.path.join(parent, base))
                lines.append(f"note: restored {os.path.join(parent, base)} from {name}: an "
                             "earlier --overwrite was killed between its two renames")
            else:
                size = _size(path)
                _remove(path)
                lines.append(f"note: removed {path} ({size / 1e6:.1f} MB) left by an earlier "
                             f"run that was killed (process {pid})")
    for line in lines:
        log(line)
    return lines


@contextlib.contextmanager
def staged_dir(out: str, *, overwrite: bool | None = None, fsync: bool = False):
    """Yield a fresh `OUT.tmp-*` directory; on success it replaces `out`, on failure it is removed.

    overwrite: if given, `out` is checked here with `check_out(out, {}, overwrite=...)` (no
    inputs to compare with); callers that ran `check_out` themselves leave it None. fsync: flush
    the whole new tree to disk before the swap (and the directory after), so a power loss cannot
    leave a complete-looking `out` with unwritten data. Off by default, like `cp`.
    """
    out = os.path.abspath(os.fspath(out))
    if overwrite is not None:
        check_out(out, {}, overwrite=overwrite)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}-{secrets.token_hex(4)}-{_HOST}"
    os.makedirs(tmp)
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        replace_with(tmp, out, fsync=fsync)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
