"""File-system faults for tests: a full disk, a write-protected folder or file.

Each helper makes the fault real where the machine allows and says which way it went:

* a full disk: a small tmpfs mounted for the test (root with mount rights), else every temporary
  file made under the folder writes to /dev/full (ENOSPC on the first write, as on a full disk);
* a write-protected folder: `chattr +i` (root, on ext4/xfs...), else a read-only bind mount
  (root with mount rights), else plain permission bits (a non-root user), else injected EACCES;
* a write-protected file: `chattr +i`, else injected EPERM for anything replacing it.

Injection patches the os-level calls copyscan writes through (os.open via tempfile.mkstemp,
os.mkdir, os.replace, os.unlink), so it only reaches code running in this process (CliRunner).
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# FSFAULTS_INJECT=1 forces the injected faults, to check that path on a machine that has the real ones.
REAL = os.environ.get("FSFAULTS_INJECT", "") != "1"


def _run(*cmd: str) -> bool:
    if not shutil.which(cmd[0]):
        return False
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _inside(path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)
    except (TypeError, ValueError):
        return False


@contextmanager
def full_disk(folder: Path, monkeypatch, free_bytes: int = 0) -> Iterator[str]:
    """`folder` (created) on a disk with about `free_bytes` left. Yields "tmpfs" or "injected"."""
    folder.mkdir(parents=True, exist_ok=True)
    if REAL and IS_ROOT and _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)):
        try:
            _fill(folder, free_bytes)
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        return
    folder = folder.resolve()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        fd, name = real_mkstemp(suffix, prefix, dir, text)
        if dir is not None and _inside(dir, folder):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    yield "injected"


def _fill(folder: Path, free_bytes: int) -> None:
    """Fill a tmpfs until about `free_bytes` are left."""
    st = os.statvfs(folder)
    filler = max(0, st.f_bavail * st.f_frsize - free_bytes)
    with open(folder / ".filler", "wb") as fh:
        fh.write(b"\0" * filler)


def _chattr_immutable(path: Path) -> ExitStack | None:
    """`chattr +i` on `path` where this machine allows it (root, a filesystem with the flag): a
    context that clears the flag on exit; None where it cannot be set."""
    if not (REAL and IS_ROOT and _run("chattr", "+i", str(path))):
        return None
    undo = ExitStack()
    undo.callback(_run, "chattr", "-i", str(path))
    return undo


@contextmanager
def write_protected(folder: Path, monkeypatch) -> Iterator[str]:
    """Nothing can be created, replaced or removed inside `folder` (existing files may still be
    opened for writing). Yields how: "chattr", "ro-mount", "chmod" or "injected"."""
    folder = folder.resolve()
    undo = _chattr_immutable(folder)
    if undo is not None:
        with undo:
            yield "chattr"
        return
    if REAL and IS_ROOT and _run("mount", "--bind", str(folder), str(folder)):
        if _run("mount", "-o", "remount,ro,bind", str(folder)):
            try:
                yield "ro-mount"
            finally:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
            return
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    if REAL and not IS_ROOT:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield "chmod"
        finally:
            folder.chmod(mode)
        return
    _inject(monkeypatch, lambda p: _inside(p, folder) and Path(os.path.abspath(os.fsdecode(p))) != folder, errno.EACCES)
    yield "injected"


@contextmanager
def immutable_file(path: Path, monkeypatch) -> Iterator[str]:
    """`path` cannot be replaced, written or removed. Yields "chattr" or "injected"."""
    path = path.resolve()
    undo = _chattr_immutable(path)
    if undo is not None:
        with undo:
            yield "chattr"
        return
    _inject(monkeypatch, lambda p: Path(os.path.abspath(os.fsdecode(p))) == path, errno.EPERM)
    yield "injected"


def _inject(monkeypatch, hit, code: int) -> None:
    def fail(p):
        raise OSError(code, os.strerror(code), os.fsdecode(p))

    real_open, real_mkdir, real_replace, real_unlink = os.open, os.mkdir, os.replace, os.unlink
    real_builtin_open = builtins.open

    def os_open(p, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and hit(p):
            fail(p)
        return real_open(p, flags, *a, **kw)

    def mkdir(p, *a, **kw):
        if hit(p):
            fail(p)
        return real_mkdir(p, *a, **kw)

    def replace(src, dst, *a, **kw):
        if hit(dst) or hit(src):
            fail(dst)
        return real_replace(src, dst, *a, **kw)

    def unlink(p, *a, **kw):
        if hit(p):
            fail(p)
        return real_unlink(p, *a, **kw)

    def open_(file, mode="r", *a, **kw):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and hit(file):
            fail(file)
        return real_builtin_open(file, mode, *a, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(builtins, "open", open_)
