"""Moving one file without ever overwriting another, and to the freedesktop trash.

Same device: a hard link at the destination (which fails if anything is there) and then the
source unlinked. Across devices: the bytes copied to a new file (O_EXCL), fsynced, its mtime and
mode set, the copy read back and compared, and only then the source removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import urllib.parse
from pathlib import Path

from ..oserrors import fsync_dir

CHUNK = 1 << 20


class Refused(Exception):
    """A move not made (the destination exists, the copy did not verify); the message says why."""


def digest(path: str) -> str:
    """The content hash dedupe records (decode.file_hash: BLAKE2b-128 of the bytes), streamed."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def move(src: str, dst: str) -> str:
    """Move `src` (a file or a symlink) to `dst`, which must not exist; returns how ("link",
    "copy", "rename"). Raises Refused, or OSError for what the system refused."""
    if os.path.lexists(dst):
        raise Refused("the destination already exists")
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise Refused("the destination already exists") from None
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            copy_across(src, dst)
            _remove(src)
            return "copy"
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            # No hard links on this file system (FAT, some network shares): a rename, checked
            # just before, is the closest there is to a move that never overwrites.
            if os.path.lexists(dst):
                raise Refused("the destination already exists") from None
            os.rename(src, dst)
            fsync_dir(os.path.dirname(dst))
            fsync_dir(os.path.dirname(src))
            return "rename"
        raise
    fsync_dir(os.path.dirname(dst))
    _remove(src)
    return "link"


def _remove(src: str) -> None:
    os.unlink(src)
    fsync_dir(os.path.dirname(src))


def copy_across(src: str, dst: str) -> None:
    """Copy to a new `dst` on another device, durable and verified, before the source may go."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        fsync_dir(os.path.dirname(dst))
        return
    st = os.stat(src)
    h_src = hashlib.blake2b(digest_size=16)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h_src.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        if digest(dst) != h_src.hexdigest():
            raise Refused("the copy on the other device does not read back the same")
    except BaseException:
        try:
            os.unlink(dst)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(dst))


# ---- the freedesktop trash -------------------------------------------------------------------------


def to_trash(src: str) -> tuple[str, str]:
    """Send `src` to the trash (send2trash); returns (trashed file, its .trashinfo) where found,
    ("", "") where the platform's trash cannot be looked into (undo then says so)."""
    try:
        from send2trash import send2trash
    except ImportError:
        raise Refused("--trash needs the send2trash package: pip install send2trash") from None
    send2trash(src)
    return find_trashed(src)


def trash_dirs(path: str) -> list[Path]:
    """The freedesktop trash folders a file at `path` may have gone to: the home trash, then the
    trash at the top of its volume."""
    home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "Trash"
    dirs = [home]
    top = Path(os.path.dirname(os.path.abspath(path)))
    try:
        dev = os.lstat(top).st_dev
        while top.parent != top and os.lstat(top.parent).st_dev == dev:
            top = top.parent
    except OSError:
        return dirs
    uid = os.getuid() if hasattr(os, "getuid") else 0
    dirs += [top / ".Trash" / str(uid), top / f".Trash-{uid}"]
    return dirs


def find_trashed(src: str) -> tuple[str, str]:
    """The newest trash entry whose recorded original path is `src`."""
    want = os.path.abspath(src)
    best: tuple[float, str, str] | None = None
    for trash in trash_dirs(src):
        info_dir = trash / "info"
        if not info_dir.is_dir():
            continue
        topdir = trash.parent.parent if trash.parent.name == ".Trash" else trash.parent
        for info in info_dir.glob("*.trashinfo"):
            try:
                text = info.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            line = next((ln for ln in text.splitlines() if ln.startswith("Path=")), None)
            if line is None:
                continue
            recorded = os.fsdecode(urllib.parse.unquote_to_bytes(line[5:]))
            if not os.path.isabs(recorded):
                recorded = os.path.join(os.fspath(topdir), recorded)
            if recorded != want:
                continue
            stored = trash / "files" / info.name[: -len(".trashinfo")]
            try:
                when = info.stat().st_mtime
            except OSError:
                continue
            if os.path.lexists(stored) and (best is None or when > best[0]):
                best = (when, str(stored), str(info))
    return (best[1], best[2]) if best else ("", "")
