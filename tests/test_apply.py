"""Acting on dedupe results (issue 13): apply moves exactly the planned copies with a journal,
undo restores the folder byte for byte and mtime for mtime, also after a kill -9 mid-apply.
Plus the safety rules: changed files, protected folders, decisions, no overwrite, links, exact
paths, the trash, and dedupe's own index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_photo
from test_cli import calibrated_model, cli, make_library, read_csv  # noqa: F401  (fixture)

from copyscan.act import execute, make_plan, undo
from copyscan.act.files import copy_across, digest
from copyscan.groups_file import Decision, read_decisions, read_dedupe_output, write_decisions
from copyscan.same_files import path_from_b64


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COPYSCAN_INDEX_DIR", raising=False)
    monkeypatch.delenv("COPYSCAN_APPLY_DELAY", raising=False)
    return Path(os.getcwd())


def state(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder`: bytes and mtime (and a symlink's target)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_dir():
            out[str(p)] = ("dir", st.st_mtime_ns)
        else:
            out[str(p)] = ("file", p.read_bytes(), st.st_mtime_ns, st.st_nlink)
    return out


def planned_copies(out: Path) -> set[str]:
    doc = json.loads((out / "groups.json").read_text())
    paths = set()
    for g in doc["groups"]:
        for m in g["members"]:
            if m["role"] == "copy":
                paths.add(path_from_b64(m["path_b64"]))
                paths.update(path_from_b64(a["path_b64"]) for a in m["aliases"])
    return paths


@pytest.fixture
def deduped(cwd, calibrated_model):
    lib = make_library(cwd / "photos", bad=False)
    cli("dedupe", "./photos", "--model", calibrated_model, "-j", "0", "-q", "-o", "dup")
    return cwd, lib


def test_apply_moves_exactly_the_plan_and_undo_restores_everything(deduped):
    cwd, lib = deduped
    before = state(cwd / "photos")
    copies = planned_copies(cwd / "dup")
    assert copies and str(lib["p03"]) not in copies  # the original of the byte copy stays

    r = cli("apply", "dup", "--dry-run", "--move-to", "moved")
    assert "dry run" in r.output and state(cwd / "photos") == before

    r = cli("apply", "dup", "--move-to", "moved", "--yes")
    assert f"moved {len(copies)} files" in r.output and "freed" in r.output
    after = {p for p, v in state(cwd / "photos").items() if v[0] != "dir"}
    gone = {p for p, v in before.items() if v[0] != "dir"} - after
    assert gone == copies, "moved something else than the plan"
    for p in copies:  # relative paths kept, bytes and mtime kept
        dst = cwd / "moved" / Path(p).relative_to(cwd / "photos")
        assert dst.read_bytes() == before[p][1] and os.lstat(dst).st_mtime_ns == before[p][2]
    journal = next((cwd / "dup").glob("journal-*.jsonl"))

    r = cli("undo", journal)
    assert f"restored {len(copies)} files" in r.output
    assert state(cwd / "photos") == before
    assert not (cwd / "moved").exists()  # the folders apply made are gone again
    cli("undo", journal)  # twice is harmless
    assert state(cwd / "photos") == before


def test_kill_9_mid_apply_then_undo_restores_everything(deduped):
    cwd, _ = deduped
    before = state(cwd / "photos")
    env = {**os.environ, "COPYSCAN_APPLY_DELAY": "0.5", "PYTHONPATH": os.pathsep.join(sys.path)}
    journal = cwd / "j.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "copyscan", "apply", "dup", "--move-to", "moved", "--yes",
                             "--journal", str(journal)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # at least one move done, more to come
        if journal.exists() and journal.read_text().count('"op": "done"') >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = journal.read_text().count('"op": "done"')
    assert 1 <= done < len(planned_copies(cwd / "dup")), "the kill did not land mid-way"
    assert state(cwd / "photos") != before
    cli("undo", journal)
    assert state(cwd / "photos") == before


def test_changed_protected_decided_and_occupied_files_stay(deduped, tmp_path):
    cwd, lib = deduped
    run = read_dedupe_output(cwd / "dup")
    copies = sorted(p for p in planned_copies(cwd / "dup") if "/copies/" not in p)
    assert len(copies) >= 3
    changed, occupied, rejected = copies[0], copies[1], copies[2]
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))  # touched since the dedupe
    dst = cwd / "moved" / Path(occupied).relative_to(cwd / "photos")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"already here")
    gid = next(r.group_id for rs in run.groups.values() for r in rs if r.path == rejected)
    write_decisions(cwd / "dup" / "decisions.csv", [Decision(gid, rejected, "not-a-copy")])
    assert read_decisions(cwd / "dup" / "decisions.csv", run)[0].decision == "not-a-copy"
    r = cli("apply", "dup", "--move-to", "moved", "--yes", "--protect", cwd / "photos" / "copies")
    assert Path(changed).exists() and Path(occupied).exists() and Path(rejected).exists()
    assert dst.read_bytes() == b"already here"  # never overwritten
    assert "changed since the dedupe" in r.output and "already exists" in r.output
    assert Path(lib["bytecopy"]).exists()  # in the protected folder
    kept = {r.path for rs in run.groups.values() for r in rs if r.role == "keep"}
    assert all(Path(p).exists() for p in kept)


def test_decision_changes_the_kept_image(deduped):
    cwd, lib = deduped
    run = read_dedupe_output(cwd / "dup")
    gid, records = next((g, rs) for g, rs in run.groups.items() if any(r.path == str(lib["half"]) for r in rs))
    old_keep = next(r.path for r in records if r.role == "keep")
    write_decisions(cwd / "dup" / "decisions.csv", [Decision(gid, str(lib["half"]), "keep"), Decision(gid, old_keep, "copy")])
    cli("apply", "dup", "--move-to", "moved", "--yes")
    assert lib["half"].exists() and not Path(old_keep).exists()


def test_a_group_with_nothing_left_is_not_touched(deduped):
    cwd, _ = deduped
    run = read_dedupe_output(cwd / "dup")
    gid, records = next(iter(run.groups.items()))
    keep = next(r.path for r in records if r.role == "keep")
    plan = make_plan(run, [Decision(gid, keep, "copy")], move_to=cwd / "moved")
    assert all(a.group_id != gid for a in plan.actions)
    assert any("nothing would stay" in why for _, why in plan.left)


def test_move_to_inside_the_folder_is_refused(deduped):
    cwd, _ = deduped
    r = cli("apply", "dup", "--move-to", "photos/dups", "--yes", code=1)
    assert "inside the deduped folder" in r.output
    r = cli("apply", "dup", "--yes", code=1)
    assert "--move-to" in r.output and "--trash" in r.output


def test_apply_without_a_terminal_asks_for_yes(deduped):
    cwd, _ = deduped
    before = state(cwd / "photos")
    r = cli("apply", "dup", "--move-to", "moved", code=1)
    assert "--yes" in r.output and state(cwd / "photos") == before


def test_trash_and_undo(deduped):
    pytest.importorskip("send2trash")
    cwd, _ = deduped
    # send2trash reads XDG_DATA_HOME when imported: a process of its own, with the home trash
    # inside this test's folder
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg"), "PYTHONPATH": os.pathsep.join(sys.path)}
    before = state(cwd / "photos")
    copies = planned_copies(cwd / "dup")
    r = subprocess.run([sys.executable, "-m", "copyscan", "apply", "dup", "--trash", "--yes", "--journal", "j.jsonl"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert f"moved {len(copies)} files" in r.stdout, r.stdout + r.stderr
    assert len(list((cwd / "xdg" / "Trash" / "files").iterdir())) == len(copies)
    r = subprocess.run([sys.executable, "-m", "copyscan", "undo", "j.jsonl"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert state(cwd / "photos") == before
    assert list((cwd / "xdg" / "Trash" / "info").iterdir()) == []


def test_copy_across_devices_verifies_and_keeps_mtime(tmp_path):
    src = make_photo(tmp_path / "a.jpg", seed=3)
    os.utime(src, ns=(1, 1_234_567_890_123_456_789))
    dst = tmp_path / "b.jpg"
    copy_across(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes() and os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    with pytest.raises(FileExistsError):  # O_EXCL: never overwrites
        copy_across(str(src), str(dst))
    link = tmp_path / "l.jpg"
    os.symlink("a.jpg", link)
    copy_across(str(link), str(tmp_path / "l2.jpg"))
    assert os.readlink(tmp_path / "l2.jpg") == "a.jpg"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_apply_across_devices(deduped):
    cwd, _ = deduped
    import tempfile

    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    if os.stat(other).st_dev == os.stat(cwd).st_dev:
        pytest.skip("/dev/shm is on the same device here")
    before = state(cwd / "photos")
    cli("apply", "dup", "--move-to", other / "moved", "--yes", "--journal", "j.jsonl")
    journal = (cwd / "j.jsonl").read_text()
    assert '"how": "copy"' in journal
    cli("undo", "j.jsonl")
    assert state(cwd / "photos") == before


def test_links_are_one_file_and_move_together(cwd, calibrated_model):
    photos = cwd / "photos"
    orig = make_photo(photos / "original.jpg", size=(256, 192), seed=5)
    os.symlink("original.jpg", photos / "x.jpg")
    os.link(orig, photos / "hard.jpg")
    make_photo(photos / "other.jpg", size=(192, 144), seed=6)
    cli("dedupe", "./photos", "--model", calibrated_model, "-j", "0", "-q", "-o", "dup")
    assert json.loads((cwd / "dup" / "groups.json").read_text())["groups"] == []  # a file and its links: no pair

    # with a real copy, the file and its names go (or stay) together
    from PIL import Image

    with Image.open(orig) as im:
        im.resize((128, 96)).save(photos / "small.jpg", quality=95)
        im.save(photos / "zz_resave.jpg", quality=50)
    cli("dedupe", "./photos", "--model", calibrated_model, "-j", "0", "-q", "-o", "dup")
    header, rows = read_csv(cwd / "dup" / "groups.csv")
    assert "path_b64" in header
    roles = {r["path"]: (r["role"], r["match"]) for r in rows}
    names = {str(photos / n) for n in ("original.jpg", "x.jpg", "hard.jpg")}
    assert names <= set(roles)
    assert len({roles[n][0] for n in names}) == 1, "names of one file got different roles"
    assert sum(roles[n][1] == "same-file" for n in names) == 2


def test_non_utf8_path_is_kept_exactly_and_acted_on(cwd, calibrated_model):
    photos = cwd / "photos"
    make_photo(photos / "p.jpg", size=(256, 192), seed=7)
    raw = os.fsencode(str(photos)) + b"/caf\xe9-copy.jpg"
    from PIL import Image

    with Image.open(photos / "p.jpg") as im:
        im.resize((128, 96)).save(raw.decode("utf-8", "surrogateescape"), "JPEG", quality=95)
    cli("dedupe", "./photos", "--model", calibrated_model, "-j", "0", "-q", "-o", "dup")
    copies = planned_copies(cwd / "dup")
    assert {os.fsencode(p) for p in copies} == {raw}
    _, rows = read_csv(cwd / "dup" / "groups.csv")
    assert any(os.fsencode(path_from_b64(r["path_b64"])) == raw for r in rows)
    cli("apply", "dup", "--move-to", "moved", "--yes")
    assert os.path.exists(os.fsencode(str(cwd)) + b"/moved/caf\xe9-copy.jpg") and not os.path.exists(raw)


def test_dedupe_keeps_its_own_index_apart_from_query(cwd, calibrated_model):
    make_photo(cwd / "refs" / "r.jpg", seed=11)
    lib = make_library(cwd / "photos", bad=False)
    cli("index", "./refs", "--model", calibrated_model, "-j", "0", "-q")
    r = cli("dedupe", "./photos", "-j", "0", "-q", "--model", calibrated_model, "-o", "dup")
    assert ".copyscan/dedupe/photos-" in r.output.replace(os.sep, "/")
    cli("query", "./photos", "-j", "0", "-q", "--threshold", "0.75")
    _, rows = read_csv(cwd / "copyscan-query" / "matches.csv")
    assert not any(r["reference_path"].startswith(str(cwd / "photos")) for r in rows), "dedupe's folder leaked into the index"
    assert lib


def test_rejected_pair_is_not_proposed_again(deduped):
    cwd, lib = deduped
    run = read_dedupe_output(cwd / "dup")
    gid = next(g for g, rs in run.groups.items() if any(r.path == str(lib["q60"]) for r in rs))
    from copyscan.review import save_decisions

    from copyscan.same_files import path_to_b64

    save_decisions(run, [{"group_id": gid, "path_b64": path_to_b64(str(lib["q60"])), "decision": "not-a-copy"}])
    cli("dedupe", "./photos", "-j", "0", "-q", "-o", "dup2")
    again = read_dedupe_output(cwd / "dup2")
    # a new run into the same OUT never applies the old run's group numbers
    cli("dedupe", "./photos", "-j", "0", "-q", "-o", "dup")
    assert not (cwd / "dup" / "decisions.csv").exists() and (cwd / "dup" / "decisions-previous.csv").exists()
    together = [rs for rs in again.groups.values() if {str(lib["q60"]), str(lib["p01"])} <= {r.path for r in rs}]
    assert not together, "a pair marked not-a-copy was proposed again"


def test_undo_refuses_a_file_that_is_not_a_journal(tmp_path):
    (tmp_path / "x.jsonl").write_text("hello\n")
    r = cli("undo", tmp_path / "x.jsonl", code=1)
    assert "not a copyscan apply journal" in r.output


def test_execute_and_undo_api(deduped):
    cwd, _ = deduped
    before = state(cwd / "photos")
    run = read_dedupe_output(cwd / "dup")
    plan = make_plan(run, [], move_to=cwd / "m")
    res = execute(plan, cwd / "j.jsonl")
    assert len(res.moved) == len(plan.actions) and res.bytes_freed == plan.bytes
    for a in plan.actions:
        assert digest(a.dst) == a.content_hash or a.alias_of
    u = undo(cwd / "j.jsonl")
    assert u.restored == len(plan.actions) and not u.problems
    assert state(cwd / "photos") == before
