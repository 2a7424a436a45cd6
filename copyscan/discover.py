"""Stage 1 (discover): find the image files under a folder.

Walks without following directory symlinks into places already seen, so a symlink loop cannot
hang the walk, and reports what it could not look at instead of raising.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from .errors import UserError

# Extensions we decode with Pillow alone. HEIC/HEIF join when pillow-heif is importable.
BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})


def heif_available() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def image_extensions() -> frozenset[str]:
    return BASE_EXTENSIONS | HEIF_EXTENSIONS if heif_available() else BASE_EXTENSIONS


@dataclass(frozen=True)
class FileEntry:
    """A candidate image as found on disk; size and mtime decide whether it changed."""

    path: str  # absolute, symlinks in the name kept as the user sees them
    bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    bytes: int = -1
    mtime_ns: int = -1


def display_path(path: str) -> str:
    """A printable form of a path whose name may hold bytes that are not valid UTF-8."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def discover(root: str | os.PathLike, extensions: frozenset[str] | None = None) -> tuple[list[FileEntry], list[Skipped]]:
    """All image files under `root` (or `root` itself if it is a file), sorted by path.

    Returns the files and the entries that were skipped with a reason (dangling links, files we
    may not read). Files with other extensions are ignored silently: a photo folder holds
    sidecar files (.xmp, .json) that are not worth a line each.
    """
    exts = extensions if extensions is not None else image_extensions()
    root = os.path.abspath(os.fspath(root))
    found: list[FileEntry] = []
    skipped: list[Skipped] = []
    if os.path.isfile(root):
        _consider(root, exts, found, skipped, explicit=True)
        return found, skipped
    if not os.path.isdir(root):
        raise UserError(f"no such folder: {display_path(root)}")
    for path in _walk(root, skipped):
        _consider(path, exts, found, skipped, explicit=False)
    found.sort(key=lambda e: e.path)
    skipped.sort(key=lambda s: s.path)
    return found, skipped


def _walk(root: str, skipped: list[Skipped]) -> Iterator[str]:
    # Directory identities (device, inode) already entered: a symlink that points back up the tree
    # is entered at most once.
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as exc:
            skipped.append(Skipped(folder, f"folder not readable: {exc.strerror or exc}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            skipped.append(Skipped(folder, f"folder not readable: {exc.strerror or exc}"))
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(entry.path)
            else:
                yield entry.path


def _consider(path: str, exts: frozenset[str], found: list[FileEntry], skipped: list[Skipped], explicit: bool) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in exts:
        if explicit:
            skipped.append(Skipped(path, f"not an image extension ({ext or 'none'})"))
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        skipped.append(Skipped(path, "dangling symlink"))
        return
    except OSError as exc:
        skipped.append(Skipped(path, f"cannot stat: {exc.strerror or exc}"))
        return
    if not os.access(path, os.R_OK):
        skipped.append(Skipped(path, "permission denied", st.st_size, st.st_mtime_ns))
        return
    found.append(FileEntry(path, st.st_size, st.st_mtime_ns))


def under(path: str, root: str) -> bool:
    """Whether `path` lies inside folder `root` (both absolute)."""
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def resolve_root(root: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(root))


__all__ = ["FileEntry", "Skipped", "discover", "image_extensions", "heif_available", "display_path", "under", "resolve_root"]
