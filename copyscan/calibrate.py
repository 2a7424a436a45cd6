"""`copyscan calibrate DIR`: choose a threshold from the user's own photos, at a named precision.

A sample of the folder's photos (the "originals") is edited with each edit of the copy-edit
library, one edit per copy, so that recall can be told per kind of edit. Everything is embedded
with the chosen model, exactly as `index` would (the copies are written to a temporary folder
and go through the same decoder), and then:

* copy pairs: each copy with the original it was made from;
* non-copy pairs: each copy with every other original, and every pair of originals. These are
  the pairs a dedupe of this folder would have to reject; their number grows with the square of
  the folder size, so the false-positive *rate* per pair is reported too.

For each target precision the lowest threshold that reaches it is reported with the recall it
keeps, overall and per edit; `report.html` draws both score distributions with the thresholds.
The user's folder is only read.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .decode import DEFAULT_MAX_PIXELS
from .discover import FileEntry, discover, display_path, resolve_root
from .embed import embed_entries
from .errors import UserError
from .validate import check_sizes, check_threshold
from .models import DEFAULT_MODEL, DescriptorModel, create_model, model_threshold
from .score import DEFAULT_THRESHOLD

DEFAULT_PRECISIONS = (0.99, 0.9)
DEFAULT_SAMPLE = 100
# Edits left out by default: `rotate90` and `vflip` are not copies most users want found by a
# descriptor trained upright, and `paste` needs backgrounds from outside the sample.
DEFAULT_EXCLUDE = ("rotate90", "vflip")


@dataclass
class OperatingPoint:
    target_precision: float
    threshold: float | None  # None: no threshold reaches the target on this sample
    precision: float | None
    recall: float | None
    false_positive_rate: float | None  # per non-copy pair
    per_edit_recall: dict[str, float] = field(default_factory=dict)


@dataclass
class Calibration:
    folder: str
    model: str
    originals: int
    copies: int
    copy_pairs: int
    non_copy_pairs: int
    difficulty: str
    seed: int
    edits: list[str]
    points: list[OperatingPoint]
    at_threshold: OperatingPoint  # what a given threshold (default: the one `query` and `dedupe` would use) gives
    per_edit_median: dict[str, float]
    skipped: int
    copy_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    copy_edits: list[str] = field(repr=False, default_factory=list)
    non_copy_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))

    def to_json(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("copy_scores", "non_copy_scores", "copy_edits")}
        return doc


def calibrate(
    folder: str | os.PathLike,
    model: str | DescriptorModel = DEFAULT_MODEL,
    sample: int = DEFAULT_SAMPLE,
    edits: list[str] | None = None,
    difficulty: str = "medium",
    precisions: tuple[float, ...] = DEFAULT_PRECISIONS,
    threshold: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress=None,
    regions: bool = False,
) -> Calibration:
    """Measure copy and non-copy scores on a sample of `folder` and pick thresholds (see module doc)."""
    from .edits import DIFFICULTIES, EDITS, apply_edits, check_names

    if difficulty not in DIFFICULTIES:
        raise UserError(f"unknown difficulty {difficulty!r}: use one of {', '.join(DIFFICULTIES)}")
    try:
        names = check_names(edits) if edits else [n for n in EDITS if n not in DEFAULT_EXCLUDE]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for p in precisions:
        if not 0 < p <= 1:
            raise UserError(f"precision {p} is not in (0, 1]")
    # The model's own calibrated threshold, as `query` and `dedupe` use it: the threshold reported
    # by default, and where verified pairs are anchored with `regions` (as in `query --regions`).
    own = model_threshold(model) if isinstance(model, (str, os.PathLike)) else None
    model_default = DEFAULT_THRESHOLD if own is None else own
    if threshold is None:
        threshold = model_default
    check_threshold(threshold, None)  # calibration scores are cosines
    check_sizes(batch_size=batch_size, workers=workers)
    m = create_model(model, device) if isinstance(model, (str, os.PathLike)) else model
    root = resolve_root(folder)
    entries, _ = discover(root)
    if len(entries) < 2:
        raise UserError(f"{display_path(root)}: calibration needs at least 2 images, found {len(entries)}")
    rng = random.Random(seed)
    order = sorted(entries, key=lambda e: e.path)
    rng.shuffle(order)
    chosen, spare = order[:sample], order[sample:]
    backgrounds = [e.path for e in spare[:200]] or None  # `paste` onto photos outside the sample
    strength = DIFFICULTIES[difficulty].strength

    with tempfile.TemporaryDirectory(prefix="copyscan-calibrate-") as tmp:
        orig_vecs, kept = _embed(chosen, m, batch_size, workers, progress)
        if len(kept) < 2:
            raise UserError(f"{display_path(root)}: fewer than 2 readable images in the sample")
        copy_entries, copy_src, copy_edit = [], [], []
        for oi, entry in enumerate(kept):
            try:
                with Image.open(entry.path) as im:
                    im.draft("RGB", (1024, 1024))  # edits need detail, not 40 MP
                    base = ImageOps.exif_transpose(im).convert("RGB")
                    base.thumbnail((1024, 1024))
            except Exception:  # it decoded a moment ago; if it no longer does, it is just left out
                continue
            for ei, name in enumerate(names):
                out, _ = apply_edits(base, [name], seed=(seed * 1_000_003 + oi * 997 + ei), strength=strength,
                                     backgrounds=backgrounds)
                path = Path(tmp) / f"{oi:06d}-{ei:02d}.png"
                out.save(path, compress_level=1)  # lossless: the edit itself decides the artefacts
                st = path.stat()
                copy_entries.append(FileEntry(str(path), st.st_size, st.st_mtime_ns))
                copy_src.append(oi)
                copy_edit.append(name)
        copy_vecs, copy_kept = _embed(copy_entries, m, batch_size, workers, progress)
        if regions:  # scored as `query --regions` scores them: the same threshold, measured
            from .region_search import best_with_regions

            sims = best_with_regions(copy_vecs @ orig_vecs.T, [e.path for e in copy_kept], orig_vecs, m, batch_size,
                                     reference_paths=[e.path for e in kept], anchor=model_default)
    index_of = {e.path: i for i, e in enumerate(copy_entries)}
    rows = [index_of[e.path] for e in copy_kept]
    src = np.asarray([copy_src[r] for r in rows], dtype=np.int64)
    edit_of = [copy_edit[r] for r in rows]

    if not regions:
        sims = copy_vecs @ orig_vecs.T  # copies x originals: small (sample-sized), never the folder's N x N
    pos = sims[np.arange(len(src)), src]
    neg_mask = np.ones_like(sims, dtype=bool)
    neg_mask[np.arange(len(src)), src] = False
    oo = orig_vecs @ orig_vecs.T
    neg = np.concatenate([sims[neg_mask], oo[np.triu_indices(len(orig_vecs), 1)]]).astype(np.float32)

    points = [operating_point(pos, neg, edit_of, p) for p in precisions]
    at = _point_at(pos, neg, edit_of, threshold, None)
    medians = {name: float(np.median(pos[[e == name for e in edit_of]])) for name in names if name in edit_of}
    return Calibration(
        folder=display_path(root), model=m.name, originals=len(kept), copies=len(pos), copy_pairs=len(pos),
        non_copy_pairs=len(neg), difficulty=difficulty, seed=seed, edits=names, points=points, at_threshold=at,
        per_edit_median=medians, skipped=len(chosen) - len(kept) + len(copy_entries) - len(copy_kept),
        copy_scores=pos.astype(np.float32), copy_edits=edit_of, non_copy_scores=neg,
    )


def _embed(entries, model, batch_size, workers, progress):
    vecs, kept = [], []
    by_path = {e.path: e for e in entries}
    for batch in embed_entries(entries, model, batch_size, workers, DEFAULT_MAX_PIXELS, progress=progress):
        vecs.append(batch.descriptors)
        kept.extend(by_path[r.path] for r in batch.rows)
    return (np.concatenate(vecs) if vecs else np.zeros((0, model.dim), np.float32)), kept


def operating_point(pos: np.ndarray, neg: np.ndarray, edit_of: list[str], target: float) -> OperatingPoint:
    """The lowest threshold whose precision over all pairs scoring at or above it is >= target."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    # Highest first; among equal scores non-copies first (pessimistic, as DISC ranks ties).
    order = np.lexsort((is_pos, -scores))
    tp = np.cumsum(is_pos[order])
    precision = tp / np.arange(1, len(order) + 1)
    # A threshold can only sit at the end of a run of equal scores.
    s_sorted = scores[order]
    run_end = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    ok = np.flatnonzero((precision >= target) & run_end & is_pos[order])
    if len(ok) == 0:
        return OperatingPoint(target, None, None, None, None)
    best = ok[np.argmax(tp[ok])]  # the most recall among the thresholds that keep the precision
    return _point_at(pos, neg, edit_of, float(s_sorted[best]), target)


