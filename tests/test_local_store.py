"""Stored local features (`index --regions`, copyscan.local_store): what is stored follows the
index, and `query --regions` verifies against them instead of decoding every reference again."""

from __future__ import annotations

import errno
import os
import sqlite3

import numpy as np
import pytest
from PIL import Image

from conftest import make_pasted_copies, make_photo, photo_array, read_rows

import copyscan.api as api
from copyscan import region_search
from copyscan.extraction import Extraction
from copyscan.local_store import LocalFeatureReader, LocalFeatureWriter
from copyscan.region_search import RegionSettings
from copyscan.store import IndexStore
from copyscan.local_features import Features, features_of, file_features
from copyscan.verify import verify

X0 = Extraction(workers=0)


def stored_paths(index_dir) -> set[str]:
    path = IndexStore(index_dir).local_features_path
    with sqlite3.connect(path) as db:
        return {p for (p,) in db.execute("SELECT path FROM features")}


def test_features_round_trip_keeps_what_verification_needs():
    ref = Image.fromarray(photo_array((320, 240), seed=3))
    query = Image.fromarray(photo_array((640, 480), seed=4))
    query.paste(ref.resize((288, 216)), (200, 150))
    f = features_of(ref)
    back = Features.from_bytes(f.to_bytes())
    assert (back.width, back.height) == (f.width, f.height)
    assert np.array_equal(back.descriptors, f.descriptors)
    assert np.abs(back.points - f.points).max() < 1e-4  # 16-bit fractions
    assert len(f.to_bytes()) == 6 + 36 * len(f.descriptors)
    a, b = verify(features_of(query), f), verify(features_of(query), back)
    assert a is not None and b is not None and abs(a.inliers - b.inliers) <= 2
    assert np.allclose(a.query_box, b.query_box, atol=0.01)
    empty = Features.empty(40, 30)
    again = Features.from_bytes(empty.to_bytes())
    assert again.descriptors is None and (again.width, again.height) == (40, 30)
    with pytest.raises(ValueError):
        Features.from_bytes(f.to_bytes()[:-1])


def test_index_regions_stores_features_that_follow_the_folder(tmp_path):
    folder = tmp_path / "refs"
    for s in range(4):
        make_photo(folder / f"r{s}.jpg", size=(320, 240), seed=s)
    idx = tmp_path / "idx"
    api.index_folder(folder, index_dir=tmp_path / "plain", extraction=X0)
    assert not IndexStore(tmp_path / "plain").local_features_path.exists()  # only --regions pays for them
    api.index_folder(folder, index_dir=idx, extraction=X0, regions=True)
    paths = {str((folder / f"r{s}.jpg").resolve()) for s in range(4)}
    assert stored_paths(idx) == paths
    reader = LocalFeatureReader.open(IndexStore(idx).local_features_path)
    one = str((folder / "r1.jpg").resolve())
    expected = file_features(one)
    got = reader.get(one)
    assert np.array_equal(got.descriptors, expected.descriptors)
    assert reader.get(str(folder / "missing.jpg")) is None
    # A removed image's features go with its row; a changed one's are computed again.
    os.remove(folder / "r0.jpg")
    make_photo(folder / "r2.jpg", size=(320, 240), seed=99)
    api.index_folder(folder, index_dir=idx, extraction=X0, regions=True)
    assert stored_paths(idx) == paths - {str((folder / "r0.jpg").resolve())}
    two = str((folder / "r2.jpg").resolve())
    assert np.array_equal(reader.get(two).descriptors, file_features(two).descriptors)
    # Re-embedded without --regions: its old features no longer describe it and are dropped.
    make_photo(folder / "r3.jpg", size=(320, 240), seed=98)
    api.index_folder(folder, index_dir=idx, extraction=X0)
    assert str((folder / "r3.jpg").resolve()) not in stored_paths(idx)


def test_features_of_other_settings_are_not_used(tmp_path):
    path = tmp_path / "local.sqlite"
    writer = LocalFeatureWriter(path)
    f = features_of(Image.fromarray(photo_array((200, 150), seed=1)))
    writer.put([("/a.jpg", f.to_bytes())])
    writer.close()
    assert LocalFeatureReader.open(path).get("/a.jpg") is not None
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'orb side=512' WHERE key = 'settings'")
    assert LocalFeatureReader.open(path) is None  # another version's ORB settings: computed instead
    writer = LocalFeatureWriter(path)  # and a writer starts afresh
    writer.put([("/b.jpg", f.to_bytes())])
    writer.close()
    reader = LocalFeatureReader.open(path)
    assert reader.get("/a.jpg") is None and reader.get("/b.jpg") is not None
    assert LocalFeatureReader.open(tmp_path / "none.sqlite") is None
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    assert LocalFeatureReader.open(tmp_path / "junk.sqlite") is None


