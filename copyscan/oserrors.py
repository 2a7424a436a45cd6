"""What an operating-system error means for the user, said with the path and what to do.

A full disk, a write-protected or read-only folder, a file where a folder should be: these are
the user's to fix, not bugs of ours, so they end as a `WriteError` (errors.py; one line, exit
1) naming the path, instead of "internal error: OSError: 28". Callers wrap the place where they
write (`writing(path, ...)`) and remove their temporary files before the error goes up.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import WriteError

# The errors a user's machine causes when we write; anything else stays an internal error.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NO_PERMISSION = {errno.EACCES, errno.EPERM}
USER_FIXABLE = DISK_FULL | NO_PERMISSION | {errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def is_user_fixable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in USER_FIXABLE


def explain(exc: OSError, path: str | os.PathLike, where: str = "", retry: str = "run the command again") -> WriteError:
    """A WriteError for `exc`, raised while writing `path`. `where` names the option that chose the
    folder ("--output"), so the advice can say which one to change."""
    from .discover import display_path

    # A rename names its source first; the user cares about the target, never our temporary file.
    target = os.fspath(getattr(exc, "filename2", None) or getattr(exc, "filename", None) or path)
    if os.path.basename(target).startswith(".") and target.endswith(".tmp"):
        target = os.fspath(path)
    shown = display_path(str(target))
    other = f"choose another folder{' with ' + where if where else ''}"
    code = exc.errno
    if code in DISK_FULL:
        text = f"no space left on the disk holding {shown}: free some space, or {other} on another disk, then {retry}"
    elif code == errno.EROFS:
        text = f"cannot write {shown}: the file system is read-only; {other} on a writable disk"
    elif code in NO_PERMISSION:
        text = (f"cannot write {shown}: permission denied (write-protected); make it writable "
                f"(chmod u+w, or chattr -i), or {other}")
    elif code in (errno.EEXIST, errno.ENOTDIR):
        blocker = _file_in_the_way(Path(target)) or Path(target)
        text = f"{display_path(str(blocker))} is a file, not a folder: rename or remove it, or {other}"
    elif code == errno.EISDIR:
        text = f"{shown} is a folder where a file should go: rename or remove it, or {other}"
    else:
        text = f"cannot write {shown}: {exc.strerror or exc}"
    return WriteError(text, str(target), code)


@contextmanager
def writing(path: str | os.PathLike, where: str = "", retry: str = "run the command again") -> Iterator[None]:
    """Turn a user-fixable OSError raised inside the block into a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        if not is_user_fixable(exc):
            raise
        raise explain(exc, path, where, retry) from None


def make_folder(folder: str | os.PathLike, where: str = "") -> bool:
    """Create `folder` (and its parents) if missing; True when this call created it."""
    folder = Path(folder)
    if folder.is_dir():
        return False
    with writing(folder, where):
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            if not folder.is_dir():
                raise
            return False  # made by another process meanwhile
    return True


def _file_in_the_way(path: Path) -> Path | None:
    """The first component of `path` that exists and is not a folder."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return None


def remove_quietly(*paths: str | os.PathLike) -> None:
    """Best-effort clean-up on a failure path: never hides the error being reported."""
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


__all__ = ["WriteError", "explain", "fsync_dir", "is_user_fixable", "make_folder", "remove_quietly", "writing"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in `folder` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