def _point_at(pos, neg, edit_of, threshold: float, target: float | None) -> OperatingPoint:
    tp, fp = int((pos >= threshold).sum()), int((neg >= threshold).sum())
    per_edit = {}
    for name in dict.fromkeys(edit_of):
        mask = np.asarray([e == name for e in edit_of])
        per_edit[name] = float((pos[mask] >= threshold).mean())
    return OperatingPoint(
        target_precision=target if target is not None else float("nan"), threshold=threshold,
        precision=tp / (tp + fp) if tp + fp else None, recall=tp / len(pos) if len(pos) else None,
        false_positive_rate=fp / len(neg) if len(neg) else None, per_edit_recall=per_edit,
    )


# ---- outputs -----------------------------------------------------------------------------------

def write_outputs(cal: Calibration, out_dir: str | os.PathLike) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(_clean(cal.to_json()), indent=2) + "\n", encoding="utf-8")
    with open(out / "scores.csv", "w", encoding="utf-8") as fh:
        fh.write("kind,edit,score\n")
        for s, e in zip(cal.copy_scores.tolist(), cal.copy_edits):
            fh.write(f"copy,{e},{s:.6f}\n")
        for s in cal.non_copy_scores.tolist():
            fh.write(f"non-copy,,{s:.6f}\n")
    from .calibrate_report import render

    (out / "report.html").write_text(render(cal), encoding="utf-8")
    return {"json": str(out / "calibration.json"), "csv": str(out / "scores.csv"), "html": str(out / "report.html")}


def _clean(value):
    """JSON without NaN (not valid JSON): NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
