"""Index sized by a memory budget (index_choice), the sliced pair search with exact re-scoring
(pair_search) and streamed grouping (group_stream), and their wiring into index / dedupe."""

from __future__ import annotations

import numpy as np
import pytest

from copyscan import api, index_choice, pair_search
from copyscan.extraction import Extraction
from copyscan.group import Item, Pairs, build_groups, exact_cluster_labels
from copyscan.group_stream import ItemColumns, build_groups_streamed, exact_labels
from copyscan.search import find_pairs
from copyscan.store import IndexStore

from conftest import make_photo

NO_WORKERS = Extraction(batch_size=8, workers=0, device="cpu")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    # Planted copies: rows 1000-1099 are noisy versions of rows 0-99 (cosine ~0.93).
    x[1000:1100] = x[:100] + 0.05 * rng.standard_normal((100, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("text,expected", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GB", int(1.5 * 2**30)), ("2GiB", 2 << 30),
                                           ("1000", 1000), ("auto", None), (None, None)])
def test_parse_size(text, expected):
    assert index_choice.parse_size(text) == expected


def test_parse_size_refuses_nonsense():
    with pytest.raises(index_choice.BudgetError, match="--memory-budget 'lots' is not a size"):
        index_choice.parse_size("lots")


def test_budget_picks_the_most_exact_index_that_fits():
    n, dim = 2_000_000, 128
    kinds = {p.kind: p for p in index_choice.candidates(n, dim)}
    assert "Flat" not in kinds  # an all-against-all exact search of 2M would take days
    # Bytes per vector as the estimates say: float codes, 8-bit codes, PQ codes, nothing in RAM.
    assert kinds["IVF-Flat"].memory_bytes > 4 * dim * n > kinds["IVF-SQ8"].memory_bytes > dim * n
    assert kinds["IVF-PQ"].memory_bytes < kinds["IVF-SQ8"].memory_bytes / 2
    assert kinds["on-disk"].memory_bytes < 10 << 20 and kinds["on-disk"].disk_bytes > dim * n
    gib = 1 << 30
    assert index_choice.plan_index(n, dim, 16 * gib).kind == "IVF-Flat"
    assert index_choice.plan_index(n, dim, int(0.6 * gib)).kind == "IVF-SQ8"
    assert index_choice.plan_index(n, dim, int(0.4 * gib)).factory == "IVF4096,PQ32"
    assert index_choice.plan_index(n, dim, int(0.33 * gib)).kind == "on-disk"
    with pytest.raises(index_choice.BudgetError, match="too small for 2,000,000 vectors"):
        index_choice.plan_index(n, dim, int(0.2 * gib))
    small = index_choice.plan_index(5_000, 128, gib)
    assert small.kind == "Flat" and "budget" in small.reason


@pytest.mark.parametrize("kind", ["Flat", "IVF-Flat", "IVF-SQ8", "IVF-PQ", "on-disk"])
def test_every_kind_finds_the_exact_pairs_with_exact_scores(kind, tmp_path):
    x = unit_vectors(6000, 32)
    exact = find_pairs(x, 0.8)
    plan = next(p for p in index_choice.candidates(len(x), x.shape[1]) if p.kind == kind)
    search = pair_search.prepare(tmp_path / "work", x, threshold=0.8, plan=plan, slice_rows=2500)
    assert (search.margin > 0) == (not plan.exact_scores)
    pair_search.run_local(search)
    assert len(search.files()) == 3 and all(p.exists() for p in search.files())
    got = pair_search.load_pairs(search.files(), len(x))
    assert len(exact) >= 100
    assert list(zip(got.first.tolist(), got.second.tolist())) == list(zip(exact.first.tolist(), exact.second.tolist()))
    # Scores are exact cosines whatever the codes: the threshold keeps its meaning.
    np.testing.assert_allclose(got.score, np.einsum("ij,ij->i", x[got.first], x[got.second]), atol=1e-6)


def test_large_nlist_uses_an_hnsw_quantiser_a_bounded_sample_and_a_fixed_nprobe(tmp_path, monkeypatch):
    # The settings that make a 10M build affordable, exercised at a small size by lowering the
    # boundary: the index file (mapped by each slice) still finds every planted pair exactly.
    monkeypatch.setattr(index_choice, "LARGE_NLIST", 32)
    monkeypatch.setattr(index_choice, "LARGE_NPROBE", 16)
    monkeypatch.setattr(index_choice, "TRAIN_MAX", 2048)
    assert index_choice.default_nprobe(64) == 16 and index_choice.default_nprobe(32) == 16
    assert index_choice.train_size(10**6, 64) == 2048 and index_choice.train_size(10**6, 32) == 64 * 32
    x = unit_vectors(6000, 32)
    plan = index_choice.IndexPlan("IVF-SQ8", f"{index_choice.coarse(64)},SQ8", 64, index_choice.default_nprobe(64),
                                  exact_scores=False)
    assert plan.factory == "IVF64_HNSW32,SQ8"
    search = pair_search.prepare(tmp_path / "w", x, threshold=0.8, plan=plan, slice_rows=2500)
    index = pair_search.open_index(str(search.index_path), search.nprobe)
    import faiss

    quantiser = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    assert isinstance(quantiser, faiss.IndexHNSWFlat) and quantiser.hnsw.efSearch == index_choice.QUANTIZER_EF
    assert faiss.extract_index_ivf(index).nprobe == 16
    pair_search.run_local(search)
    got = pair_search.load_pairs(search.files(), len(x))
    exact = find_pairs(x, 0.8)
    assert list(zip(got.first.tolist(), got.second.tolist())) == list(zip(exact.first.tolist(), exact.second.tolist()))


def test_pair_search_resumes_at_the_missing_slice(tmp_path):
    x = unit_vectors(6000, 32)
    search = pair_search.prepare(tmp_path / "w", x, threshold=0.8, slice_rows=2000, source="s1")
    pair_search.run_local(search)
    first = pair_search.load_pairs(search.files(), len(x))
    search.files()[1].unlink()  # a run killed before its second slice was written
    again = pair_search.prepare(tmp_path / "w", x, threshold=0.8, slice_rows=2000, source="s1")
    assert [j.out_path for j in again.jobs()] == [str(search.files()[1])]
    pair_search.run_local(again)
    assert pair_search.load_pairs(again.files(), len(x)) == first
    other = pair_search.prepare(tmp_path / "w", x, threshold=0.85, slice_rows=2000, source="s1")
    assert len(other.jobs()) == 3  # other settings: starts afresh


def test_streamed_grouping_equals_build_groups():
    rng = np.random.default_rng(0)
    n = 2000
    ch = [f"{rng.integers(0, 1700):x}" if rng.random() < 0.5 else "" for _ in range(n)]
    ph = [f"{rng.integers(0, 1700):x}" if rng.random() < 0.5 else "" for _ in range(n)]
    items = [Item(f"/p/{i}.jpg", int(rng.integers(10, 100)), int(rng.integers(10, 100)), int(rng.integers(100, 999)), ch[i], ph[i])
             for i in range(n)]
    a, b = exact_cluster_labels(items), exact_labels(ch, ph)
    assert len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))  # same partition
    i, j = rng.integers(0, n, 8000), rng.integers(0, n, 8000)
    keep = i != j
    pairs = Pairs(np.minimum(i, j)[keep], np.maximum(i, j)[keep], rng.uniform(0.75, 1, keep.sum()).astype(np.float32)).best_per_pair(n)
    expected = build_groups(items, pairs)
    columns = ItemColumns([it.path for it in items], [it.width for it in items], [it.height for it in items],
                          [it.bytes for it in items], ch, ph)
    batches = [Pairs(pairs.first[k:k + 500], pairs.second[k:k + 500], pairs.score[k:k + 500]) for k in range(0, len(pairs), 500)]
    got = build_groups_streamed(columns, batches, 0.75)
    assert [[(m.path, m.role, round(m.score, 6)) for m in g.members] for g in got] == \
           [[(m.path, m.role, round(m.score, 6)) for m in g.members] for g in expected]


