"""Interrupted, concurrent and refused runs of `copyscan index`, and safe loading of weights.

* SIGKILL at seeded random moments of real `python -m copyscan index` runs (small shards through
  COPYSCAN_FLUSH_ROWS), then a run that finishes: every image exactly once, every shard readable,
  the manifest valid and in step with the shards.
* Ctrl-C (SIGINT to the process group, as a terminal sends it): exit 130, a message saying how to
  resume, finished shards kept.
* A second writer on one index folder fails with a clear message; the index is not harmed.
* An index of another format version: one clear line, exit 1. (A garbage manifest is rebuilt from
  the shards: test_failures.py.)
* Weights never run code: torch.load only with weights_only=True; a pickle named .pt is refused
  by the TorchScript loader without being executed; a URL is not a model.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import REPO_ROOT, make_photo

from copyscan.cli import app
from copyscan.store import FORMAT_VERSION, SHARD_RE, IndexStore, paths_of

FLUSH_ROWS = 8
PHOTO = (160, 120)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    # Shared by the module's runs: the tiny model's ONNX export is made once.
    return tmp_path_factory.mktemp("cache")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COPYSCAN_CACHE": str(cache), "COPYSCAN_FLUSH_ROWS": str(FLUSH_ROWS)}
    env.pop("COPYSCAN_DEBUG", None)
    env.update(extra)
    return env


def _photos(folder: Path, n: int) -> set[str]:
    return {str(make_photo(folder / f"d{i // 50}" / f"img{i:03d}.jpg", size=PHOTO, seed=i)) for i in range(n)}


class Run:
    """`copyscan index` in its own process group, output to files (no pipe to fill up)."""

    def __init__(self, tmp: Path, name: str, folder: Path, index_dir: Path, model: Path, env: dict[str, str], workers: int = 2):
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        cmd = [sys.executable, "-m", "copyscan", "index", str(folder), "--index-dir", str(index_dir), "--model", str(model),
               "-q", "-b", str(FLUSH_ROWS), "-j", str(workers)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            # SIGINT back to its default in the child: a test run started in the background by a
            # non-interactive shell inherits SIGINT ignored, which Python then keeps ignoring, and
            # a terminal's Ctrl-C never is.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def _shard_names(index_dir: Path) -> set[str]:
    shards = index_dir / "shards"
    return {p.name for p in shards.iterdir() if SHARD_RE.match(p.name)} if shards.is_dir() else set()


def _wait_for_new_shard(run: Run, index_dir: Path, seen: set[str], timeout: float = 120) -> bool:
    """True once a shard not in `seen` exists (the run is embedding); False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _shard_names(index_dir) - seen:
            return True
        if run.proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"no progress in {timeout} s:\n{run.output()}")


def _assert_consistent(index_dir: Path) -> list[str]:
    """The index as a killed run may leave it: readable, each image at most once. Returns the paths."""
    store = IndexStore(index_dir)
    manifest = json.loads((index_dir / "manifest.json").read_text())  # valid JSON, never half written
    assert store.read_manifest()["model"]["dim"] == manifest["model"]["dim"] == 32
    raw: list[str] = []
    for shard in store.shard_paths():
        table = pq.read_table(shard)  # every shard readable on its own
        assert table.num_rows > 0
        raw += [os.fsdecode(b) for b in table.column("path_bytes").to_pylist()]
    assert len(raw) == len(set(raw)), "an image embedded twice"
    assert sorted(paths_of(store.read_table(["path"]))) == sorted(raw)
    return raw


def _assert_complete(index_dir: Path, expected: set[str]) -> None:
    raw = _assert_consistent(index_dir)
    assert set(raw) == expected
    plain = pq.read_table(index_dir / "shards")  # plain pyarrow over the folder, no copyscan
    plain_paths = [os.fsdecode(b) for b in plain.column("path_bytes").to_pylist()]
    assert len(plain_paths) == len(set(plain_paths)) == len(expected)
    manifest = IndexStore(index_dir).read_manifest()
    shards = IndexStore(index_dir).shard_paths()
    assert manifest["counts"]["images"] == len(expected)
    assert manifest["counts"]["shards"] == len(shards)
    assert manifest["faiss"]["count"] == len(expected)
    assert manifest["faiss"]["shards_fingerprint"] == IndexStore(index_dir).shard_fingerprint()
    leftovers = [p for p in index_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], "temporary files left behind by the killed runs were not cleaned up"


