"""PCA whitening and score normalisation: the maths, the file, and how the index keeps them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import make_photo

from copyscan import ann, api
from copyscan.extraction import Extraction
from copyscan.score import pairs_of, references_of
from copyscan.search import default_threshold, pairs_in
from copyscan.background import PostOptions
from copyscan.store import BACKGROUND_DIR as BACKGROUND_CACHE
from copyscan.store import POST_FILE
from copyscan.group import Pairs
from copyscan.postprocess import PostProcess, PostProcessError, fit, fit_whitening, read_file, sha256_of, suggest_threshold
from copyscan.store import IndexStore, descriptors_of, paths_of


NO_WORKERS = Extraction(workers=0)


def unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_whitening_gives_unit_covariance_and_unit_vectors():
    rng = np.random.default_rng(0)
    data = unit_rows(rng.normal(size=(400, 16)) * np.linspace(5, 0.2, 16) + 3)
    mean, projection, details = fit_whitening(data, None)
    white = (data - mean) @ projection
    assert np.allclose(np.cov(white, rowvar=False), np.eye(16), atol=1e-3)
    assert details["dim_out"] == 16
    post = fit(data, whiten=True, score_norm=False)
    assert np.allclose(np.linalg.norm(post.transform(data[:5]), axis=1), 1.0, atol=1e-5)


def test_whitened_dimension_is_capped_by_the_background():
    data = unit_rows(np.random.default_rng(1).normal(size=(20, 32)))
    assert fit(data, True, False).out_dim(32) == 5  # 20 images / 4 per axis
    assert fit(data, True, False, dim=30).out_dim(32) == 19  # at most n - 1 axes carry variance
    assert fit(data, True, False, dim=3).out_dim(32) == 3


def test_bias_by_hand():
    background = np.eye(5, dtype=np.float32)
    post = PostProcess(score_norm=True, beta=0.5, background=background)
    q = unit_rows(np.array([[1, 1, 0, 0, 0]], np.float32))
    # Similarities 0.707, 0.707, 0, 0, 0: ranks 1-3 average 0.4714; times beta 0.5.
    assert post.bias(q)[0] == pytest.approx(0.5 * (2 * 0.70710678) / 3, abs=1e-6)
    assert PostProcess().bias(q).tolist() == [0.0]
    assert PostProcess().transform(q) is not None and np.array_equal(PostProcess().transform(q), q)


def test_file_round_trip_and_checks(tmp_path):
    data = unit_rows(np.random.default_rng(2).normal(size=(40, 8)))
    post = fit(data, True, True, beta=0.7, model_sha256="abc")
    blob = post.to_bytes()
    assert blob == fit(data, True, True, beta=0.7, model_sha256="abc").to_bytes()  # same fit, same checksum
    path = tmp_path / POST_FILE
    path.write_bytes(blob)
    back = read_file(path, sha256_of(blob))
    assert (back.whiten, back.score_norm, back.beta, back.model_sha256) == (True, True, 0.7, "abc")
    assert np.array_equal(back.transform(data), post.transform(data))
    with pytest.raises(PostProcessError, match="checksum"):
        read_file(path, "0" * 64)
    path.write_bytes(b"not a zip")
    with pytest.raises(PostProcessError, match="unreadable"):
        read_file(path, sha256_of(b"not a zip"))
    with pytest.raises(PostProcessError, match="missing"):
        read_file(tmp_path / "absent.npz", "x")


def test_fit_refuses_bad_settings():
    data = unit_rows(np.random.default_rng(3).normal(size=(40, 8)))
    with pytest.raises(PostProcessError, match="at least 16"):
        fit(data[:5], True, True)
    with pytest.raises(PostProcessError, match="ranks"):
        fit(data, False, True, ranks=(3, 1))
    with pytest.raises(PostProcessError, match="do not vary"):
        fit(np.ones((20, 8), np.float32), True, False)


def test_suggested_threshold_is_a_high_quantile_of_background_pairs():
    data = unit_rows(np.random.default_rng(4).normal(size=(300, 16)))
    post = fit(data, False, False)
    pairs = (data @ data.T)[np.triu_indices(300, k=1)]
    t = suggest_threshold(post, data)
    assert np.quantile(pairs, 0.999) <= t <= pairs.max() + 0.01


def test_dedupe_pairs_use_the_symmetric_rule():
    rng = np.random.default_rng(5)
    vectors = unit_rows(rng.normal(size=(30, 8)))
    vectors[1] = unit_rows(vectors[:1] + 0.05)[0]  # a near copy of image 0
    post = PostProcess(score_norm=True, beta=1.0, background=unit_rows(rng.normal(size=(20, 8))))
    bias = post.bias(vectors)
    # The stored index holds the references' form; each image searches it in the pair form.
    index = ann.build_index(references_of(post, vectors))
    rows = np.arange(len(vectors))
    found = pairs_in(index, pairs_of(post, vectors), rows, 0.2, len(vectors))
    sims = vectors @ vectors.T
    expected = {(i, j): sims[i, j] - (bias[i] + bias[j]) / 2 for i in range(30) for j in range(i + 1, 30)}
    expected = {k: v for k, v in expected.items() if v >= 0.2}
    assert isinstance(found, Pairs) and {(i, j) for i, j, _ in found} == set(expected)
    for i, j, s in found:
        assert s == pytest.approx(expected[(i, j)], abs=1e-5)


# ---- kept in the index --------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    for s in range(6):
        make_photo(tmp_path / "refs" / f"r{s}.jpg", size=(96, 72), seed=s)
    for s in range(3):
        make_photo(tmp_path / "queries" / f"q{s}.jpg", size=(80, 60), seed=s)
    for s in range(20):
        make_photo(tmp_path / "bg" / f"b{s}.png", size=(64, 48), seed=300 + s)
    return tmp_path


def top_scores(csv_path):
    with open(csv_path, newline="") as fh:
        return {r["query_path"]: float(r["score"]) for r in csv.DictReader(fh) if r["rank"] == "1"}


def test_index_keeps_the_transform_and_query_uses_it(folders, tiny_model_path):
    idx = folders / "idx"
    api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders / "bg"))
    store = IndexStore(idx)
    manifest = store.read_manifest()
    entry = manifest["postprocess"]
    assert entry["whiten"] and entry["score_norm"] and entry["background_images"] == 20
    assert entry["sha256"] == sha256_of((idx / POST_FILE).read_bytes())
    assert manifest["faiss"]["shards_fingerprint"].endswith("+" + entry["sha256"][:16])
    assert store.faiss_is_fresh(manifest)

    # A later query, without options, scores with the stored transform.
    q = api.query_folder(folders / "queries", index_dir=idx, output=folders / "out", threshold=-1, top_k=1, extraction=NO_WORKERS, report=False)
    loaded = api.load_index(idx)
    assert loaded.post.whiten and loaded.post.score_norm
    # The queries' raw descriptors, as the pipeline computes them: index them alone, untransformed.
    api.index_folder(folders / "queries", index_dir=folders / "plain", model=str(tiny_model_path), extraction=NO_WORKERS)
    plain = IndexStore(folders / "plain").read_table(["descriptor"])
    queries = loaded.post.transform(descriptors_of(plain))
    refs = loaded.post.transform(descriptors_of(store.read_table(["descriptor"])))
    expected = (queries @ refs.T).max(axis=1) - loaded.post.bias(queries)
    got = top_scores(q.csv_path)
    assert [got[p] for p in paths_of(plain)] == pytest.approx(expected.tolist(), abs=1e-5)


def test_changing_or_switching_off_rebuilds_faiss(folders, tiny_model_path):
    idx = folders / "idx"
    api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders / "bg"))
    store = IndexStore(idx)
    cache_shards = sorted(p.stat().st_mtime_ns for p in (idx / BACKGROUND_CACHE / "shards").iterdir())
    first = store.read_manifest()

    api.query_folder(folders / "queries", index_dir=idx, output=folders / "out", extraction=NO_WORKERS, report=False,
                     post=PostOptions(whiten=False, beta=0.5))
    second = store.read_manifest()
    assert second["postprocess"]["whiten"] is False and second["postprocess"]["beta"] == 0.5
    assert second["postprocess"]["sha256"] != first["postprocess"]["sha256"]
    assert second["faiss"]["shards_fingerprint"] != first["faiss"]["shards_fingerprint"]
    assert store.faiss_is_fresh(second)
    # The background was not embedded again.
    assert sorted(p.stat().st_mtime_ns for p in (idx / BACKGROUND_CACHE / "shards").iterdir()) == cache_shards

    # A FAISS file built for another transform is stale.
    stale = json.loads(json.dumps(second))
    stale["postprocess"]["sha256"] = "f" * 64
    assert not store.faiss_is_fresh(stale)

    api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(whiten=False, score_norm=False))
    third = store.read_manifest()
    assert "postprocess" not in third and not (idx / POST_FILE).exists()
    assert third["faiss"]["shards_fingerprint"] == store.shard_fingerprint()
    assert default_threshold(store, third) == api.DEFAULT_THRESHOLD


def test_bad_settings_are_refused(folders, tiny_model_path):
    idx = folders / "idx"
    with pytest.raises(PostProcessError, match="--background"):
        api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(whiten=True))
    with pytest.raises(PostProcessError, match="overlaps"):
        api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders / "refs"))
    with pytest.raises(PostProcessError, match="overlaps"):
        api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders))
    with pytest.raises(PostProcessError, match="no such background"):
        api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders / "nope"))


def test_tampered_file_is_reported(folders, tiny_model_path):
    idx = folders / "idx"
    api.index_folder(folders / "refs", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS, post=PostOptions(background=folders / "bg"))
    (idx / POST_FILE).write_bytes(b"changed")
    with pytest.raises(PostProcessError, match="checksum"):
        api.load_index(idx)


def test_cli_options_are_kept_for_later_commands(folders, tiny_model_path, monkeypatch):
    from typer.testing import CliRunner

    from copyscan.cli import app

    monkeypatch.chdir(folders)
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    r = run("index", "refs", "--index-dir", "idx", "-m", tiny_model_path, "-q", "-j", "0", "--background", "bg",
            "--no-score-norm", "--whiten-dim", "4")
    assert r.exit_code == 0, r.output
    entry = IndexStore(folders / "idx").read_manifest()["postprocess"]
    assert (entry["whiten"], entry["score_norm"], entry["dim_out"]) == (True, False, 4)
    # dedupe without options: the stored transform, and its suggested threshold.
    r = run("dedupe", "refs", "--index-dir", "idx", "-o", "dup", "-q", "-j", "0")
    assert r.exit_code == 0, r.output
    assert json.loads((folders / "dup" / "groups.json").read_text())["threshold"] == entry["threshold"]
    r = run("query", "queries", "--index-dir", "idx", "-o", "out", "-q", "-j", "0", "--background", "queries")
    assert r.exit_code == 1 and "overlaps" in r.output
