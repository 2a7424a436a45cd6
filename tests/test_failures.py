"""Every failure a user can cause (issue 15's table), one test or more per row: the exit code, one
line naming the path or the option, no traceback, no temporary file left, the index still usable.

Disk full and write-protected cases are made real where this machine allows (a small tmpfs,
chattr +i, a read-only bind mount, permission bits) and injected otherwise; see fsfaults.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import REPO_ROOT, make_photo
from fsfaults import full_disk, immutable_file, write_protected

from copyscan.cli import app
from copyscan.store import IndexStore

N_PHOTOS = 8


# ---- helpers ------------------------------------------------------------------------------------


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_failure(r, *fragments: str, code: int = 1) -> str:
    """Exit `code`, one line starting "error:" holding every fragment, no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert r.exit_code == code, f"exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    flat = " ".join(lines[0].split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in: {flat}"
    return flat


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files under the folders: atomic writes' ".NAME.XXXX.tmp", thumbnails' ".tmp-*"."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != "copyscan.lock"}


def assert_queryable(work: Path, idx: Path, expect_rows: int = N_PHOTOS) -> None:
    out = work / "q-check"
    r = cli("query", (work / "refs").resolve(), "--index", idx, "-o", out, "-j", "0", "-q", "-t", "-1", "-k", "1")
    assert r.exit_code == 0, r.output
    assert (out / "matches.csv").is_file()
    assert IndexStore(idx).read_table(["path"]).num_rows == expect_rows


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_path) -> Path:
    """refs/ (N_PHOTOS photos) and idx/, its index by the tiny model."""
    base = tmp_path_factory.mktemp("built")
    for i in range(N_PHOTOS):
        make_photo(base / "refs" / f"p{i}.jpg", size=(160, 120), seed=i)
    r = cli("index", base / "refs", "--index-dir", base / "idx", "--model", tiny_model_path, "-j", "0", "-q")
    assert r.exit_code == 0, r.output
    return base


