"""`copyscan calibrate`: operating points on hand-made scores, and the command end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import make_photo

from copyscan.calibrate import calibrate, operating_point, write_outputs


def test_operating_point_on_hand_computed_scores():
    pos = np.array([0.9, 0.8, 0.6, 0.3])
    neg = np.array([0.85, 0.5, 0.2, 0.1])
    edits = ["a", "a", "b", "b"]
    # Ranked: .9 P, .85 N, .8 P, .6 P, .5 N, .3 P -> precision 1, .5, .67, .75, .6, .67
    p = operating_point(pos, neg, edits, 0.7)
    assert p.threshold == 0.6 and p.recall == 0.75 and p.precision == 0.75
    assert p.false_positive_rate == 0.25 and p.per_edit_recall == {"a": 1.0, "b": 0.5}
    strict = operating_point(pos, neg, edits, 1.0)
    assert strict.threshold == 0.9 and strict.recall == 0.25
    # A non-copy tied with a copy counts first (pessimistic): 0.9 alone no longer reaches 1.0.
    tied = operating_point(pos, np.array([0.9, 0.1]), edits, 1.0)
    assert tied.threshold is None and tied.recall is None


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "my <b>photos</b>"
    for i in range(8):
        make_photo(folder / f"p{i}.jpg", size=(160, 120), seed=40 + i)
    return folder


def test_calibrate_counts_and_outputs(photos, tiny_model_path, tmp_path):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in photos.iterdir())
    cal = calibrate(photos, tiny_model_path, sample=6, edits=["crop", "jpeg", "hflip"], seed=1, workers=0)
    assert cal.originals == 6 and cal.copies == 18 and cal.edits == ["crop", "jpeg", "hflip"]
    assert cal.non_copy_pairs == 18 * 5 + 6 * 5 // 2  # copies x other originals + original pairs
    assert [p.target_precision for p in cal.points] == [0.99, 0.9]
    for p in cal.points:
        if p.threshold is not None:
            assert p.precision >= p.target_precision and 0 < p.recall <= 1
            assert set(p.per_edit_recall) == {"crop", "jpeg", "hflip"}
    again = calibrate(photos, tiny_model_path, sample=6, edits=["crop", "jpeg", "hflip"], seed=1, workers=0)
    np.testing.assert_allclose(again.copy_scores, cal.copy_scores, atol=1e-6)  # seeded: same copies
    files = write_outputs(cal, tmp_path / "out")
    doc = json.loads(open(files["json"]).read())
    assert doc["copies"] == 18 and len(doc["points"]) == 2
    page = open(files["html"], encoding="utf-8").read()
    assert "<svg" in page and "my &lt;b&gt;photos&lt;/b&gt;" in page and "<b>photos</b>" not in page
    rows = open(files["csv"]).read().splitlines()
    assert rows[0] == "kind,edit,score" and len(rows) == 1 + 18 + cal.non_copy_pairs
    assert sorted((p.name, p.stat().st_mtime_ns) for p in photos.iterdir()) == before  # only read


def _cli(*args, cwd):
    # In-process (a subprocess costs a torch import each); stdout and stderr kept apart.
    from typer.testing import CliRunner

    from copyscan.cli import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    finally:
        os.chdir(old)


def test_calibrate_cli(photos, tiny_model_path, tmp_path):
    r = _cli("calibrate", str(photos), "-m", str(tiny_model_path), "-n", "5", "--edits", "crop,text", "-j", "0",
             "-q", "-o", "cal", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert "recall: crop" in r.stdout and (tmp_path / "cal" / "report.html").exists()
    r = _cli("calibrate", str(photos), "-m", str(tiny_model_path), "--edits", "crop,teleport", cwd=tmp_path)
    assert r.exit_code == 1 and "unknown edit" in r.stderr and "Traceback" not in r.output
    (tmp_path / "one").mkdir()
    make_photo(tmp_path / "one" / "a.jpg")
    r = _cli("calibrate", str(tmp_path / "one"), "-m", str(tiny_model_path), cwd=tmp_path)
    assert r.exit_code == 1 and "at least 2 images" in r.stderr
