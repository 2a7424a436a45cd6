"""The HTML report: written for both kinds, hostile and non-UTF-8 names escaped, bad files shown
as placeholders, left-out counts stated; and rendered in a real headless browser when one exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from copyscan.report import write_dedupe_report, write_query_report
from copyscan.results import (
    MATCH_IDENTICAL_FILE,
    MATCH_IDENTICAL_PIXELS,
    MATCH_NEAR,
    Group,
    Match,
    Member,
    QueryResult,
)

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;.jpg"


def _image(path, color=(200, 80, 40), size=(64, 48)):
    Image.new("RGB", size, color).save(path, "JPEG")
    return str(path)


def _member(path, role="copy", score=0.9, match=MATCH_NEAR):
    return Member(path=path, role=role, score=score, width=64, height=48, bytes=os.path.getsize(path), match=match)


def _group(gid, keep, *copies, reason="largest file"):
    members = [_member(keep, role="keep", score=1.0, match="keep")]
    members += [_member(c, score=s, match=kind) for c, s, kind in copies]
    return Group(group_id=gid, members=members, keep_reason=reason)


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return {
        "a": _image(src / "a.jpg"),
        "b": _image(src / "b copy & 'quoted\".jpg", color=(10, 120, 200)),
        "hostile": _image(src / HOSTILE, color=(30, 200, 30)),
        "unicode": _image(src / "photo\u00e9\u65e5\nnewline.jpg", color=(90, 90, 90)),
    }


def _thumbs(out):
    return sorted(p.name for p in (out / "thumbs").iterdir())


def test_query_report(tmp_path, files):
    results = [
        QueryResult(files["a"], [], 64, 48),  # no match: shown after those with one
        QueryResult(files["b"], [Match(files["a"], 0.8123, 1), Match(files["hostile"], 0.77, 2)], 64, 48),
        QueryResult(files["unicode"], [Match(files["a"], 0.95, 1)], 64, 48),
    ]
    out = tmp_path / "out"
    report = write_query_report(out, results, {"Model": "lite0_gem", "Threshold": 0.75, "Images": 3})
    assert report == out / "report.html"
    text = report.read_text(encoding="utf-8")
    assert "lite0_gem" in text and "0.75" in text
    assert "0.812" in text and "0.950" in text and "rank 2" in text
    assert HOSTILE_ESCAPED in text and "<img src=x" not in text
    # best score first, the query without a match last
    assert text.index("newline.jpg") < text.index("b copy") < text.index("no match at or above")
    assert "b copy &amp; &#x27;quoted&quot;.jpg" in text
    assert "<script" not in text.lower()
    # thumbnails named by hash, never by the user's file name
    names = _thumbs(out)
    assert len(names) == 4 and all(len(n) == 36 and n.endswith(".jpg") for n in names)
    assert "file://" in text and "no preview" not in text


def test_dedupe_report(tmp_path, files):
    groups = [
        _group(
            1,
            files["a"],
            (files["hostile"], 1.0, MATCH_IDENTICAL_FILE),
            (files["b"], 0.999, MATCH_IDENTICAL_PIXELS),
            (files["unicode"], 0.8567, MATCH_NEAR),
            reason="highest resolution",
        )
    ]
    out = tmp_path / "out"
    text = write_dedupe_report(out, groups, {"Model": "<b>bold</b>", "Groups": 1}).read_text(encoding="utf-8")
    assert "KEEP" in text and "highest resolution" in text
    assert "identical file" in text and "identical pixels" in text and "near copy" in text
    assert "0.857" in text and "64 x 48" in text and "B</div>" in text
    assert HOSTILE_ESCAPED in text and "<img src=x" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold</b>" not in text
    # kept image first
    assert text.index("src/a.jpg") < text.index(HOSTILE_ESCAPED)


def test_thumbnails_cached(tmp_path, files):
    out = tmp_path / "out"
    groups = [_group(1, files["a"], (files["b"], 0.9, MATCH_NEAR))]
    write_dedupe_report(out, groups, {})
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()}
    write_dedupe_report(out, groups, {})
    assert {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()} == stamps
    assert not [p for p in (out / "thumbs").iterdir() if p.name.startswith(".tmp")]


def test_corrupt_and_missing_files_get_placeholder(tmp_path, files):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = str(tmp_path / "gone.jpg")
    groups = [
        _group(1, files["a"], (str(bad), 0.9, MATCH_NEAR), (str(empty), 0.8, MATCH_NEAR)),
        Group(2, [Member(missing, "keep", 1.0, 0, 0, 0, "keep"), _member(files["b"])]),
    ]
    out = tmp_path / "out"
    text = write_dedupe_report(out, groups, {}).read_text(encoding="utf-8")
    assert text.count(">no preview<") == 3
    assert len(_thumbs(out)) == 2
    results = [QueryResult(str(bad), [Match(missing, 0.9, 1)])]
    text = write_query_report(tmp_path / "q", results, {}).read_text(encoding="utf-8")
    assert text.count(">no preview<") == 2


def test_left_out_counts(tmp_path):
    paths = [_image(tmp_path / f"{i}.jpg", color=(i * 20, 0, 0)) for i in range(6)]
    groups = [_group(i, paths[i], (paths[(i + 1) % 6], 0.9, MATCH_NEAR)) for i in range(5)]
    text = write_dedupe_report(tmp_path / "d", groups, {}, max_items=2).read_text(encoding="utf-8")
    assert "3 left out" in text and "groups.csv" in text
    assert text.count('class="group"') == 2
    results = [QueryResult(p, [Match(paths[0], 0.5 + i / 100, 1)]) for i, p in enumerate(paths)]
    text = write_query_report(tmp_path / "q", results, {}, max_items=4).read_text(encoding="utf-8")
    assert "2 left out" in text and "matches.csv" in text
    assert text.count('class="group"') == 4
    text = write_query_report(tmp_path / "q2", results, {}).read_text(encoding="utf-8")
    assert "left out" not in text and "Showing all 6 queries" in text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_non_utf8_file_name(tmp_path):
    raw = os.path.join(os.fsencode(str(tmp_path)), b"bad\xff.jpg")
    with open(raw, "wb") as fh:
        Image.new("RGB", (40, 30), (1, 2, 3)).save(fh, "JPEG")
    path = os.fsdecode(raw)
    assert "\udcff" in path
    ok = _image(tmp_path / "ok.jpg")
    out = tmp_path / "out"
    text = write_dedupe_report(out, [_group(1, ok, (path, 0.91, MATCH_NEAR))], {path: path}).read_text(encoding="utf-8")
    assert "bad\ufffd.jpg" in text and "bad%FF.jpg" in text  # shown with U+FFFD, linked by its real bytes
    assert "no preview" not in text  # the thumbnail was made from the real file
    text = write_query_report(tmp_path / "q", [QueryResult(path, [Match(ok, 0.9, 1)])], {}).read_text(encoding="utf-8")
    assert "bad\ufffd.jpg" in text
    # a surrogate that surrogateescape cannot carry must not crash either
    write_query_report(tmp_path / "q3", [QueryResult("odd\ud800.jpg", [])], {"k\ud800": "v\udfff"})


def _browser():
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.mark.skipif(_browser() is None, reason="no chromium on PATH")
def test_dedupe_report_in_headless_browser(tmp_path, files):
    groups = [_group(1, files["a"], (files["hostile"], 0.97, MATCH_IDENTICAL_PIXELS), (files["b"], 0.8, MATCH_NEAR))]
    report = write_dedupe_report(tmp_path / "out", groups, {"Model": HOSTILE})
    cmd = [
        _browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    dom = proc.stdout
    assert "KEEP" in dom, proc.stderr[-2000:]
    # the name is text in the DOM (serialised escaped again), never an element
    assert HOSTILE_ESCAPED in dom
    assert '<img src="x"' not in dom and "onerror=" not in dom.replace(HOSTILE_ESCAPED, "")
