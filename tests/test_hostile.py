"""A hostile folder through the real command (`python -m copyscan` in a subprocess).

The corpus (built by the `hostile` fixture, once per module) mixes good images in every awkward
form (animated GIF, CMYK, 16-bit, palette, alpha, EXIF-rotated, names with spaces, newlines,
non-UTF-8 bytes, unicode, quotes and HTML markup, a symlink to a file, a folder symlink loop)
with files that cannot be used (empty, truncated JPEG and PNG, text named .jpg, a PNG declaring
60000 x 60000 pixels, no read permission, a dangling symlink, a symlink to itself).

`index`, `query` and `dedupe` must exit 0, embed every good image, list every bad file with its
reason (IDX/skipped.csv and the printed summary), write CSV that parses back, HTML with every
name escaped, and leave the folder exactly as it was.

Names in the CSV files: a newline is kept (the field is quoted, as RFC 4180 and the csv module
do); bytes that are not valid UTF-8 show as U+FFFD (README, "Output formats"). The exact bytes
stay in the index (`path_bytes`) and in skipped.csv (`path_hex`).

Read permission: as root, a chmod 000 file is readable anyway. The commands then run as root
without the two capabilities that bypass file permissions (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, dropped from the bounding set before exec), so the kernel denies the read
as it would for any user. Where that cannot be done, the permission case is skipped with a reason.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT, make_photo, photo_array

from copyscan.discover import display_path
from copyscan.store import IndexStore, paths_of

HTML_NAME = b"<img src=x onerror=alert(1)>.jpg"
SIZE = (96, 72)

# (name, what the skip reason must contain)
BAD_FILES = {
    b"zero.jpg": "empty",
    b"truncated.jpg": "truncated",
    b"truncated.png": "truncated",
    b"text.jpg": "not an image",
    b"bomb.png": "too many pixels",
    b"dangling.jpg": "dangling symlink",
    b"self-loop.jpg": "cannot stat",
}
UNREADABLE = b"no-permission.jpg"


# ---- running copyscan with file permissions enforced ----------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_bypass() -> None:
    """In the child before exec: remove root's power to read files it has no permission for."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


def _preexec():
    return _drop_permission_bypass if os.geteuid() == 0 else None


def _permissions_enforced(folder: Path) -> str | None:
    """None when a chmod 000 file is unreadable to the commands we start; else why not."""
    probe = folder / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        p = subprocess.run(
            [sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], preexec_fn=_preexec(), capture_output=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot start a process without the permission bypass: {exc}"
    finally:
        probe.unlink()
    if p.returncode == 97:
        return "running as root and the capability bounding set cannot be changed here"
    if p.returncode == 0:
        return "a chmod 000 file stays readable to this user"
    return None


def copyscan(*args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "copyscan", *[os.fspath(a) for a in args]],
        cwd=cwd, env=env, preexec_fn=_preexec(), capture_output=True, timeout=300,
    )


# ---- the corpus -----------------------------------------------------------------------------------


def _write_animated_gif(path: bytes) -> None:
    frames = [Image.fromarray(photo_array(SIZE, seed=40 + i)).convert("P") for i in range(3)]
    with open(path, "wb") as fh:
        frames[0].save(fh, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _write_rotated_jpeg(path: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    make_photo(path, size=SIZE, seed=31, exif=exif.tobytes())


def _write_bomb_png(path: bytes) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1024))) + chunk(b"IEND", b""))


