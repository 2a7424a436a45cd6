"""`copyscan eval`: scoring CSV files, and a whole benchmark folder, through the real command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo

from copyscan.cli import app


def cli(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_files_text_and_json(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", ["query_id", "reference_id"], [("q1", "r1"), ("q2", "r2"), ("q3", "")])
    pred = write_csv(tmp_path / "p.csv", ["query_id", "reference_id", "score"],
                     [("q1", "r1", 0.9), ("q3", "r5", 0.8), ("q2", "r3", 0.7), ("q2", "r2", 0.6)])
    text = cli("eval", "--gt", gt, "--predictions", pred).output
    assert "micro AP       0.7500" in text and "(threshold 0.9000)" in text and "accuracy @ 1   0.5000" in text
    doc = json.loads(cli("eval", "--gt", gt, "--predictions", pred, "--json").output)
    assert doc["micro_ap"] == pytest.approx(0.75) and doc["recall_at_p90"] == pytest.approx(0.5)
    assert doc["threshold_at_p90"] == pytest.approx(0.9) and doc["acc_at_1"] == pytest.approx(0.5)


@pytest.mark.parametrize("pred_text, message", [
    ("query_id,reference_id,score\nq1,r1,0.9\nq1,r1,0.8\n", "duplicate prediction"),
    ("query_id,reference_id,score\nq1,r1\n", "expected 3 fields"),
    ("query_id,ref,score\n", "header"),
    ("query_id,reference_id,score\nq1,r1,abc\n", "not a number"),
])
def test_bad_files_give_one_line(tmp_path, pred_text, message):
    gt = write_csv(tmp_path / "gt.csv", ["query_id", "reference_id"], [("q1", "r1")])
    (tmp_path / "p.csv").write_text(pred_text)
    result = cli("eval", "--gt", gt, "--predictions", tmp_path / "p.csv", code=1)
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_wrong_argument_combinations(tmp_path):
    assert "either BENCH_DIR" in cli("eval", code=1).output
    assert "either BENCH_DIR" in cli("eval", "--gt", tmp_path / "gt.csv", code=1).output
    assert "either BENCH_DIR" in cli("eval", tmp_path, "--gt", "a", "--predictions", "b", code=1).output
    assert "cannot read" in cli("eval", "--gt", tmp_path / "no.csv", "--predictions", tmp_path / "no2.csv", code=1).output
    assert "not a benchmark folder" in cli("eval", tmp_path, code=1).output


def make_bench(root: Path) -> Path:
    """6 references; 3 copies (crops, one grey), 2 distractors; gt.csv and labels.csv."""
    bench = root / "bench"
    for i in range(6):
        make_photo(bench / "references" / f"R{i:05d}.jpg", size=(128, 96), seed=i)
    (bench / "queries").mkdir()
    gt, labels = [], []
    for i in range(3):
        img = Image.open(bench / "references" / f"R{i:05d}.jpg").crop((8, 8, 120, 88))
        if i == 2:
            img = img.convert("L").convert("RGB")
        img.save(bench / "queries" / f"Q{i:05d}.jpg", quality=70)
        gt.append((f"Q{i:05d}.jpg", f"R{i:05d}.jpg"))
        labels.append((f"Q{i:05d}.jpg", "crop(0.8);grayscale" if i == 2 else "crop(0.8)", "easy"))
    for i in range(3, 5):
        make_photo(bench / "queries" / f"Q{i:05d}.jpg", size=(100, 80), seed=200 + i)
        gt.append((f"Q{i:05d}.jpg", ""))
        labels.append((f"Q{i:05d}.jpg", "blur(1.5)", "easy"))
    write_csv(bench / "gt.csv", ["query_id", "reference_id"], gt)
    write_csv(bench / "labels.csv", ["query_id", "edits", "difficulty"], labels)
    return bench


def test_bench_folder(tmp_path, tiny_model_path):
    bench = make_bench(tmp_path)
    out = tmp_path / "out"
    text = cli("eval", bench, "-m", tiny_model_path, "-o", out, "-q", "-j", "0", "--top-k", "3").output
    assert "micro AP" in text and "grayscale" in text and "blur" not in text  # distractors are no copies
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * 3 and {r["query_id"] for r in rows} == {f"Q{i:05d}.jpg" for i in range(5)}
    assert all(r["reference_id"].startswith("R") for r in rows)
    doc = json.loads((out / "metrics.json").read_text())
    assert {"micro_ap", "recall_at_p90", "threshold_at_p90", "acc_at_1"} <= set(doc)
    per_edit = {r["edit"]: r for r in doc["per_edit"]}
    assert per_edit["crop"]["copies"] == 3 and per_edit["grayscale"]["copies"] == 1
    # The predictions file scores the same through the file mode.
    again = json.loads(cli("eval", "--gt", bench / "gt.csv", "--predictions", out / "predictions.csv", "--json").output)
    assert again["micro_ap"] == pytest.approx(doc["micro_ap"])

    # With a background: post-processing set up in the index and reported; the index is reused.
    for s in range(16):
        make_photo(tmp_path / "bg" / f"b{s}.png", size=(64, 48), seed=400 + s)
    doc2 = json.loads(cli("eval", bench, "-m", tiny_model_path, "-o", out, "--background", tmp_path / "bg",
                          "-j", "0", "--json").output)
    assert doc2["postprocess"]["whiten"] and doc2["postprocess"]["background_images"] == 16
    assert doc2["n_predictions"] == 5 * 6  # top-10 of 6 references

    # --regions indexes the references as `index --regions` does: their local features stored.
    doc3 = json.loads(cli("eval", bench, "-m", tiny_model_path, "-o", tmp_path / "out-regions", "--regions",
                          "-j", "0", "--json").output)
    assert (tmp_path / "out-regions" / "index" / "local_features.sqlite").exists()
    assert 0.0 <= doc3["micro_ap"] <= 1.0 and doc3["n_predictions"] == 5 * 6
    # Queries are scored as `query` scores them (regions, against a plain index) unless
    # --whole-images asks for the model alone; the two together are refused.
    assert doc2["search"] == "regions" and doc3["search"] == "index-regions"
    doc4 = json.loads(cli("eval", bench, "-m", tiny_model_path, "-o", tmp_path / "out-whole", "--whole-images",
                          "-j", "0", "--json").output)
    assert doc4["search"] == "whole-images" and doc4["n_predictions"] == 5 * 6
    assert not (tmp_path / "out-whole" / "index" / "local_features.sqlite").exists()
    refused = cli("eval", bench, "-m", tiny_model_path, "--regions", "--whole-images", code=1).output
    assert "give one of them" in refused and "Traceback" not in refused


def test_bench_folder_errors(tmp_path, tiny_model_path):
    bench = make_bench(tmp_path)
    write_csv(bench / "gt.csv", ["query_id", "reference_id"], [("other.jpg", "R00000.jpg")])
    result = cli("eval", bench, "-m", tiny_model_path, "-q", "-j", "0", code=1)
    assert "does not match the files in queries" in result.output and "Traceback" not in result.output