def test_band_depends_on_stored_features():
    s = RegionSettings()
    assert s.band(True) == s.verify_band and s.band(False) == s.unstored_band
    assert s.band(True)[0] < s.band(False)[0]  # stored: a pair costs half, more of them verified
    assert RegionSettings(unstored_band=None).band(False) == s.verify_band
    assert RegionSettings(verify_band=None).band(False) is None


def test_query_regions_reads_references_features_instead_of_their_files(tmp_path, monkeypatch):
    refs, queries = tmp_path / "refs", tmp_path / "q"
    make_pasted_copies(refs, queries, 4, 3, seed=800, fill=0.5)
    api.index_folder(refs, index_dir=tmp_path / "plain", extraction=X0)
    api.index_folder(refs, index_dir=tmp_path / "regions", extraction=X0, regions=True)
    computed: list[str] = []
    real = region_search._features

    def counting(path):
        computed.append(path)
        return real(path)

    monkeypatch.setattr(region_search, "_features", counting)
    # One band for both, so that the stored features alone differ: the same matches and boxes.
    settings = RegionSettings(unstored_band=None, verify_band=(-1.0, 1.0))
    outs = {}
    for name in ("plain", "regions"):
        computed.clear()
        api.query_folder(queries, index_dir=tmp_path / name, output=tmp_path / f"out-{name}", threshold=-1, top_k=2,
                         extraction=X0, report=False, regions=True, region_settings=settings)
        outs[name] = (read_rows(tmp_path / f"out-{name}" / "matches.csv"), list(computed))
    rows_plain, computed_plain = outs["plain"]
    rows_regions, computed_regions = outs["regions"]
    assert any("/refs/" in p for p in computed_plain)  # without stored features, references decoded
    assert computed_regions and not any("/refs/" in p for p in computed_regions)  # with them, only queries
    key = lambda r: (r["query_path"], r["reference_path"])  # noqa: E731
    assert [key(r) for r in rows_plain] == [key(r) for r in rows_regions]
    for a, b in zip(rows_plain, rows_regions):
        assert abs(float(a["score"]) - float(b["score"])) < 0.02
    top = {r["query_path"].split("/")[-1]: r["reference_path"].split("/")[-1] for r in rows_regions if r["rank"] == "1"}
    assert sum(top[f"q{s}.jpg"] == f"r{s}.jpg" for s in range(3)) >= 2


def test_a_damaged_features_file_is_replaced_and_search_still_works(tmp_path):
    folder, idx = tmp_path / "refs", tmp_path / "idx"
    for s in range(3):
        make_photo(folder / f"r{s}.jpg", size=(320, 240), seed=40 + s)
    api.index_folder(folder, index_dir=idx, extraction=X0, regions=True)
    path = IndexStore(idx).local_features_path
    path.write_bytes(b"this is no database " * 200)
    assert LocalFeatureReader.open(path) is None  # a reader falls back to computing features
    api.query_folder(folder, index_dir=idx, output=tmp_path / "out", threshold=-1, top_k=2, extraction=X0,
                     report=False, regions=True)
    assert read_rows(tmp_path / "out" / "matches.csv")
    make_photo(folder / "new.jpg", size=(320, 240), seed=77)
    # The writer replaces it; the images it described are embedded again to get theirs.
    summary = api.index_folder(folder, index_dir=idx, extraction=X0, regions=True)
    assert summary.embedded == 4
    assert stored_paths(idx) == {str(p.resolve()) for p in folder.iterdir()}
    path.unlink()  # lost: the same
    assert api.index_folder(folder, index_dir=idx, extraction=X0, regions=True).embedded == 4
    assert api.index_folder(folder, index_dir=idx, extraction=X0, regions=True).embedded == 0


@pytest.mark.parametrize("message, code", [("database or disk is full", errno.ENOSPC),
                                           ("attempt to write a readonly database", errno.EROFS),
                                           ("unable to open database file", errno.EACCES)])
def test_sqlite_write_failures_become_the_os_errors_they_are(tmp_path, message, code):
    from copyscan.local_store import _as_os_errors
    from copyscan.oserrors import writing
    from copyscan.errors import WriteError

    with pytest.raises(OSError) as raised, _as_os_errors(tmp_path / "f.sqlite"):
        raise sqlite3.OperationalError(message)
    assert raised.value.errno == code and raised.value.filename == str(tmp_path / "f.sqlite")
    with pytest.raises(WriteError), writing(tmp_path / "f.sqlite", "--index-dir"), _as_os_errors(tmp_path / "f.sqlite"):
        raise sqlite3.OperationalError(message)
    with pytest.raises(sqlite3.OperationalError), _as_os_errors(tmp_path / "f.sqlite"):
        raise sqlite3.OperationalError("no such table: features")  # a bug stays a bug