def build_corpus(root: bytes, unreadable: bool) -> tuple[set[bytes], dict[bytes, str]]:
    """Writes the hostile folder; returns (good image paths, bad path -> reason fragment)."""
    j = lambda name: os.path.join(root, name)  # noqa: E731
    os.makedirs(root)
    make_photo(j(b"plain.jpg"), size=SIZE, seed=1)
    make_photo(j(b"name with spaces.jpg"), size=SIZE, seed=2)
    make_photo(j("фото 日本 ñ.webp".encode()), size=SIZE, seed=3)
    make_photo(j(b"cmyk.jpg"), size=SIZE, seed=4, mode="CMYK")
    make_photo(j(b"sixteen-bit.png"), size=SIZE, seed=5, mode="I;16")
    make_photo(j(b"palette.png"), size=SIZE, seed=6, mode="P")
    make_photo(j(b"alpha.png"), size=SIZE, seed=7, mode="RGBA")
    make_photo(j(b"grey-alpha.png"), size=SIZE, seed=8, mode="LA")
    _write_animated_gif(j(b"animated.gif"))
    _write_rotated_jpeg(j(b"rotated.jpg"))
    # Byte copies of plain.jpg under hostile names: exact duplicates, so every one of them lands
    # in dedupe's groups (and so in its CSV and HTML) whatever the model.
    os.makedirs(j(b"sub dir"))
    for name in (HTML_NAME, b"new\nline.jpg", b"caf\xe9 latin-1.jpg", b'sub dir/"quoted", comma.jpg', b"tab\there.jpg"):
        shutil.copyfile(j(b"plain.jpg"), j(name))
    os.symlink(b"plain.jpg", j(b"link to plain.jpg"))
    os.makedirs(j(b"loop"))
    os.symlink(b"..", j(b"loop/back"))  # a folder symlink loop: the walk must end
    good = {
        j(n) for n in (
            b"plain.jpg", b"name with spaces.jpg", "фото 日本 ñ.webp".encode(), b"cmyk.jpg", b"sixteen-bit.png",
            b"palette.png", b"alpha.png", b"grey-alpha.png", b"animated.gif", b"rotated.jpg", HTML_NAME,
            b"new\nline.jpg", b"caf\xe9 latin-1.jpg", b'sub dir/"quoted", comma.jpg', b"tab\there.jpg", b"link to plain.jpg",
        )
    }

    with open(j(b"zero.jpg"), "wb"):
        pass
    jpeg = Path(os.fsdecode(j(b"plain.jpg"))).read_bytes()
    Path(os.fsdecode(j(b"truncated.jpg"))).write_bytes(jpeg[: len(jpeg) // 2])
    png = Path(os.fsdecode(j(b"palette.png"))).read_bytes()
    Path(os.fsdecode(j(b"truncated.png"))).write_bytes(png[: len(png) // 2])
    Path(os.fsdecode(j(b"text.jpg"))).write_text("not a picture, just text\n" * 10)
    _write_bomb_png(j(b"bomb.png"))
    os.symlink(b"missing.jpg", j(b"dangling.jpg"))
    os.symlink(b"self-loop.jpg", j(b"self-loop.jpg"))
    bad = {j(name): reason for name, reason in BAD_FILES.items()}
    if unreadable:
        make_photo(j(UNREADABLE), size=SIZE, seed=9)
        os.chmod(j(UNREADABLE), 0)
        bad[j(UNREADABLE)] = "permission denied"
    return good, bad


def snapshot(root: bytes) -> dict[bytes, tuple]:
    """Every entry under root, links not followed: mode, size, mtime and content or link target."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if os.path.islink(path):
                body = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as fh:  # the test runs with the rights to read everything
                    body = hashlib.sha256(fh.read()).hexdigest()
            else:
                body = None
            state[path] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return state


@dataclass
class HostileRun:
    root: bytes
    index_dir: Path
    good: set[bytes]
    bad: dict[bytes, str]
    permission_note: str | None  # why the unreadable file is not part of the corpus, if it is not
    before: dict
    runs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    after: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model_path) -> HostileRun:
    base = tmp_path_factory.mktemp("hostile")
    note = _permissions_enforced(base)
    root = os.path.join(os.fsencode(base), b"photos")
    good, bad = build_corpus(root, unreadable=note is None)
    run = HostileRun(root, base / "idx", good, bad, note, snapshot(root))
    env = {
        **os.environ, "PYTHONPATH": str(REPO_ROOT), "COPYSCAN_CACHE": str(base / "cache"), "HOME": str(base),
        "COLUMNS": "400",
    }
    env.pop("COPYSCAN_DEBUG", None)
    common = ("--index-dir", run.index_dir, "--model", tiny_model_path, "-q")
    run.runs["index"] = copyscan("index", root, *common, "-j", "2", cwd=base, env=env)
    run.runs["query"] = copyscan("query", root, *common, "-o", base / "query", "-t", "-1", "-k", "3", "-j", "0", cwd=base, env=env)
    run.runs["dedupe"] = copyscan("dedupe", root, *common, "-o", base / "dedupe", "-j", "0", cwd=base, env=env)
    run.after = snapshot(root)
    return run


def _out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def _shown(path: bytes) -> str:
    """How copyscan writes a path in CSV, HTML and the summary."""
    return display_path(os.fsdecode(path))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:  # strict UTF-8: raises if it is not
        return list(csv.DictReader(fh))


# ---- the checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["index", "query", "dedupe"])
def test_every_command_exits_0_without_a_traceback(hostile, command):
    p = hostile.runs[command]
    assert p.returncode == 0, _out(p)
    assert "Traceback" not in _out(p) and "internal error" not in _out(p)


def test_every_good_image_is_embedded_once(hostile):
    table = IndexStore(hostile.index_dir).read_table(["width"])
    paths = paths_of(table)
    assert len(paths) == len(set(paths))
    assert set(paths) == {os.fsdecode(p) for p in hostile.good}
    rotated = table.column("width").to_pylist()[paths.index(os.fsdecode(os.path.join(hostile.root, b"rotated.jpg")))]
    assert rotated == SIZE[1]  # shown upright: the EXIF rotation swapped width and height


def test_every_bad_file_is_in_skipped_csv_with_its_reason(hostile):
    rows = _read_csv(hostile.index_dir / "skipped.csv")
    reasons = {bytes.fromhex(r["path_hex"]): r["reason"] for r in rows}
    assert set(reasons) == set(hostile.bad)
    for path, fragment in hostile.bad.items():
        assert fragment in reasons[path], (path, reasons[path])
    for r in rows:
        assert r["path"] == _shown(bytes.fromhex(r["path_hex"]))


def test_every_bad_file_is_in_the_printed_summary(hostile):
    out = hostile.runs["index"].stdout.decode("utf-8")
    assert f"{len(hostile.bad)} files skipped" in out
    for path, fragment in hostile.bad.items():
        line = next((ln for ln in out.splitlines() if _shown(path) in ln), None)
        assert line is not None and fragment in line, (path, out)
    # dedupe repeats the index summary, with the files it could not use
    assert f"{len(hostile.bad)} files skipped" in hostile.runs["dedupe"].stdout.decode("utf-8")


def test_unreadable_file_is_skipped_for_lack_of_permission(hostile):
    if hostile.permission_note:
        pytest.skip(hostile.permission_note)
    path = os.path.join(hostile.root, UNREADABLE)
    assert hostile.bad[path] == "permission denied"
    assert os.fsdecode(path) not in paths_of(IndexStore(hostile.index_dir).read_table())


def test_matches_csv_parses_and_names_round_trip(hostile):
    rows = _read_csv(hostile.index_dir.parent / "query" / "matches.csv")
    queried = {r["query_path"] for r in rows}
    assert queried == {_shown(p) for p in hostile.good}  # newline, tab, quotes, comma kept exactly
    assert all(r["reference_path"] in queried for r in rows)
    assert _shown(os.path.join(hostile.root, b"new\nline.jpg")) in queried
    latin = _shown(os.path.join(hostile.root, b"caf\xe9 latin-1.jpg"))
    assert "\ufffd" in latin and latin in queried  # the documented replacement for a non-UTF-8 byte


def test_groups_csv_and_json_parse_and_names_round_trip(hostile):
    import json

    out = hostile.index_dir.parent / "dedupe"
    rows = _read_csv(out / "groups.csv")
    in_groups = {r["path"] for r in rows}
    copies = [b"plain.jpg", HTML_NAME, b"new\nline.jpg", b"caf\xe9 latin-1.jpg", b'sub dir/"quoted", comma.jpg', b"tab\there.jpg",
              b"link to plain.jpg"]
    for name in copies:
        assert _shown(os.path.join(hostile.root, name)) in in_groups, name
    assert in_groups <= {_shown(p) for p in hostile.good}
    doc = json.loads((out / "groups.json").read_text(encoding="utf-8"))
    # a symlink is another name of its file: listed with it (aliases), never as its copy
    names = {n["path"] for g in doc["groups"] for m in g["members"] for n in [m, *m["aliases"]]}
    assert names == in_groups
    # every name's exact bytes come back from path_b64, in the CSV and the JSON alike
    from copyscan.same_files import path_from_b64

    exact = {os.fsencode(path_from_b64(r["path_b64"])) for r in rows}
    assert exact <= set(hostile.good) and os.path.join(hostile.root, b"caf\xe9 latin-1.jpg") in exact
    assert exact == {os.fsencode(path_from_b64(n["path_b64"])) for g in doc["groups"] for m in g["members"] for n in [m, *m["aliases"]]}


@pytest.mark.parametrize("report", ["query", "dedupe"])
def test_html_reports_escape_every_name(hostile, report):
    html = (hostile.index_dir.parent / report / "report.html").read_text(encoding="utf-8")
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    assert "<script" not in html.lower()
    assert "onerror=" not in html.replace("onerror=alert(1)&gt;", "")  # only inside escaped text
    # Thumbnails are named by a hash, never by the user's file name.
    for thumb in (hostile.index_dir.parent / report / "thumbs").iterdir():
        assert thumb.name.isascii() and "<" not in thumb.name


def test_users_folder_is_unchanged(hostile):
    assert hostile.after == hostile.before
