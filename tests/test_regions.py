"""Regions (--regions): boxes, geometric verification, region rows in the store, and where the copy
sits in matches.csv, groups.csv and the HTML report (issue 18)."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_pasted_copies, make_photo, paste, photo_array, read_rows

import copyscan.api as api
from copyscan.extraction import Extraction
from copyscan.identity import ModelInfo
from copyscan.outputs import BOX_COLUMNS
from copyscan.region_search import RowTable, image_pairs
from copyscan.regions import FULL_BOX, grid_boxes, iou, with_region_rows
from copyscan.results import Match, QueryResult
from copyscan.store import IndexStore, Row, paths_of, rows_to_table
from copyscan.local_features import features_of
from copyscan.verify import verify


X0 = Extraction(workers=0)  # decode in this process: a few images do not pay for worker start-up


# ---- boxes -----------------------------------------------------------------------------------------


def test_grid_boxes_and_iou():
    assert grid_boxes(0.6, 1) == [(0.2, 0.2, 0.8, 0.8)]
    grid = grid_boxes(0.6, 3)
    assert len(grid) == 9 and grid[0] == (0.0, 0.0, 0.6, 0.6) and grid[-1] == (0.4, 0.4, 1.0, 1.0)
    assert all(0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in grid_boxes(0.75, 2))
    assert iou(FULL_BOX, FULL_BOX) == 1.0
    assert iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0
    assert iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == pytest.approx(0.5)


def test_with_region_rows_orders_images_then_regions():
    rows = [Row(f"/p/{i}.jpg", 1, 1, "h", "p", 10, 10) for i in range(2)]
    desc = np.eye(2, 4, dtype=np.float32)
    region_desc = np.ones((4, 4), np.float32)
    boxes = [(0.2, 0.2, 0.8, 0.8), (0, 0, 0.5, 0.5)]
    out_rows, out_desc, kinds, out_boxes = with_region_rows(rows, desc, region_desc, boxes)
    assert [r.path for r in out_rows] == ["/p/0.jpg", "/p/1.jpg", "/p/0.jpg", "/p/0.jpg", "/p/1.jpg", "/p/1.jpg"]
    assert kinds.tolist() == [0, 0, 1, 2, 1, 2]
    assert out_desc.shape == (6, 4) and out_boxes.shape == (6, 4)
    assert tuple(out_boxes[0]) == FULL_BOX and out_boxes[3].tolist() == [0, 0, 0.5, 0.5]


# ---- geometric verification --------------------------------------------------------------------


def test_verify_places_pasted_copies():
    # The check in small: IoU of the reported box >= 0.5 for 90% of the pastes found.
    rng = random.Random(0)
    ious = []
    for k in range(6):
        ref = Image.fromarray(photo_array((320, 240), seed=10 + k))
        query, truth = paste(ref, Image.fromarray(photo_array((640, 480), seed=100 + k)), rng.uniform(0.3, 0.7), rng)
        v = verify(features_of(query), features_of(ref))
        if v is not None:
            ious.append(iou(v.query_box, truth))
            assert v.reference_box == pytest.approx(FULL_BOX, abs=0.05)  # the whole reference is shown
    assert len(ious) >= 5
    assert np.mean([x >= 0.5 for x in ious]) >= 0.9


def test_verify_crop_gives_the_reference_box():
    # A centred 60% crop: the synthetic photo has few corners, and a 50% crop of this one keeps
    # too few of them at local_features.FEATURE_SIDE (384) to pass MIN_INLIERS.
    ref = Image.fromarray(photo_array((640, 480), seed=0))
    query = ref.crop((128, 96, 512, 384))
    v = verify(features_of(query), features_of(ref))
    assert v is not None
    assert v.query_box == pytest.approx(FULL_BOX, abs=0.05)
    assert iou(v.reference_box, (0.2, 0.2, 0.8, 0.8)) >= 0.8


def test_verify_rejects_unrelated_and_mirrored_images():
    a = Image.fromarray(photo_array((400, 300), seed=1))
    b = Image.fromarray(photo_array((400, 300), seed=2))
    assert verify(features_of(a), features_of(b)) is None
    flat = Image.new("RGB", (300, 200), (120, 120, 120))  # no keypoints at all
    assert verify(features_of(flat), features_of(a)) is None


# ---- store: region rows beside the image's row ------------------------------------------------


def test_region_rows_live_with_their_image_and_old_shards_read_as_whole_images(tmp_path):
    store = IndexStore(tmp_path / "idx")
    store.shard_dir.mkdir(parents=True)
    a = Row("/p/a.jpg", 1, 1, "h", "p", 10, 10)
    b = Row("/p/b.jpg", 1, 1, "h", "p", 10, 10)
    info = ModelInfo("tiny", 4, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "a" * 64, "torch", "/models/tiny.safetensors")
    store.write_shard(0, rows_to_table([a, b], np.eye(2, 4, dtype=np.float32)), info)  # before regions
    rows, desc, kinds, boxes = with_region_rows([a], np.ones((1, 4), np.float32), np.ones((1, 4), np.float32),
                                                [(0.2, 0.2, 0.8, 0.8)])
    store.write_shard(1, rows_to_table(rows, desc, kinds, boxes), info)  # a again, now with a region row
    table = store.read_table(["descriptor", "region", "box"])
    info = RowTable.from_table(table, paths_of(table))
    assert sorted(zip(info.paths, info.regions.tolist())) == [("/p/a.jpg", 0), ("/p/a.jpg", 1), ("/p/b.jpg", 0)]
    assert info.has_regions and info.per_image == 2
    region_row = int(np.nonzero(info.regions == 1)[0][0])
    assert info.boxes[region_row].tolist() == pytest.approx([0.2, 0.2, 0.8, 0.8])
    assert store.paths_with_regions() == {"/p/a.jpg"}
    assert store.compact(set()) == 1  # a's old row goes, its two new rows stay
    assert pq.read_table(store.shard_paths()[-1]).num_rows == 2


def test_image_pairs_drop_same_image_and_region_region_pairs():
    info = RowTable(["a", "b", "a", "b"], np.array([0, 0, 1, 1], np.int16),
                    np.array([FULL_BOX, FULL_BOX, (0.2, 0.2, 0.8, 0.8), (0, 0, 0.5, 0.5)], np.float32))
    first, second = np.array([0, 0, 1, 2, 0]), np.array([1, 2, 2, 3, 3])
    scores = np.array([0.5, 0.9, 0.8, 0.99, 0.6], np.float32)
    found = image_pairs(first, second, scores, info, np.array([0, 1, 0, 1]))
    # (a, a-region) is one image; (a-region, b-region) is region-region; best of the rest: 0.8
    assert found.first.tolist() == [0] and found.second.tolist() == [1]
    assert found.score.tolist() == pytest.approx([0.8])
    box_a, box_b = found.boxes[(0, 1)]
    assert box_a == pytest.approx((0.2, 0.2, 0.8, 0.8)) and box_b == FULL_BOX


# ---- end to end --------------------------------------------------------------------------------


def test_index_regions_leave_plain_search_unchanged(tmp_path, tiny_model_path):
    folder = tmp_path / "refs"
    for s in range(5):
        make_photo(folder / f"r{s}.jpg", size=(200, 150), seed=s)
    plain = api.index_folder(folder, index_dir=tmp_path / "plain", model=str(tiny_model_path), extraction=X0)
    regions = api.index_folder(folder, index_dir=tmp_path / "regions", model=str(tiny_model_path), extraction=X0, regions=True)
    assert plain.total == regions.total == 5 and regions.embedded == 5
    manifest = json.loads((tmp_path / "regions" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 5 and manifest["counts"]["region_rows"] == 5
    for name in ("plain", "regions"):
        api.query_folder(folder, index_dir=tmp_path / name, output=tmp_path / f"out-{name}", threshold=-1, top_k=3,
                         extraction=X0, report=False)
    assert read_rows(tmp_path / "out-plain" / "matches.csv") == read_rows(tmp_path / "out-regions" / "matches.csv")
    # Indexing again with --regions re-embeds nothing; without, the region rows stay.
    assert api.index_folder(folder, index_dir=tmp_path / "regions", model=str(tiny_model_path), extraction=X0, regions=True).embedded == 0
    assert api.index_folder(folder, index_dir=tmp_path / "plain", model=str(tiny_model_path), extraction=X0, regions=True).embedded == 5


def _pasted(tmp_path):
    """refs/r0.jpg, and q/screen.jpg holding it at 45% of the width, off centre; its box there."""
    refs = tmp_path / "refs"
    make_photo(refs / "r0.jpg", size=(480, 360), seed=300)
    with Image.open(refs / "r0.jpg") as ref:
        query = Image.fromarray(photo_array((800, 600), seed=400))
        query.paste(ref.resize((360, 270)), (300, 200))
    (tmp_path / "q").mkdir()
    query.save(tmp_path / "q" / "screen.jpg", quality=92)
    return refs, (300 / 800, 200 / 600, 660 / 800, 470 / 600)


def test_query_cli_uses_regions_unless_told_not_to(tmp_path, monkeypatch):
    """`copyscan query` finds the pasted photo at its default threshold; --no-regions (whole
    images only) does not, and reports whole-image boxes only."""
    from typer.testing import CliRunner

    from copyscan.cli import app

    refs, _ = _pasted(tmp_path)
    monkeypatch.chdir(tmp_path)

    def query(*extra):
        result = CliRunner().invoke(app, ["query", "q", "--index", "idx", "-j", "0", "-q", *extra])
        assert result.exit_code == 0, result.output
        return read_rows(tmp_path / ("whole" if extra else "copyscan-query") / "matches.csv")

    assert CliRunner().invoke(app, ["index", "refs", "--index", "idx", "-j", "0", "-q"]).exit_code == 0
    found = query()
    assert [r["reference_path"].endswith("r0.jpg") for r in found] == [True]
    assert tuple(float(found[0][c]) for c in BOX_COLUMNS[:4]) != (0.0, 0.0, 1.0, 1.0)
    assert query("--no-regions", "-o", "whole") == []


def test_query_regions_finds_a_paste_and_where_it_sits(tmp_path):
    # The shipped model: a photo pasted at 45% of a larger picture's width scores low as a whole
    # image; with --regions it is found and its box reported on both sides. One reference: the
    # synthetic pictures are of one style, and which of several the shipped model ranks first as
    # a whole image is the model's matter, not this test's (session 6's default put another one
    # 0.02 above the pasted reference; the runner-up rule is tested on its own below).
    refs, truth = _pasted(tmp_path)
    api.index_folder(refs, index_dir=tmp_path / "idx", extraction=X0)
    plain = api.query_folder(tmp_path / "q", index_dir=tmp_path / "idx", output=tmp_path / "plain", threshold=-1, top_k=2,
                             extraction=X0, report=False, regions=False)
    # At the default threshold, with query's default (regions on): a copy below it as a whole
    # image, lifted over it by its crop or its verified box, is reported.
    found = api.query_folder(tmp_path / "q", index_dir=tmp_path / "idx", output=tmp_path / "out", top_k=2,
                             extraction=X0)
    assert plain.queries == found.queries == 1
    before = read_rows(tmp_path / "plain" / "matches.csv")
    rows = read_rows(tmp_path / "out" / "matches.csv")
    assert list(rows[0])[4:] == BOX_COLUMNS
    assert rows[0]["reference_path"].endswith("r0.jpg")
    score_before = max(float(r["score"]) for r in before if r["reference_path"].endswith("r0.jpg")) if before else -1
    assert float(rows[0]["score"]) > score_before and float(rows[0]["score"]) >= api.DEFAULT_THRESHOLD > score_before
    box = tuple(float(rows[0][c]) for c in BOX_COLUMNS[:4])
    assert iou(box, truth) >= 0.5
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'class="where"' in html  # the box drawn on the query's thumbnail


def test_query_regions_chunks_verified_beside_the_next_give_the_same_results(tmp_path):
    # A chunk's pairs are verified on threads while the next chunk is embedded: with chunks of
    # two queries, every query keeps its own results, in order, as with one chunk for all.
    from copyscan.region_search import RegionSettings

    refs, queries = tmp_path / "refs", tmp_path / "q"
    make_pasted_copies(refs, queries, 5, 5, seed=500, fill=0.45)
    make_photo(queries / "other.jpg", size=(640, 480), seed=700)
    api.index_folder(refs, index_dir=tmp_path / "idx", extraction=X0)
    outs = {}
    for chunk in (2, 64):
        out = tmp_path / f"out{chunk}"
        api.query_folder(queries, index_dir=tmp_path / "idx", output=out, threshold=-1, top_k=3, extraction=X0,
                         report=False, regions=True, region_settings=RegionSettings(chunk=chunk))
        outs[chunk] = read_rows(out / "matches.csv")
    assert outs[2] == outs[64]
    found = {r["query_path"].split("/")[-1]: r for r in outs[2] if r["rank"] == "1"}
    assert sum(found[f"q{s}.jpg"]["reference_path"].endswith(f"r{s}.jpg") for s in range(5)) >= 4


def test_dedupe_regions_reports_the_box_and_its_area(tmp_path):
    folder = tmp_path / "photos"
    for s in range(3):
        make_photo(folder / f"p{s}.jpg", size=(480, 360), seed=500 + s)
    with Image.open(folder / "p0.jpg") as im:
        # A screenshot-like frame: the photo at 80% of the width, bars around it. The default
        # model matches the whole frame best (no crop wins); the pair is placed all the same.
        frame = Image.new("RGB", (600, 540), (245, 245, 245))
        frame.paste(im, (60, 90))
        frame.save(folder / "screenshot.png")
    # At 0.75: the box is the point here, and unrelated synthetic pictures of one style score up
    # to 0.71 with the default models (training/MODELS.md); the screenshot scores 0.88-0.90 with
    # its photo as a whole image, so dedupe places it by verification (dedupe_place_below).
    s = api.dedupe(folder, output=tmp_path / "out", index_dir=tmp_path / "idx", extraction=X0, regions=True,
                   threshold=0.75)
    groups = [g for g in s.groups if {m.path.rsplit("/", 1)[-1] for m in g.members} == {"p0.jpg", "screenshot.png"}]
    assert len(groups) == 1
    shot = next(m for m in groups[0].members if m.path.endswith("screenshot.png"))
    photo = next(m for m in groups[0].members if m.path.endswith("p0.jpg"))
    # Where the photo sits in the screenshot, as the box of whichever member is the copy.
    in_shot = shot.box if shot.role == "copy" else photo.keep_box
    assert iou(in_shot, (60 / 600, 90 / 540, 540 / 600, 450 / 540)) >= 0.9  # placed, not the whole frame
    doc = json.loads((tmp_path / "out" / "groups.json").read_text())
    member = next(m for g in doc["groups"] for m in g["members"] if m["path"].endswith("screenshot.png"))
    assert "box_area" in member and "keep_box" in member
    header = next(csv.reader(open(tmp_path / "out" / "groups.csv", encoding="utf-8")))
    assert header[-8:] == ["box_x0", "box_y0", "box_x1", "box_y1", "keep_box_x0", "keep_box_y0", "keep_box_x1", "keep_box_y1"]


@pytest.mark.parametrize("regions", [True, False])
def test_dedupe_verifies_a_paste_the_descriptors_doubt(tmp_path, regions):
    # A photo pasted small and off centre into another scores below the threshold whole and in
    # the centred crop; dedupe (plain by default, and with --regions) verifies each ungrouped
    # image's best uncertain partner (and the runner-up within 0.05 of it), and the inliers group
    # it, with the box where it sits. --no-verify (verify=False) leaves it out: neither the whole
    # image nor the crops find it. The default model scores p1 (an unrelated picture of the same
    # synthetic style) 0.545 against the collage, above the pasted p0's 0.517: p0 is the runner-up.
    folder = tmp_path / "photos"
    for s in range(4):
        make_photo(folder / f"p{s}.jpg", size=(480, 360), seed=800 + s)
    with Image.open(folder / "p0.jpg") as im:
        # On a plain gradient: the synthetic photos look alike, and the paste must be what the
        # collage has most in common with any of them.
        ramp = np.linspace(40, 220, 800, dtype=np.float32)
        collage = Image.fromarray(np.stack([np.tile(ramp, (600, 1)), np.tile(ramp[::-1], (600, 1)),
                                            np.full((600, 800), 128, np.float32)], -1).astype(np.uint8))
        collage.paste(im.resize((320, 240)), (440, 30))
        collage.save(folder / "collage.jpg", quality=92)
    truth = (440 / 800, 30 / 600, 760 / 800, 270 / 600)

    def pasted_group(out: str, **kw):
        s = api.dedupe(folder, output=tmp_path / out, index_dir=tmp_path / "idx", extraction=X0, regions=regions, **kw)
        return [g for g in s.groups if {m.path.rsplit("/", 1)[-1] for m in g.members} >= {"p0.jpg", "collage.jpg"}]

    assert pasted_group("without", verify=False) == []
    groups = pasted_group("with")
    assert len(groups) == 1
    shot = next(m for m in groups[0].members if m.path.endswith("collage.jpg"))
    photo = next(m for m in groups[0].members if m.path.endswith("p0.jpg"))
    in_collage = shot.box if shot.role == "copy" else photo.keep_box
    assert iou(in_collage, truth) >= 0.5


def test_report_draws_boxes_only_for_partial_copies(tmp_path):
    from copyscan.report import write_query_report

    make_photo(tmp_path / "q.jpg", size=(120, 90), seed=1)
    make_photo(tmp_path / "r.jpg", size=(120, 90), seed=2)
    whole = QueryResult(str(tmp_path / "q.jpg"), [Match(str(tmp_path / "r.jpg"), 0.9, 1)])
    page = write_query_report(tmp_path / "a", [whole], {}).read_text()
    assert 'class="where"' not in page
    part = QueryResult(str(tmp_path / "q.jpg"), [Match(str(tmp_path / "r.jpg"), 0.9, 1, (0.1, 0.2, 0.6, 0.7), FULL_BOX)])
    page = write_query_report(tmp_path / "b", [part], {}).read_text()
    assert page.count('class="where"') == 1 and "left:10.0%;top:20.0%;width:50.0%;height:50.0%" in page


def test_calibrate_scores_with_crops_only_raise_uncertain_rows(tmp_path, tiny_model_path, monkeypatch):
    from copyscan.models import create_model
    from copyscan.region_search import RegionSettings, best_with_regions

    import copyscan.embed as embed

    model = create_model(str(tiny_model_path), "cpu")
    paths = [str(make_photo(tmp_path / f"c{i}.jpg", size=(160, 120), seed=i)) for i in range(4)]
    # Row 0 is certain, row 3 resembles nothing (below crop_from); rows 1 and 2 are uncertain.
    sims = np.array([[0.9, 0.1], [0.2, 0.35], [0.5, -0.2], [0.1, 0.05]], np.float32)
    refs = np.random.default_rng(0).normal(size=(2, model.dim)).astype(np.float32)
    requested = []
    real = embed.embed_regions

    def recording(requests, *a, **kw):
        requested.extend(p for p, _ in requests)
        return real(requests, *a, **kw)

    monkeypatch.setattr(embed, "embed_regions", recording)
    raised = best_with_regions(sims, paths, refs, model, settings=RegionSettings(crop_below=0.65, crop_from=0.3))
    assert requested == paths[1:3]
    assert raised[0].tolist() == sims[0].tolist() and raised[3].tolist() == sims[3].tolist()
    assert (raised >= sims).all() and raised.shape == sims.shape


def test_verified_score_starts_at_the_threshold_and_grows_with_inliers():
    from copyscan.region_search import VERIFIED_MAX_ABOVE, RegionSettings, verified_score

    s = RegionSettings(inlier_floor=20, inlier_step=0.1)
    assert verified_score(19, 0.75, s) is None
    assert verified_score(20, 0.75, s) == pytest.approx(0.75)
    assert verified_score(40, 0.75, s) == pytest.approx(0.85)
    assert verified_score(80, 0.3, s) == pytest.approx(0.5)  # anchored at the index's threshold
    assert verified_score(10_000, 0.75, s) == pytest.approx(0.75 + VERIFIED_MAX_ABOVE)


def pasted_reference(tmp_path):
    """Two synthetic references and a query showing the first at 45% of its width, at
    PASTED_BOX: (reference paths, query path)."""
    refs = [str(make_photo(tmp_path / f"r{s}.jpg", size=(480, 360), seed=300 + s)) for s in range(2)]
    with Image.open(refs[0]) as ref:
        query = Image.fromarray(photo_array((800, 600), seed=400))
        query.paste(ref.resize((360, 270)), (300, 200))
    query.save(tmp_path / "paste.jpg", quality=92)
    return refs, str(tmp_path / "paste.jpg")


PASTED_BOX = (300 / 800, 200 / 600, 660 / 800, 470 / 600)


def test_calibrate_scores_verify_uncertain_best_matches(tmp_path):
    # As query --regions does: a best match in the verify band that verification confirms scores
    # at least the threshold; one outside the band, or one that does not verify, keeps its cosine.
    from copyscan.region_search import RegionSettings, best_with_regions
    from copyscan.score import DEFAULT_THRESHOLD

    refs, paste = pasted_reference(tmp_path)
    paths = [paste] * 3
    sims = np.array([[0.5, 0.1], [0.95, 0.1], [0.1, 0.5]], np.float32)  # in band, certain, in band but wrong
    settings = RegionSettings(query_boxes=(), verify_band=(0.35, 0.6))  # no crops: verification alone
    raised = best_with_regions(sims, paths, np.zeros((2, 4), np.float32), None, settings=settings,
                               reference_paths=refs)
    assert raised[0, 0] >= DEFAULT_THRESHOLD
    assert raised[1].tolist() == sims[1].tolist() and raised[2].tolist() == sims[2].tolist()
    # Without the references' paths, nothing is verified.
    assert best_with_regions(sims, paths, np.zeros((2, 4), np.float32), None, settings=settings).tolist() == sims.tolist()


def test_a_close_runner_up_is_verified_too(tmp_path):
    # An unrelated picture can outscore a pasted copy by a hair; the runner-up is verified when it
    # is in the band and within runner_up_within of the best, in query --regions (Refiner) and in
    # calibrate's replay of it; further below, or with the rule off, it keeps its cosine.
    from copyscan.region_search import Candidate, PendingQuery, RegionSettings, Refiner, best_with_regions

    refs, paste = pasted_reference(tmp_path)
    anchor = 0.69

    def refined(copy_score: float, **kw) -> Candidate:
        refiner = Refiner(None, None, None, None, RegionSettings(query_boxes=(), **kw), report_floor=anchor, anchor=anchor)
        q = PendingQuery(paste, {refs[0]: Candidate(copy_score), refs[1]: Candidate(0.50)})
        try:
            refiner._start_verify([q]).wait()
        finally:
            refiner.close()
        return q.candidates[refs[0]]

    lifted = refined(0.46)
    assert lifted.how == "verified" and lifted.score >= anchor and iou(lifted.query_box, PASTED_BOX) >= 0.5
    assert refined(0.36).score == 0.36  # 0.14 below the best: not verified
    assert refined(0.46, runner_up_within=None).score == 0.46
    sims = np.array([[0.46, 0.50], [0.36, 0.50]], np.float32)
    for within, first in ((0.05, True), (None, False)):
        raised = best_with_regions(sims, [paste, paste], np.zeros((2, 4), np.float32), None, reference_paths=refs,
                                   settings=RegionSettings(query_boxes=(), verify_band=(0.35, 0.6), runner_up_within=within))
        assert (raised[0, 0] >= anchor) == first and raised[1, 0] == np.float32(0.36)


def test_regions_option_on_index_query_dedupe_and_calibrate(tmp_path, tiny_model_path, monkeypatch):
    from typer.testing import CliRunner

    from copyscan.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COPYSCAN_INDEX_DIR", raising=False)
    for s in range(4):
        make_photo(tmp_path / "photos" / f"p{s}.jpg", size=(160, 120), seed=s)

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    cli("index", "photos", "--model", tiny_model_path, "--regions", "-j", "0", "-q")
    manifest = json.loads((tmp_path / ".copyscan" / "index" / "manifest.json").read_text())
    assert manifest["counts"]["region_rows"] == 4
    assert (tmp_path / ".copyscan" / "index" / "local_features.sqlite").exists()
    cli("query", "photos", "--regions", "-t", "-1", "-k", "2", "-j", "0", "-q")
    header = next(csv.reader(open(tmp_path / "copyscan-query" / "matches.csv", encoding="utf-8")))
    assert header[4:] == BOX_COLUMNS
    cli("dedupe", "photos", "--regions", "-j", "0", "-q")
    assert (tmp_path / "copyscan-dedupe" / "groups.csv").exists()
    cli("calibrate", "photos", "--model", tiny_model_path, "--regions", "-n", "3", "--edits", "crop,pad", "-j", "0", "-q")
    assert (tmp_path / "copyscan-calibrate" / "calibration.json").exists()


def test_region_levels_follow_the_model_threshold():
    """Bands chosen at the default's threshold move with another model's (its scores' scale)."""
    from copyscan.region_search import RegionSettings

    base = RegionSettings()
    assert base.at(base.tuned_at) is base and base.at(None) is base
    moved = base.at(base.tuned_at + 0.06)
    assert moved.crop_from == pytest.approx(base.crop_from + 0.06) and moved.crop_below == pytest.approx(base.crop_below + 0.06)
    assert moved.place_from == pytest.approx(base.place_from + 0.06)
    assert moved.verify_band == pytest.approx((base.verify_band[0] + 0.06, base.verify_band[1] + 0.06))
    assert moved.unstored_band == pytest.approx((base.unstored_band[0] + 0.06, base.unstored_band[1] + 0.06))
    assert moved.place_below == base.place_below and moved.dedupe_place_below == base.dedupe_place_below
    assert moved.at(moved.tuned_at) is moved  # applied once, not again
    fixed = RegionSettings(tuned_at=None)
    assert fixed.at(0.9) is fixed
