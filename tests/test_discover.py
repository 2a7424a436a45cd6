"""Stage 1, discovery: which files under a folder are taken as images, and what is reported."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_photo
from copyscan.discover import BASE_EXTENSIONS, FileEntry, Skipped, discover, display_path, resolve_root, under
from copyscan.errors import UserError

IMAGE_NAMES = [
    "a.jpg", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif", "g.tiff", "h.tif",
    "UP.JPG", "UP2.JPEG", "UP3.PNG", "UP4.WEBP", "UP5.BMP", "UP6.GIF", "UP7.TIFF", "Mixed.JpG",
]
OTHER_NAMES = ["notes.txt", "a.jpg.xmp", "meta.json", "noext", "movie.mp4", "archive.zip", ".hidden"]


def _rel(root: Path, entries) -> list[str]:
    return [os.path.relpath(e.path, root) for e in entries]


def test_recursive_discovery_of_all_image_extensions(tmp_path):
    expected = []
    for i, name in enumerate(IMAGE_NAMES):
        rel = os.path.join("x" * (i % 3), "deep" if i % 2 else "", name) if i % 3 else name
        make_photo(tmp_path / rel, size=(16, 12), seed=i, fmt="PNG")  # content does not matter here
        expected.append(os.path.normpath(rel))
    for name in OTHER_NAMES:
        (tmp_path / "x" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "x" / name).write_bytes(b"not an image")
    (tmp_path / "empty_dir" / "nested").mkdir(parents=True)

    found, skipped = discover(tmp_path)

    assert sorted(_rel(tmp_path, found)) == sorted(expected)
    assert skipped == []  # other extensions are ignored silently
    assert [e.path for e in found] == sorted(e.path for e in found)
    for e in found:
        assert isinstance(e, FileEntry)
        assert os.path.isabs(e.path)
        st = os.stat(e.path)
        assert e.bytes == st.st_size > 0
        assert e.mtime_ns == st.st_mtime_ns


def test_base_extensions_cover_the_common_formats():
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        assert ext in BASE_EXTENSIONS


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    make_photo(tmp_path / "sub" / "p.png", size=(8, 8))
    monkeypatch.chdir(tmp_path)
    found, _ = discover("sub")
    assert [e.path for e in found] == [str(tmp_path / "sub" / "p.png")]
    assert resolve_root("sub") == str(tmp_path / "sub")


def test_single_file_root(tmp_path):
    photo = make_photo(tmp_path / "one.jpg", size=(16, 16))
    found, skipped = discover(photo)
    assert [e.path for e in found] == [str(photo)] and skipped == []

    text = tmp_path / "readme.txt"
    text.write_text("hello")
    found, skipped = discover(text)
    assert found == []
    assert len(skipped) == 1 and skipped[0].path == str(text)
    assert "not an image extension" in skipped[0].reason


def test_missing_root_raises(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        discover(tmp_path / "does-not-exist")


def test_custom_extension_set(tmp_path):
    make_photo(tmp_path / "a.png", size=(8, 8))
    make_photo(tmp_path / "b.jpg", size=(8, 8))
    found, _ = discover(tmp_path, extensions=frozenset({".png"}))
    assert _rel(tmp_path, found) == ["a.png"]


def test_dangling_symlink_is_skipped_with_reason(tmp_path):
    make_photo(tmp_path / "real.jpg", size=(16, 16))
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "gone_dir", tmp_path / "dangling_dir")  # a dangling link with no extension: ignored
    found, skipped = discover(tmp_path)
    assert _rel(tmp_path, found) == ["real.jpg"]
    assert skipped == [Skipped(str(tmp_path / "dangling.jpg"), "dangling symlink")]


def test_symlink_to_file_is_listed_under_its_own_name(tmp_path):
    make_photo(tmp_path / "real.png", size=(16, 16))
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    found, skipped = discover(tmp_path)
    assert _rel(tmp_path, found) == ["alias.png", "real.png"]
    assert skipped == []


def test_symlink_loop_terminates_and_finds_each_file(tmp_path):
    root = tmp_path / "root"
    make_photo(root / "top.jpg", size=(16, 16))
    make_photo(root / "sub" / "inner.png", size=(16, 16), seed=1)
    os.symlink("..", root / "sub" / "loop")  # sub/loop -> root: a cycle
    os.symlink(".", root / "sub" / "self")  # sub/self -> sub: a cycle of one
    os.symlink(root, root / "sub" / "abs_loop")

    found, skipped = discover(root)  # must return at all

    assert skipped == []
    real = Counter(os.path.realpath(e.path) for e in found)
    assert set(real) == {str((root / "top.jpg").resolve()), str((root / "sub" / "inner.png").resolve())}
    # A file may be reachable under two names through a loop, never more often than that.
    assert max(real.values()) <= 2
    assert len({e.path for e in found}) == len(found)


def test_symlinked_folder_outside_root_is_followed(tmp_path):
    outside = tmp_path / "outside"
    make_photo(outside / "far.png", size=(16, 16))
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    found, _ = discover(root)
    assert [e.path for e in found] == [str(root / "link" / "far.png")]  # the name as the user sees it


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_skipped(tmp_path):
    p = make_photo(tmp_path / "secret.jpg", size=(16, 16))
    make_photo(tmp_path / "open.jpg", size=(16, 16))
    os.chmod(p, 0)
    try:
        found, skipped = discover(tmp_path)
    finally:
        os.chmod(p, 0o644)
    assert _rel(tmp_path, found) == ["open.jpg"]
    assert len(skipped) == 1 and skipped[0].path == str(p)
    assert skipped[0].reason == "permission denied"
    assert skipped[0].bytes == p.stat().st_size


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list a chmod 000 folder")
def test_unreadable_folder_is_reported_not_raised(tmp_path):
    make_photo(tmp_path / "ok.png", size=(8, 8))
    locked = tmp_path / "locked"
    make_photo(locked / "inside.png", size=(8, 8))
    os.chmod(locked, 0)
    try:
        found, skipped = discover(tmp_path)
    finally:
        os.chmod(locked, 0o755)
    assert _rel(tmp_path, found) == ["ok.png"]
    assert [s.path for s in skipped] == [str(locked)]
    assert skipped[0].reason.startswith("folder not readable")


def test_under():
    assert under("/a/b/c.jpg", "/a/b")
    assert under("/a/b/c.jpg", "/a/b/")
    assert under("/a/b", "/a/b")
    assert under("/a/b/deep/er/x.png", "/a")
    assert not under("/a/bc/x.jpg", "/a/b")  # a prefix of the name is not a parent folder
    assert not under("/a/b", "/a/b/c")
    assert not under("/x/y.jpg", "/a")
    assert under("/anything.jpg", "/")
    assert under("/", "/")


def test_strange_names_are_found(tmp_path):
    names = [
        "with space.jpg",
        "  leading and trailing  .png",
        "new\nline.jpg",
        "tab\there.png",
        "café – 東京 📷.jpg",
        "<img src=x onerror=alert(1)>&amp;.png",
        "quote\"s and 'apostrophes'.webp",
        "semi;colon$HOME`x`.bmp",
        "-starts-with-dash.gif",
    ]
    for i, name in enumerate(names):
        make_photo(tmp_path / name, size=(16, 16), seed=i, fmt="PNG")
    make_photo(tmp_path / "dir with space" / "ünïcödé" / "x.jpg", size=(16, 16))
    bad = os.fsencode(tmp_path) + b"/latin1-caf\xe9-\xff.jpg"  # not valid UTF-8
    make_photo(bad, size=(16, 16), fmt="JPEG")

    found, skipped = discover(tmp_path)

    assert skipped == []
    got = {os.fsencode(e.path) for e in found}
    expected = {os.fsencode(tmp_path / n) for n in names}
    expected.add(os.fsencode(tmp_path / "dir with space" / "ünïcödé" / "x.jpg"))
    expected.add(bad)
    assert got == expected
    for e in found:
        assert os.path.exists(e.path)  # str paths round-trip to the real file
        display_path(e.path).encode("utf-8")  # printable whatever the bytes


def test_non_utf8_root_folder(tmp_path):
    folder = os.fsencode(tmp_path) + b"/\xff\xfe-folder"
    make_photo(folder + b"/p.png", size=(8, 8))
    found, _ = discover(os.fsdecode(folder))
    assert [os.fsencode(e.path) for e in found] == [folder + b"/p.png"]
    assert "\ufffd" in display_path(found[0].path)