@pytest.fixture()
def photos(tmp_path):
    for s in range(10):
        make_photo(tmp_path / "photos" / f"p{s}.jpg", size=(96, 72), seed=s)
    make_photo(tmp_path / "photos" / "copy.png", size=(96, 72), seed=0)
    make_photo(tmp_path / "photos" / "small.jpg", size=(60, 45), seed=3)
    return tmp_path


def test_memory_budget_index_and_sliced_dedupe_match_the_default(photos, tiny_model_path):
    folder = photos / "photos"
    plain = api.dedupe(folder, output=photos / "out", index_dir=photos / "idx", model=str(tiny_model_path),
                       extraction=NO_WORKERS, report=False, threshold=0.9)
    sliced = api.dedupe(folder, output=photos / "out2", index_dir=photos / "idx", extraction=NO_WORKERS, report=False,
                        threshold=0.9, memory_budget="4G")
    assert plain.groups and [[(m.path, round(m.score, 5)) for m in g.members] for g in sliced.groups] == \
           [[(m.path, round(m.score, 5)) for m in g.members] for g in plain.groups]
    assert sorted(p.name for p in (photos / "out2" / "pairs" / "pairs").iterdir()) == ["pairs-000000.parquet"]
    assert not (photos / "out2" / "pairs" / "vectors.npy").exists()  # scratch removed after the run
    manifest = IndexStore(photos / "idx").read_manifest()
    assert manifest["faiss"]["choice"] == "Flat" and manifest["faiss"]["margin"] == 0.0



