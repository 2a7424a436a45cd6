"""The score rule applied once (score.py), dedupe searching the stored FAISS file (search.py), the
keyword-only API with one Extraction, and what the outputs say the score is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_photo

import copyscan
from copyscan import ann, api, search
from copyscan.background import PostOptions
from copyscan.extraction import Extraction
from copyscan.postprocess import PostProcess
from copyscan.score import pair_vectors, query_vectors, reference_vectors, score_floor

NO_WORKERS = Extraction(workers=0)


def unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_extra_columns_make_the_inner_product_the_final_score():
    rng = np.random.default_rng(0)
    refs, queries = unit_rows(rng.normal(size=(7, 5))), unit_rows(rng.normal(size=(4, 5)))
    b_ref, b_query = rng.uniform(0, 0.5, 7).astype(np.float32), rng.uniform(0, 0.5, 4).astype(np.float32)
    cos = queries @ refs.T
    stored = reference_vectors(refs, b_ref)
    assert stored.shape == (7, 7)
    np.testing.assert_allclose(query_vectors(queries, b_query) @ stored.T, cos - b_query[:, None], atol=1e-6)
    np.testing.assert_allclose(pair_vectors(queries, b_query) @ stored.T, cos - (b_query[:, None] + b_ref[None, :]) / 2, atol=1e-6)
    # Without score normalisation: the descriptors themselves, the cosine.
    np.testing.assert_array_equal(reference_vectors(refs, None), refs)
    np.testing.assert_allclose(query_vectors(queries, None) @ reference_vectors(refs, None).T, cos, atol=1e-6)
    assert score_floor(-1) == -np.inf and score_floor(0.5) == 0.5


def test_threshold_is_applied_inside_the_search_and_is_exact():
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng.normal(size=(60, 8)))
    vectors[1] = unit_rows(vectors[:1] + 0.05)[0]
    post = PostProcess(score_norm=True, beta=0.7, background=unit_rows(rng.normal(size=(20, 8))))
    bias = post.bias(vectors)
    index = ann.build_index(reference_vectors(vectors, bias))
    pairs = search.pairs_in(index, pair_vectors(vectors, bias), np.arange(60), 0.1, 60)
    sims = vectors @ vectors.T - (bias[:, None] + bias[None, :]) / 2
    want = {(i, j) for i in range(60) for j in range(i + 1, 60) if sims[i, j] >= 0.1}
    assert {(i, j) for i, j, _ in pairs} == want
    assert all(s >= 0.1 for _, _, s in pairs)


@pytest.fixture
def photos(tmp_path):
    for s in range(6):
        make_photo(tmp_path / "photos" / f"p{s}.jpg", size=(96, 72), seed=s)
    make_photo(tmp_path / "photos" / "copy.png", size=(96, 72), seed=0)  # same picture as p0, other bytes
    for s in range(20):
        make_photo(tmp_path / "bg" / f"b{s}.png", size=(64, 48), seed=400 + s)
    return tmp_path


def test_dedupe_searches_the_stored_faiss_file(photos, tiny_model_path, monkeypatch):
    from copyscan import index_choice

    built = []
    for module in (ann, index_choice):  # a search index built in memory, or the index job's (by memory budget)
        real = module.build_index
        monkeypatch.setattr(module, "build_index", lambda *a, _real=real, **k: built.append(1) or _real(*a, **k))
    first = api.dedupe(photos / "photos", output=photos / "out", index_dir=photos / "idx", model=str(tiny_model_path),
                       extraction=NO_WORKERS, report=False)
    assert len(built) == 1  # the index job's FAISS file, and no second index for the pairs
    again = api.dedupe(photos / "photos", output=photos / "out2", index_dir=photos / "idx", extraction=NO_WORKERS,
                       report=False)
    assert len(built) == 1  # unchanged folder: nothing rebuilt
    assert [[m.path for m in g.members] for g in again.groups] == [[m.path for m in g.members] for g in first.groups]
    doc = json.loads((photos / "out" / "groups.json").read_text())
    assert doc["score"] == "cosine" and first.score == "cosine"


def test_dedupe_scores_follow_the_symmetric_rule_and_say_so(photos, tiny_model_path):
    idx = photos / "idx"
    d = api.dedupe(photos / "photos", output=photos / "out", index_dir=idx, model=str(tiny_model_path), threshold=-0.5,
                   extraction=NO_WORKERS, report=False, post=PostOptions(background=photos / "bg", whiten=False))
    loaded = api.load_index(idx)
    assert loaded.post.score_norm and not loaded.post.whiten
    table = loaded.store.read_table(["descriptor"])
    vectors = loaded.post.transform(copyscan.store.descriptors_of(table))
    bias = loaded.post.bias(vectors)
    row = {p: i for i, p in enumerate(loaded.paths)}
    near = [(g.keep.path, c.path, c.score) for g in d.groups for c in g.copies if c.match == "near"]
    assert near
    for keep, copy, score in near:
        i, j = row[keep], row[copy]
        assert score == pytest.approx(float(vectors[i] @ vectors[j] - (bias[i] + bias[j]) / 2), abs=1e-5)
    doc = json.loads((photos / "out" / "groups.json").read_text())
    assert "score normalisation" in doc["score"] and str(photos / "bg") in doc["score"]
    assert loaded.store.faiss_meta()["score"] == doc["score"]


def test_a_faiss_file_of_the_old_layout_is_rebuilt(photos, tiny_model_path):
    idx = photos / "idx"
    api.index_folder(photos / "photos", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS,
                     post=PostOptions(background=photos / "bg", whiten=False))
    store = copyscan.store.IndexStore(idx)
    manifest = store.read_manifest()
    assert store.faiss_is_fresh(manifest)
    del manifest["faiss"]["layout"]  # as copyscan wrote it before the score columns
    assert not store.faiss_is_fresh(manifest)
    store._write_manifest_doc(manifest)
    summary = api.index_folder(photos / "photos", index_dir=idx, model=str(tiny_model_path), extraction=NO_WORKERS)
    assert summary.embedded == 0 and store.faiss_is_fresh()


def test_api_is_keyword_only():
    with pytest.raises(TypeError):
        api.index_folder("photos", "idx")  # index_dir must be named
    with pytest.raises(TypeError):
        api.dedupe("photos", "out")
    assert copyscan.Extraction is Extraction and Extraction().batch_size == 32


def test_a_copied_checkpoint_named_like_a_shipped_model_keeps_its_own_weights(photos, tiny_model_path, tmp_path):
    """A candidate checkpoint keeps its config's name (`copyscan_lite0_128`) wherever it is copied:
    re-running dedupe on its index, with no --model, must use that file, not the packaged model of
    that name (whose weights differ: the index's model check would refuse them)."""
    import torch

    from copyscan.models import DEFAULT_MODEL
    from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint
    from copyscan.store import IndexStore

    candidate = tmp_path / "candidate" / f"{DEFAULT_MODEL}.safetensors"
    candidate.parent.mkdir()
    with torch.no_grad():
        save_checkpoint(load_checkpoint(tiny_model_path, "cpu").net, dict(read_config(tiny_model_path), name=DEFAULT_MODEL),
                        candidate)
    first = api.dedupe(photos / "photos", output=photos / "out", index_dir=photos / "idx", model=str(candidate),
                       extraction=NO_WORKERS, report=False)
    assert search.model_ref(IndexStore(photos / "idx")) == str(candidate)
    again = api.dedupe(photos / "photos", output=photos / "out2", index_dir=photos / "idx", extraction=NO_WORKERS,
                       report=False)
    assert [[m.path for m in g.members] for g in again.groups] == [[m.path for m in g.members] for g in first.groups]


def _with_config(source, target, **changes):
    import torch

    from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_checkpoint(load_checkpoint(source, "cpu").net, dict(read_config(source), **changes), target)
    return target


def test_the_default_threshold_is_the_models_own(photos, tiny_model_path, tmp_path):
    """A shipped model carries its calibrated cosine threshold: query, dedupe and calibrate use
    it when no --threshold is given; a model without one gets DEFAULT_THRESHOLD."""
    from copyscan.calibrate import calibrate
    from copyscan.models import model_threshold
    from copyscan.score import DEFAULT_THRESHOLD

    own = _with_config(tiny_model_path, tmp_path / "m" / "own.safetensors", threshold=0.42)
    assert model_threshold(own) == 0.42 and model_threshold(tiny_model_path) is None
    for model, expected in ((own, 0.42), (tiny_model_path, DEFAULT_THRESHOLD)):
        out = photos / f"out-{expected}"
        api.dedupe(photos / "photos", output=out, index_dir=photos / f"idx-{expected}", model=str(model),
                   extraction=NO_WORKERS, report=False)
        assert json.loads((out / "groups.json").read_text())["threshold"] == expected
        assert api.load_index(photos / f"idx-{expected}").threshold == expected
    cal = calibrate(photos / "bg", model=str(own), sample=4, edits=["jpeg"], workers=0)
    assert cal.at_threshold.threshold == 0.42