# ---- SIGKILL -------------------------------------------------------------------------------------


@pytest.mark.slow  # four interpreter starts (~40 s on 2 busy cores); Ctrl-C below covers resume in CI
def test_sigkill_at_random_moments_then_a_run_that_finishes(tmp_path, tiny_model_path, cache_dir):
    expected = _photos(tmp_path / "photos", 720)
    idx = tmp_path / "idx"
    env = _env(cache_dir)
    rng = random.Random(6)
    kills = 0
    for attempt in range(3):
        run = Run(tmp_path, f"killed{attempt}", tmp_path / "photos", idx, tiny_model_path, env)
        if not _wait_for_new_shard(run, idx, _shard_names(idx)):
            assert run.wait() == 0, run.output()
            break
        # Anywhere from the first new shard to the end of the run: mid-batch, mid-write,
        # compaction, FAISS, manifest.
        time.sleep(rng.uniform(0.0, 0.6))
        if run.proc.poll() is None:
            run.signal_group(signal.SIGKILL)
            kills += 1
        run.wait()
        _assert_consistent(idx)
    assert kills >= 2, "the runs ended before they could be killed: the test proves little"

    final = Run(tmp_path, "final", tmp_path / "photos", idx, tiny_model_path, env)
    assert final.wait() == 0, final.output()
    _assert_complete(idx, expected)
    embedded = int(re.search(r"(\d+) embedded", final.output()).group(1))
    unchanged = int(re.search(r"(\d+) unchanged", final.output()).group(1))
    assert embedded + unchanged == len(expected) and unchanged > 0  # the killed runs' shards were kept


# ---- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_says_how_to_resume_and_keeps_work(tmp_path, tiny_model_path, cache_dir):
    expected = _photos(tmp_path / "photos", 320)
    env = _env(cache_dir)
    # On a loaded machine this test process can be descheduled long enough for the whole run to
    # finish before the signal is sent; such an attempt proves nothing, so it is tried again on
    # a fresh index (a run that ignores Ctrl-C fails every attempt).
    for attempt in range(3):
        idx = tmp_path / f"idx{attempt}"
        run = Run(tmp_path, f"interrupted{attempt}", tmp_path / "photos", idx, tiny_model_path, env)
        assert _wait_for_new_shard(run, idx, set()), run.output()
        run.signal_group(signal.SIGINT)  # to the whole group, as a terminal does: workers get it too
        rc = run.wait()
        if rc == 130:
            break
        assert rc == 0 and f"{len(expected)} embedded" in run.output(), run.output()
    assert rc == 130, run.output()
    out = run.output()
    assert "run the same command again" in out and "Traceback" not in out
    kept = _assert_consistent(idx)
    assert 0 < len(kept) < len(expected)

    again = Run(tmp_path, "resumed", tmp_path / "photos", idx, tiny_model_path, env)
    assert again.wait() == 0, again.output()
    assert f"{len(expected) - len(kept)} embedded" in again.output()
    _assert_complete(idx, expected)


# ---- two writers ---------------------------------------------------------------------------------


def test_second_writer_fails_clearly_and_harms_nothing(tmp_path, tiny_model_path, cache_dir):
    _photos(tmp_path / "photos", 20)
    idx = tmp_path / "idx"
    env = _env(cache_dir)
    r = CliRunner().invoke(app, ["index", str(tmp_path / "photos"), "--index-dir", str(idx), "--model", str(tiny_model_path), "-j", "0", "-q"])
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in (idx / "shards").iterdir()}
    manifest = (idx / "manifest.json").read_bytes()

    make_photo(tmp_path / "photos" / "new.jpg", size=PHOTO, seed=999)
    holder = IndexStore(idx)
    holder.lock()  # another process (this one) is writing
    try:
        second = Run(tmp_path, "second", tmp_path / "photos", idx, tiny_model_path, env, workers=0)
        assert second.wait() == 1, second.output()
    finally:
        holder.unlock()
    lines = [ln for ln in second.err.read_text().splitlines() if ln.strip()]
    assert len(lines) == 1 and "another copyscan process is writing" in lines[0], second.output()
    assert {p.name: p.read_bytes() for p in (idx / "shards").iterdir()} == before
    assert (idx / "manifest.json").read_bytes() == manifest


