"""Benchmark synthesis (copyscan.synth and `copyscan bench synth`) on small generated photos."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from conftest import make_photo

import copyscan.synth as synth
from copyscan.cli import app
from copyscan.edits import DIFFICULTIES, EDITS
from copyscan.synth import SynthError, synthesize

SIZE = (80, 60)


def photos(folder: Path, n: int, first_seed: int = 0) -> Path:
    for i in range(n):
        make_photo(folder / f"p{i:03d}.jpg", size=SIZE, seed=first_seed + i)
    return folder


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("src"), 24)


def test_layout_counts_and_ground_truth(src, tmp_path):
    out = tmp_path / "bench"
    s = synthesize(src, out, references=12, copy_fraction=0.5, distractors=5, seed=1, max_side=64)
    assert (s.references, s.copies, s.distractors, s.queries) == (12, 6, 5, 11)
    refs = sorted(p.name for p in (out / "references").iterdir())
    queries = sorted(p.name for p in (out / "queries").iterdir())
    assert refs == [f"R{i:05d}.jpg" for i in range(12)]
    assert queries == [f"Q{i:05d}.jpg" for i in range(11)]
    gt = rows(out / "gt.csv")
    assert [r["query_id"] for r in gt] == queries
    copies = [r for r in gt if r["reference_id"]]
    assert len(copies) == 6 and all(r["reference_id"] in refs for r in copies)
    assert len({r["reference_id"] for r in copies}) == 6  # one copy per chosen reference
    labels = rows(out / "labels.csv")
    assert [r["query_id"] for r in labels] == queries
    for r in labels:
        assert r["difficulty"] in DIFFICULTIES
        names = [label.split("(")[0] for label in r["edits"].split(";")]
        assert names and all(n in EDITS for n in names)
    for p in list((out / "references").iterdir()) + list((out / "queries").iterdir()):
        with Image.open(p) as im:
            assert im.format == "JPEG" and max(im.size) <= 64
    meta = json.loads((out / "bench.json").read_text())
    assert meta["seed"] == 1 and meta["source"] == str(src.resolve())
    assert meta["counts"] == {"references": 12, "queries": 11, "copies": 6, "distractors": 5, "skipped": 0}
    assert meta["options"]["max_side"] == 64 and "copyscan_version" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]  # no work folder left behind


def test_same_arguments_give_identical_files(src, tmp_path):
    args = dict(references=8, distractors=4, seed=5, max_side=64, difficulty="hard")
    synthesize(src, tmp_path / "a", **args)
    synthesize(src, tmp_path / "b", **args)
    synthesize(src, tmp_path / "c", **{**args, "seed": 6})
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a["labels.csv"] != c["labels.csv"]


def _unflipped(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.mirror(im.convert("RGB")).resize((16, 12)), dtype=np.float32)


def _closest(query: np.ndarray, candidates: dict[str, np.ndarray]) -> str:
    return min(candidates, key=lambda k: float(np.abs(candidates[k] - query).mean()))


def test_copies_show_their_reference_and_distractors_come_from_their_own_folder(src, tmp_path):
    other = photos(tmp_path / "other", 6, first_seed=100)
    out = tmp_path / "bench"
    # One mirror flip per query: undo it and each query must be closest to its own source.
    s = synthesize(src, out, references=10, distractors=4, distractor_source=other, edits="hflip", difficulty="easy", max_side=64)
    assert (s.references, s.copies, s.distractors) == (10, 5, 4)
    refs = {p.name: _unflipped(p)[:, ::-1] for p in (out / "references").iterdir()}
    sources = {p.name: np.asarray(Image.open(p).convert("RGB").resize((16, 12)), dtype=np.float32) for p in other.iterdir()}
    for r in rows(out / "gt.csv"):
        q = _unflipped(out / "queries" / r["query_id"])
        if r["reference_id"]:
            assert _closest(q, refs) == r["reference_id"]
        else:
            everything = {**{"ref:" + k: v for k, v in refs.items()}, **sources}
            assert not _closest(q, everything).startswith("ref:")
    assert all(r["edits"] == "hflip" and r["difficulty"] == "easy" for r in rows(out / "labels.csv"))


def test_unreadable_sources_are_skipped_and_counted(tmp_path):
    src = photos(tmp_path / "src", 10)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    make_photo(src / "dot.png", size=(1, 1), seed=1)
    make_photo(src / "strip.png", size=(3, 500), seed=2)
    out = tmp_path / "bench"
    # 9 references + 4 distractors need every one of the 13 files: the broken one is met.
    s = synthesize(src, out, references=9, distractors=4, max_side=64, difficulty="hard")
    assert [Path(k.path).name for k in s.skipped] == ["broken.jpg"]
    assert (s.references, s.distractors) == (9, 3)
    assert any("3 distractors of the 4" in line for line in s.shortfall)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["counts"]["skipped"] == 1 and meta["skipped"][0]["path"].endswith("broken.jpg")


def test_refuses_what_it_cannot_or_should_not_do(src, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="OUT is not empty"):
        synthesize(src, out, references=4, max_side=64)
    with pytest.raises(SynthError, match="not a copyscan benchmark"):
        synthesize(src, out, references=4, max_side=64, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(SynthError, match="must not contain one another"):
        synthesize(src, src / "bench", references=4)
    with pytest.raises(SynthError, match="SRC has 24 images"):
        synthesize(src, tmp_path / "x", references=20, distractors=10)
    with pytest.raises(SynthError, match="unknown edit sepia"):
        synthesize(src, tmp_path / "x", edits="crop,sepia")
    with pytest.raises(SynthError, match="copy-fraction"):
        synthesize(src, tmp_path / "x", copy_fraction=1.5)
    with pytest.raises(SynthError, match="no such folder"):
        synthesize(tmp_path / "missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_a_benchmark(src, tmp_path):
    out = tmp_path / "bench"
    synthesize(src, out, references=6, distractors=2, max_side=64)
    synthesize(src, out, references=4, distractors=0, max_side=64, overwrite=True)
    assert len(list((out / "references").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_interrupted_run_leaves_nothing(src, tmp_path, monkeypatch):
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return args[0].copy(), ["x"]

    monkeypatch.setattr(synth, "apply_edits", interrupt)
    with pytest.raises(KeyboardInterrupt):
        synthesize(src, tmp_path / "bench", references=6, distractors=2, max_side=64)
    assert list(tmp_path.iterdir()) == []


def test_cli(src, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "synth", str(src), str(out), "--references", "6", "--distractors", "2",
                                      "--copy-fraction", "0.5", "--seed", "3", "--max-side", "64", "-q"])
    assert result.exit_code == 0, result.output
    assert re.search(r"6 references, 5 queries \(3 copies, 2 distractors\), 0 skipped", result.output)
    again = CliRunner().invoke(app, ["bench", "synth", str(src), str(out), "-n", "6"])
    assert again.exit_code == 1
    assert "OUT is not empty" in again.output and "Traceback" not in again.output
    bad = CliRunner().invoke(app, ["bench", "synth", str(src), str(tmp_path / "y"), "--edits", "crop,nope"])
    assert bad.exit_code == 1 and "unknown edit nope" in bad.output


def test_a_distractor_is_never_a_reference_file(tmp_path):
    import shutil

    src = photos(tmp_path / "src", 6)
    other = photos(tmp_path / "other", 3, first_seed=50)
    for p in src.iterdir():  # the references again, under other names
        shutil.copy(p, other / ("dup-" + p.name))
    s = synthesize(src, tmp_path / "bench", references=6, distractors=3, distractor_source=other, max_side=64)
    assert s.distractors == 3
    assert s.skipped and all(k.reason == "same bytes as a reference: not a distractor" for k in s.skipped)
