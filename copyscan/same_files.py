"""Which paths are one file, and which files are one picture: settled before grouping.

* Symlinks and hard links to one file are names of one file, never a keep/copy pair: acting on
  one of them as a "copy" of the other would leave a dangling link or free nothing. Only files
  whose bytes already collide (same content hash) can share an inode, so only those are stat'ed.
* The pixel hash taken while indexing is of the reduced-scale decode (JPEG draft mode), so a
  JPEG and its lossless re-save hash differently there. Files whose reduced pixel hash or whose
  size already collides with another's (within a scored pair) are decoded once more in full and
  hashed again: identical pixels are then found exactly, at the cost of those few decodes.
* Paths are carried as exact bytes (base64) in every file a later stage acts on: a name that is
  not UTF-8 survives the trip through CSV and JSON.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable

from .decode import DecodeError, open_image, read_bytes

FULL_HASH_PREFIX = "full:"  # a pixel hash of the full decode, never equal to a reduced one


def path_to_b64(path: str) -> str:
    """The exact bytes of a path (as os.fsencode gives them), base64: safe in CSV and JSON."""
    return base64.b64encode(os.fsencode(path)).decode("ascii")


def path_from_b64(text: str) -> str:
    """The path (a str with surrogate escapes where the name is not UTF-8) from `path_to_b64`."""
    try:
        return os.fsdecode(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"not a base64 path: {text!r} ({exc})") from None


@dataclass(frozen=True)
class FileId:
    device: int
    inode: int


def file_id(path: str) -> FileId | None:
    """The identity of the file a path names (symlinks followed); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return FileId(st.st_dev, st.st_ino)


def is_symlink(path: str) -> bool:
    try:
        return os.path.islink(path)
    except (OSError, ValueError):
        return False


def same_file_sets(paths: list[str], content_hashes: list[str]) -> list[list[int]]:
    """Sets (of two or more indices) of paths that name one file; the real name first.

    Only paths whose content hashes collide are stat'ed. Within a set, a path that is not a
    symlink comes first (hard links: the shortest, then alphabetical), so it stands for the file.
    """
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(content_hashes):
        if h:
            by_hash[h].append(i)
    sets: list[list[int]] = []
    for idx in by_hash.values():
        if len(idx) < 2:
            continue
        by_id: dict[FileId, list[int]] = defaultdict(list)
        for i in idx:
            fid = file_id(paths[i])
            if fid is not None:
                by_id[fid].append(i)
        for members in by_id.values():
            if len(members) > 1:
                sets.append(sorted(members, key=lambda i: (is_symlink(paths[i]), len(paths[i]), paths[i])))
    return sets


def full_pixel_hash(path: str) -> str | None:
    """Hash of the fully decoded pixels (no reduced-scale JPEG decode); None if undecodable."""
    try:
        img, width, height = open_image(read_bytes(path), min_side=0)
    except DecodeError:
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{width}x{height}:".encode())
    h.update(img.tobytes())
    return FULL_HASH_PREFIX + h.hexdigest()


def full_hash_candidates(sizes: list[tuple[int, int]], pixel_hashes: list[str],
                         pairs: Iterable[tuple[int, int]]) -> set[int]:
    """Items worth a full decode: their reduced pixel hash collides with another item's, or they
    have the same width and height as an item they were paired with."""
    seen: dict[str, int] = {}
    out: set[int] = set()
    for i, h in enumerate(pixel_hashes):
        if not h:
            continue
        j = seen.setdefault(h, i)
        if j != i:
            out.update((i, j))
    for i, j in pairs:
        if sizes[i] == sizes[j] and sizes[i] != (0, 0):
            out.update((i, j))
    return out


def refine_pixel_hashes(items: list, pairs: Iterable[tuple[int, int]]) -> list:
    """Items (group.Item) with full-decode pixel hashes for the candidates (see module doc).

    Every member of a colliding set gets a full hash, so two reduced hashes can never meet a
    full one; a file that cannot be decoded again keeps its reduced hash.
    """
    candidates = full_hash_candidates([(it.width, it.height) for it in items], [it.pixel_hash for it in items], pairs)
    if not candidates:
        return items
    out = list(items)
    for i in sorted(candidates):
        h = full_pixel_hash(items[i].path)
        if h is not None:
            out[i] = replace(items[i], pixel_hash=h)
    return out


def collapse_same_files(paths: list[str], content_hashes: list[str]) -> tuple[list[int], dict[str, list[str]]]:
    """The indices to go on with (one name per file) and, by the name kept, the other names."""
    drop: set[int] = set()
    aliases: dict[str, list[str]] = {}
    for members in same_file_sets(paths, content_hashes):
        aliases[paths[members[0]]] = [paths[i] for i in members[1:]]
        drop.update(members[1:])
    return [i for i in range(len(paths)) if i not in drop], aliases


def attach_aliases(groups: list, aliases: dict[str, list[str]]) -> None:
    """Give each group member (results.Member) the other names of its file."""
    if not aliases:
        return
    for g in groups:
        for m in g.members:
            m.aliases = list(aliases.get(m.path, []))