@pytest.fixture
def work(built, tmp_path, monkeypatch) -> Path:
    """A private copy of `built`: idx/ copied, refs/ a link (resolved: the index holds the real path)."""
    shutil.copytree(built / "idx", tmp_path / "idx")
    os.symlink(built / "refs", tmp_path / "refs")
    monkeypatch.delenv("COPYSCAN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- thresholds, top-k, sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["dedupe", "query"])
@pytest.mark.parametrize("value", ["-5", "2", "inf", "-inf", "nan"])
def test_threshold_outside_the_score_range_is_refused(work, command, value):
    before = snapshot(work / "idx")
    r = cli(command, (work / "refs").resolve(), "--index-dir", work / "idx", "-o", work / "out", "-t", value, "-q", "-j", "0")
    text = assert_clean_failure(r, "--threshold")
    assert ("-1 to 1" in text) if value in ("-5", "2") else ("finite" in text)
    assert not (work / "out").exists()  # refused before any work
    assert snapshot(work / "idx") == before


@pytest.mark.parametrize("value", ["nan", "1.5"])
def test_calibrate_threshold_is_checked_before_any_work(work, value):
    r = cli("calibrate", (work / "refs").resolve(), "-t", value, "-o", work / "cal", "-q", "-j", "0")
    assert_clean_failure(r, "--threshold")
    assert not (work / "cal").exists()


def test_threshold_range_follows_score_normalisation():
    from copyscan.validate import BadOption, check_threshold, score_range

    assert score_range(None)[:2] == (-1.0, 1.0)
    assert score_range({"score_norm": True, "beta": 0.5})[:2] == (-1.5, 1.5)
    assert check_threshold(1.2, {"score_norm": True, "beta": 0.5}) == 1.2
    assert check_threshold(-1.0, None) == -1.0  # "keep every top-k match" stays valid
    with pytest.raises(BadOption, match="from -1.5 to 1.5"):
        check_threshold(1.6, {"score_norm": True, "beta": 0.5})
    with pytest.raises(BadOption, match="-1 to 1"):
        check_threshold(1.2, {"whiten": True, "score_norm": False})


def test_top_k_batch_size_and_beta_are_checked(work, tiny_model_path):
    from copyscan import api
    from copyscan.extraction import Extraction
    from copyscan.validate import BadOption

    for args, option in ((["-k", "0"], "--top-k"), (["-k", "100001"], "--top-k"), (["-b", "0"], "--batch-size"),
                         (["-j", "-1"], "--workers")):
        r = cli("query", (work / "refs").resolve(), "--index", work / "idx", "-o", work / "out", *args)
        assert r.exit_code == 2 and option in r.output and "Traceback" not in r.output, r.output
    r = cli("index", (work / "refs").resolve(), "--index-dir", work / "idx", "--model", tiny_model_path, "--beta", "nan", "-q")
    assert_clean_failure(r, "--beta", "finite")
    with pytest.raises(BadOption, match="--top-k"):
        api.query_folder((work / "refs").resolve(), index_dir=work / "idx", output=work / "out", top_k=0)
    with pytest.raises(BadOption, match="--batch-size"):
        api.index_folder((work / "refs").resolve(), index_dir=work / "idx", model=tiny_model_path,
                         extraction=Extraction(batch_size=10**9))


# ---- output folder: a file, write-protected, disk full ------------------------------------------------


@pytest.mark.parametrize("command", ["query", "dedupe"])
def test_output_folder_that_is_a_file(work, command):
    (work / "taken").write_text("a file of the user's\n")
    for out, blocker in ((work / "taken", "taken"), (work / "taken" / "sub", "taken")):
        r = cli(command, (work / "refs").resolve(), "--index-dir", work / "idx", "-o", out, "-q", "-j", "0")
        assert_clean_failure(r, str(work / blocker), "is a file, not a folder", "--output")
    assert (work / "taken").read_text() == "a file of the user's\n"
    assert leftovers(work) == []
    assert_queryable(work, work / "idx")


@pytest.mark.parametrize("command", ["query", "dedupe"])
def test_write_protected_output_folder(work, command, monkeypatch):
    out = work / "out"
    out.mkdir()
    (out / "matches.csv").write_text("old\n")
    (out / "groups.csv").write_text("old\n")
    before = snapshot(out)
    with write_protected(out, monkeypatch) as how:
        r = cli(command, (work / "refs").resolve(), "--index-dir", work / "idx", "-o", out, "-q", "-j", "0")
        text = assert_clean_failure(r, str(out), "--output")
        assert ("read-only" in text) if how == "ro-mount" else ("permission denied" in text), (how, text)
    assert snapshot(out) == before  # the previous outputs untouched
    assert leftovers(work) == []
    assert_queryable(work, work / "idx")


def test_disk_full_while_writing_dedupe_outputs(work, monkeypatch):
    before = snapshot(work / "idx")
    disk = work / "disk"
    # Room for a few thumbnails, not for all of them and the report.
    with full_disk(disk, monkeypatch, free_bytes=24 * 1024) as how:
        r = cli("dedupe", (work / "refs").resolve(), "--index-dir", work / "idx", "-o", disk / "out", "-q", "-j", "0", "-t", "0.5")
        assert_clean_failure(r, "no space left", str(disk), "--output")
        assert not (disk / "out").exists(), (how, sorted(p.name for p in (disk / "out").rglob("*")))
        assert leftovers(disk) == []
    assert snapshot(work / "idx") == before
    assert_queryable(work, work / "idx")


def test_disk_full_while_building_a_new_index(work, monkeypatch, tiny_model_path):
    disk = work / "disk"
    with full_disk(disk, monkeypatch, free_bytes=2 * 1024) as how:
        r = cli("index", (work / "refs").resolve(), "--index-dir", disk / "idx", "--model", tiny_model_path, "-q", "-j", "0")
        assert_clean_failure(r, "no space left", str(disk / "idx"), "--index-dir")
        assert leftovers(disk) == []
        # Nothing saved: nothing of the new index is left to trip a later run.
        assert not (disk / "idx").exists(), (how, sorted(str(p) for p in (disk / "idx").rglob("*")))
    r = cli("index", (work / "refs").resolve(), "--index-dir", work / "fresh", "--model", tiny_model_path, "-q", "-j", "0")
    assert r.exit_code == 0, r.output


# ---- write-protected index ------------------------------------------------------------------------


def test_unchanged_index_run_writes_nothing(work, tiny_model_path, monkeypatch):
    before = snapshot(work / "idx")
    r = cli("index", (work / "refs").resolve(), "--index-dir", work / "idx", "--model", tiny_model_path, "-q", "-j", "0")
    assert r.exit_code == 0 and f"{N_PHOTOS} unchanged" in r.output, r.output
    assert snapshot(work / "idx") == before  # not even skipped.csv or the manifest
    with write_protected(work / "idx", monkeypatch):
        r = cli("index", (work / "refs").resolve(), "--index-dir", work / "idx", "--model", tiny_model_path, "-q", "-j", "0")
        assert r.exit_code == 0 and f"{N_PHOTOS} unchanged" in r.output, r.output
        # dedupe of the same folder needs no write to the index either
        r = cli("dedupe", (work / "refs").resolve(), "--index-dir", work / "idx", "-o", work / "dd", "-q", "-j", "0")
        assert r.exit_code == 0 and (work / "dd" / "groups.csv").is_file(), r.output
    assert snapshot(work / "idx") == before


def test_write_protected_index_refuses_a_change_and_stays_usable(work, tiny_model_path, monkeypatch):
    more = work / "more"
    more.mkdir()
    make_photo(more / "new.jpg", size=(160, 120), seed=99)
    before = snapshot(work / "idx")
    with write_protected(work / "idx", monkeypatch) as how:
        r = cli("index", more, "--index-dir", work / "idx", "--model", tiny_model_path, "-q", "-j", "0")
        text = assert_clean_failure(r, str(work / "idx"), "--index-dir")
        assert ("read-only" in text) if how == "ro-mount" else ("permission denied" in text), (how, text)
    assert snapshot(work / "idx") == before
    assert leftovers(work / "idx") == []
    assert_queryable(work, work / "idx")


def test_failed_incremental_run_leaves_no_shard_that_query_reads(work, tiny_model_path, monkeypatch):
    """The manifest cannot be replaced (chattr +i): the new shard is written, cannot be listed,
    and is removed again; `query` reads what the manifest lists."""
    more = work / "more"
    more.mkdir()
    make_photo(more / "new.jpg", size=(160, 120), seed=99)
    shards_before = sorted(p.name for p in (work / "idx" / "shards").iterdir())
    with immutable_file(work / "idx" / "manifest.json", monkeypatch):
        r = cli("index", more, "--index-dir", work / "idx", "--model", tiny_model_path, "-q", "-j", "0")
        assert_clean_failure(r, str(work / "idx" / "manifest.json"), "--index-dir")
    assert sorted(p.name for p in (work / "idx" / "shards").iterdir()) == shards_before
    assert leftovers(work / "idx") == []
    assert_queryable(work, work / "idx")


def test_unlisted_shard_is_never_read_and_a_writer_adopts_or_drops_it(work, tiny_model_path):
    idx = work / "idx"
    store = IndexStore(idx)
    listed = store.shard_paths()
    # A shard a killed writer renamed into place but never listed (a copy of a real one).
    orphan = idx / "shards" / "part-000100.parquet"
    shutil.copyfile(listed[0], orphan)
    assert IndexStore(idx).shard_paths() == listed  # readers never see the orphan
    assert_queryable(work, idx)
    r = cli("index", (work / "refs").resolve(), "--index-dir", idx, "--model", tiny_model_path, "-q", "-j", "0")
    assert r.exit_code == 0, r.output
    # Adopted (same model, above the listed shards); it supersedes the shard it copies, which goes.
    assert IndexStore(idx).shard_paths()[-1] == orphan and listed[0] not in IndexStore(idx).shard_paths()
    # Below the listed ones it is a compaction leftover: deleted by the next writer.
    stale = idx / "shards" / "part-000050.parquet"
    shutil.copyfile(orphan, stale)
    r = cli("index", (work / "refs").resolve(), "--index-dir", idx, "--model", tiny_model_path, "-q", "-j", "0")
    assert r.exit_code == 0 and not stale.exists(), r.output
    assert_queryable(work, idx)


# ---- the manifest lost or damaged ---------------------------------------------------------------------


def test_shards_carry_the_model_identity(work):
    manifest = json.loads((work / "idx" / "manifest.json").read_text())
    for shard in IndexStore(work / "idx").shard_paths():
        meta = json.loads(pq.read_schema(shard).metadata[b"copyscan"])
        for key in ("name", "weights_sha256", "dim"):
            assert meta["model"][key] == manifest["model"][key]
        assert meta["preprocessing"] == manifest["preprocessing"]
    assert manifest["shards"] == [p.name for p in IndexStore(work / "idx").shard_paths()]


@pytest.mark.parametrize("damage", ["deleted", "truncated", "empty"])
def test_lost_or_damaged_manifest_is_rebuilt_from_the_shards(work, tiny_model_path, damage):
    idx = work / "idx"
    good = json.loads((idx / "manifest.json").read_text())
    if damage == "deleted":
        (idx / "manifest.json").unlink()
    else:
        text = (idx / "manifest.json").read_text()
        (idx / "manifest.json").write_text(text[: len(text) // 2] if damage == "truncated" else "")
    # A reader works from the shards (in memory), saying so; it writes nothing.
    r = cli("query", (work / "refs").resolve(), "--index", idx, "-o", work / "q", "-j", "0", "-q", "-t", "-1", "-k", "1")
    assert r.exit_code == 0 and "rebuilt from" in r.output and str(idx / "manifest.json") in r.output, r.output
    # A writer saves the rebuilt manifest.
    r = cli("index", (work / "refs").resolve(), "--index-dir", idx, "--model", tiny_model_path, "-q", "-j", "0")
    assert r.exit_code == 0 and f"{N_PHOTOS} unchanged" in r.output, r.output
    rebuilt = json.loads((idx / "manifest.json").read_text())
    assert rebuilt["model"] == good["model"] and rebuilt["shards"] == good["shards"]
    assert rebuilt["counts"]["images"] == N_PHOTOS and rebuilt["faiss"]["count"] == N_PHOTOS
    assert_queryable(work, idx)


def test_manifest_lost_then_another_model_is_still_refused(work, other_model_path):
    idx = work / "idx"
    (idx / "manifest.json").unlink()
    r = cli("index", (work / "refs").resolve(), "--index-dir", idx, "--model", other_model_path, "-q", "-j", "0")
    assert_clean_failure(r, "holds descriptors of model tiny (32-d", "not tiny16 (16-d", "--index-dir")
    assert json.loads((idx / "manifest.json").read_text())["model"]["dim"] == 32  # rebuilt, still the truth
    r = cli("query", (work / "refs").resolve(), "--index", idx, "--model", other_model_path, "-o", work / "q", "-j", "0", "-q")
    assert_clean_failure(r, "holds descriptors of model tiny")
    assert_queryable(work, idx)


def test_shards_of_two_models_without_a_manifest_are_refused(work, other_model_path):
    other = work / "other-idx"
    r = cli("index", (work / "refs").resolve(), "--index-dir", other, "--model", other_model_path, "-q", "-j", "0")
    assert r.exit_code == 0, r.output
    idx = work / "idx"
    shutil.copyfile(IndexStore(other).shard_paths()[0], idx / "shards" / "part-000077.parquet")
    (idx / "manifest.json").unlink()
    for command in ("query", "index"):
        r = cli(command, (work / "refs").resolve(), "--index-dir", idx, "-o", work / "q", "-q", "-j", "0") if command == "query" else \
            cli(command, (work / "refs").resolve(), "--index-dir", idx, "--model", other_model_path, "-q", "-j", "0")
        assert_clean_failure(r, "two models", "tiny (32-d", "tiny16 (16-d", "part-000077.parquet")


# ---- a training state given as a model ------------------------------------------------------------


def test_training_state_as_model_names_the_model_file(work, tiny_model_path):
    import torch

    run = work / "run"
    run.mkdir()
    torch.save({"step": 3, "student": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {}, "rng": {}}, run / "state.pt")
    shutil.copyfile(tiny_model_path, run / "model.safetensors")
    r = cli("index", (work / "refs").resolve(), "--index-dir", work / "new-idx", "--model", run / "state.pt", "-q", "-j", "0")
    assert_clean_failure(r, str(run / "state.pt"), "is a training state", f"use {run / 'model.safetensors'}")
    assert "corrupted" not in r.output


# ---- decode workers die with their parent ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_decode_workers_exit_when_index_is_killed(tmp_path, tiny_model_path):
    for i in range(400):
        make_photo(tmp_path / "photos" / f"p{i:03d}.jpg", size=(96, 72), seed=i)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COPYSCAN_FLUSH_ROWS": "4"}
    env.pop("COPYSCAN_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "copyscan", "index", str(tmp_path / "photos"), "--index-dir", str(tmp_path / "idx"),
         "--model", str(tiny_model_path), "-q", "-j", "2", "-b", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        shards = tmp_path / "idx" / "shards"
        # Killed mid-run (a shard saved: the pipeline is flowing), when workers wait on their
        # parent: killed at start-up they die of the broken pipe anyway.
        while time.monotonic() < deadline and proc.poll() is None and not (
                len(workers) >= 2 and shards.is_dir() and any(shards.glob("*.parquet"))):
            workers = _children(proc.pid)
            time.sleep(0.02)
        assert len(workers) >= 2 and proc.poll() is None, "the run ended before it could be killed mid-way"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 1.0  # without a parent-death signal they live on ~2-5 s
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.02)
        assert not any(_alive(w) for w in workers), "decode workers outlived their parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