@pytest.mark.slow
def test_two_writers_started_together_leave_a_whole_index(tmp_path, tiny_model_path, cache_dir):
    # One wins the lock; the other waits its turn or is refused with the message. Either way the
    # index ends whole.
    expected = _photos(tmp_path / "photos", 120)
    idx = tmp_path / "idx"
    env = _env(cache_dir)
    a = Run(tmp_path, "a", tmp_path / "photos", idx, tiny_model_path, env, workers=0)
    b = Run(tmp_path, "b", tmp_path / "photos", idx, tiny_model_path, env, workers=0)
    codes = sorted([a.wait(), b.wait()])
    assert codes in ([0, 0], [0, 1]), a.output() + b.output()
    for r in (a, b):
        if r.proc.returncode == 1:
            assert "another copyscan process is writing" in r.output()
    _assert_complete(idx, expected)


def test_flush_rows_env_must_be_a_positive_number(tmp_path, tiny_model_path, monkeypatch):
    make_photo(tmp_path / "photos" / "a.jpg", size=PHOTO)
    monkeypatch.setenv("COPYSCAN_FLUSH_ROWS", "lots")
    r = CliRunner().invoke(app, ["index", str(tmp_path / "photos"), "--index-dir", str(tmp_path / "idx"),
                                 "--model", str(tiny_model_path), "-j", "0", "-q"])
    assert r.exit_code == 1 and "COPYSCAN_FLUSH_ROWS" in r.stderr and "Traceback" not in r.output


# ---- indexes this copyscan must refuse -------------------------------------------------------------
# (another model or dimension: test_cli.py::test_mixed_models_refused; the store-level checks:
# test_store.py. Here: the same refusals through every command, as one line and exit 1.)


@pytest.fixture
def built_index(tmp_path, tiny_model_path) -> tuple[Path, Path]:
    folder = tmp_path / "photos"
    make_photo(folder / "a.jpg", size=PHOTO, seed=1)
    make_photo(folder / "b.jpg", size=PHOTO, seed=2)
    r = CliRunner().invoke(app, ["index", str(folder), "--index-dir", str(tmp_path / "idx"), "--model", str(tiny_model_path), "-j", "0", "-q"])
    assert r.exit_code == 0, r.output
    return folder, tmp_path / "idx"


def _refused_by_every_command(folder: Path, idx: Path, model: Path, *fragments: str) -> None:
    for command in ("index", "query", "dedupe"):
        args = [command, str(folder), "--index-dir", str(idx), "--model", str(model), "-j", "0", "-q"]
        if command != "index":
            args += ["-o", str(idx.parent / f"out-{command}")]
        r = CliRunner().invoke(app, args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), (command, r.output)
        assert "Traceback" not in r.output
        for fragment in fragments:
            assert fragment in lines[0], (command, lines[0])


def test_index_of_another_format_version_is_refused(built_index, tiny_model_path):
    folder, idx = built_index
    doc = json.loads((idx / "manifest.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (idx / "manifest.json").write_text(json.dumps(doc))
    shards = {p.name: p.read_bytes() for p in (idx / "shards").iterdir()}
    _refused_by_every_command(folder, idx, tiny_model_path, f"v{FORMAT_VERSION + 1}", "rebuild")
    assert {p.name: p.read_bytes() for p in (idx / "shards").iterdir()} == shards


# ---- weights never run code ------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file `marker`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_every_torch_load_is_weights_only():
    calls = []
    for path in (REPO_ROOT / "copyscan").rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "pickle.loads" not in text, path
        calls += [(path, m.group(0)) for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text)]
    assert calls, "no torch.load found: update this test"
    for path, call in calls:
        assert "weights_only=True" in call, f"{path}: {call}"


def test_pickled_weights_are_not_executed(tmp_path):
    import torch

    from copyscan.models import lite0

    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save({"conv.weight": _Payload(marker)}, evil)
    with pytest.raises(Exception):
        lite0.imagenet_classifier(str(evil))
    assert not marker.exists()


def test_pickle_named_pt_is_refused_by_the_torchscript_loader(tmp_path):
    import torch

    from copyscan.models import ModelUnavailable, create_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save(_Payload(marker), evil)
    with pytest.raises(ModelUnavailable, match="not a loadable TorchScript model"):
        create_model(str(evil), "cpu")
    assert not marker.exists()


def test_a_url_is_not_a_model():
    from copyscan.models import ModelUnavailable, create_model

    # TorchScript comes only from an explicit local file or the registry's checksummed download.
    with pytest.raises(ModelUnavailable, match="unknown model"):
        create_model("https://example.invalid/model.pt", "cpu")