@pytest.mark.parametrize("options", [{"memory_budget": "4G"}, {"engine": "ray"}])
def test_regions_with_a_sliced_dedupe_is_refused_naming_both(photos, tiny_model_path, options):
    from copyscan.errors import UserError

    with pytest.raises(UserError, match="--regions") as err:
        api.dedupe(photos / "photos", output=photos / "out3", index_dir=photos / "idx3", model=str(tiny_model_path),
                   extraction=NO_WORKERS, report=False, regions=True, **options)
    assert ("--memory-budget" if "memory_budget" in options else "--engine ray") in str(err.value)
    assert not (photos / "idx3").exists() and not (photos / "out3").exists()  # refused before any work

def test_approximate_index_reports_exact_scores(photos, tiny_model_path, monkeypatch):
    # Force SQ8 codes on a tiny index: scores must still be the exact ones of the Flat index.
    folder = photos / "photos"
    api.index_folder(folder, index_dir=photos / "flat", model=str(tiny_model_path), extraction=NO_WORKERS)
    real = index_choice.candidates
    monkeypatch.setattr(index_choice, "candidates",
                        lambda n, d: [p for p in real(n, d) if p.kind == "IVF-SQ8"])
    api.index_folder(folder, index_dir=photos / "sq8", model=str(tiny_model_path), extraction=NO_WORKERS)
    meta = IndexStore(photos / "sq8").read_manifest()["faiss"]
    assert meta["choice"] == "IVF-SQ8" and meta["margin"] > 0

    def scored(path):  # (query, reference, score) without the rank, which ties may swap
        return sorted(tuple(line.split(",")[:3]) for line in path.read_text().splitlines()[1:])

    # Every image against every other (top-k above the folder's size): the same matches, same
    # scores, with whole images only and with query crops (regions, query's default) alike.
    for regions in (False, True):
        a = api.query_folder(folder, index_dir=photos / "flat", output=photos / "q1", report=False, threshold=0.5,
                             extraction=NO_WORKERS, top_k=20, regions=regions)
        b = api.query_folder(folder, index_dir=photos / "sq8", output=photos / "q2", report=False, threshold=0.5,
                             extraction=NO_WORKERS, top_k=20, regions=regions)
        assert a.matches == b.matches == 12 * 11
        assert scored(photos / "q1" / "matches.csv") == scored(photos / "q2" / "matches.csv")


def test_cli_refuses_bad_engine_and_budget(photos, tiny_model_path):
    from typer.testing import CliRunner

    from copyscan.cli import app

    folder, index = str(photos / "photos"), str(photos / "idx")
    bad_engine = CliRunner().invoke(app, ["index", folder, "--index-dir", index, "-m", str(tiny_model_path), "--engine", "spark"])
    assert bad_engine.exit_code == 1 and "--engine must be local or ray" in bad_engine.output
    bad_budget = CliRunner().invoke(app, ["dedupe", folder, "--index-dir", index, "--memory-budget", "lots"])
    assert bad_budget.exit_code == 1 and "--memory-budget 'lots' is not a size" in bad_budget.output
    ok = CliRunner().invoke(app, ["index", folder, "--index-dir", index, "-m", str(tiny_model_path), "-q", "--workers", "0",
                                  "--memory-budget", "1G"])
    assert ok.exit_code == 0, ok.output
    assert IndexStore(index).read_manifest()["faiss"]["rule"].startswith("budget 1.0 GB: Flat")
