"""Synthesise a copy-detection benchmark from any folder of photos (`copyscan bench synth`).

    OUT/references/R00000.jpg ...   reference photos (longest side at most max_side)
    OUT/queries/Q00000.jpg ...      edited copies of some references, and edited distractors
    OUT/gt.csv                      query_id,reference_id (empty reference_id: a distractor)
    OUT/labels.csv                  query_id,edits,difficulty (edits: `crop(0.62);jpeg(35)`)
    OUT/bench.json                  seed, sources, counts, options, copyscan version

Distractors are edited photos that are never references: held out of SRC, or taken from a
folder of their own. Copies and distractors are shuffled together, so a query's id says nothing
about what it is. The same arguments always give byte-identical files: every reference and
query has its own seed drawn up front, and no time or machine detail is written.

The benchmark is built in a hidden sibling folder and renamed to OUT at the end, so an
interrupted run leaves no half benchmark behind.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .version import __version__
from .decode import DecodeError, file_hash, open_image, read_bytes
from .discover import Skipped, discover
from .edits import DIFFICULTIES, apply_edits, check_names, random_chain
from .errors import UserError

FORMAT = "copyscan-bench/1"
DEFAULT_REFERENCES = 1000
DEFAULT_MAX_SIDE = 512
JPEG_QUALITY = 95  # of the saved files: the edits' own JPEG step is what degrades a copy
MIXED = "mixed"  # each query draws its difficulty from easy, medium and hard


class SynthError(UserError):
    """A request that cannot be met (bad option, source too small, OUT in the way); one line."""


@dataclass
class SynthSummary:
    out: str
    references: int
    copies: int
    distractors: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    shortfall: list[str] = field(default_factory=list)  # counts asked for but not reached

    @property
    def queries(self) -> int:
        return self.copies + self.distractors


@dataclass(frozen=True)
class _Query:
    source: str  # a reference file in the benchmark, or a distractor photo
    reference_id: str  # "" for a distractor
    seed: int
    difficulty: str


def synthesize(
    src: str | os.PathLike,
    out: str | os.PathLike,
    references: int | None = None,
    copy_fraction: float = 0.5,
    distractors: int | None = None,
    distractor_source: str | os.PathLike | None = None,
    edits: list[str] | str | None = None,
    difficulty: str = MIXED,
    seed: int = 0,
    max_side: int = DEFAULT_MAX_SIDE,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthSummary:
    """Build a benchmark from the photos under `src` into `out` (see the module's doc).

    `references`: how many reference photos (default: up to 1,000, leaving enough of SRC for the
    distractors). `copy_fraction`: the share of references that get an edited copy among the
    queries. `distractors`: edited non-copies among the queries (default: as many as copies),
    from `distractor_source` or else held out of SRC. `edits`: the edit names to draw from
    (default all, see copyscan.edits). `difficulty`: easy, medium, hard, or mixed.
    """
    start = time.perf_counter()
    mix = _check_options(references, copy_fraction, distractors, edits, difficulty, max_side)
    src_root, out_dir = Path(src).resolve(), Path(out).resolve()
    other_root = Path(distractor_source).resolve() if distractor_source is not None else None
    _check_places(src_root, out_dir, other_root, overwrite)

    entries, skipped = discover(src_root)
    candidates = [e.path for e in entries]
    other = None
    if other_root is not None:
        other_entries, other_skipped = discover(other_root)
        skipped += other_skipped
        taken = {os.path.realpath(p) for p in candidates}
        other = [e.path for e in other_entries if os.path.realpath(e.path) not in taken]
    n_refs, n_copies, n_distractors = _counts(len(candidates), other, references, copy_fraction, distractors)

    rng = random.Random(seed)
    rng.shuffle(candidates)
    if other is not None:
        rng.shuffle(other)
    copy_slots = set(rng.sample(range(n_refs), n_copies))
    query_seeds = [rng.getrandbits(32) for _ in range(n_copies + n_distractors)]  # drawn now: independent of skips
    difficulties = [difficulty if difficulty != MIXED else rng.choice(sorted(DIFFICULTIES)) for _ in query_seeds]

    summary = SynthSummary(str(out_dir), 0, 0, 0, skipped)
    work = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        (work / "references").mkdir(parents=True)
        (work / "queries").mkdir()
        with _bar(progress, n_refs + n_copies + n_distractors, "benchmark") as bar:
            ref_ids, src_left, ref_hashes = _write_references(candidates, n_refs, work, max_side, summary, bar)
            copies = [(ref_id, work / "references" / ref_id) for i, ref_id in enumerate(ref_ids) if i in copy_slots]
            distractor_paths, pool_left = _pick_distractors(other if other is not None else src_left, n_distractors, max_side, ref_hashes, summary)
            # `paste` puts copies on photos that are neither references nor distractors: a
            # reference as background would make the query a copy of two references.
            backgrounds = pool_left + (src_left if other is not None else [])
            queries = [_Query(str(path), ref_id, 0, "") for ref_id, path in copies]
            queries += [_Query(path, "", 0, "") for path in distractor_paths]
            rng.shuffle(queries)
            queries = [_Query(q.source, q.reference_id, s, d) for q, s, d in zip(queries, query_seeds, difficulties)]
            rows = _write_queries(queries, work, max_side, mix, backgrounds, bar)
        summary.references = len(ref_ids)
        summary.copies = sum(1 for _, ref_id, _, _ in rows if ref_id)
        summary.distractors = len(rows) - summary.copies
        _write_tables(work, rows)
        _note_shortfall(summary, n_refs, n_copies, n_distractors)
        _write_manifest(work, summary, src_root, other_root, seed, references, copy_fraction, distractors, edits, mix, difficulty, max_side)
        _replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - start
    return summary


# ---- checks -------------------------------------------------------------------------------------


def _check_options(references, copy_fraction, distractors, edits, difficulty, max_side) -> list[str] | None:
    if references is not None and references < 1:
        raise SynthError(f"--references must be at least 1, got {references}")
    if not 0.0 <= copy_fraction <= 1.0:
        raise SynthError(f"--copy-fraction must be between 0 and 1, got {copy_fraction}")
    if distractors is not None and distractors < 0:
        raise SynthError(f"--distractors must be 0 or more, got {distractors}")
    if difficulty != MIXED and difficulty not in DIFFICULTIES:
        raise SynthError(f"unknown difficulty {difficulty!r}; one of: {', '.join(list(DIFFICULTIES) + [MIXED])}")
    if max_side < 16:
        raise SynthError(f"--max-side must be at least 16 pixels, got {max_side}")
    if edits is None:
        return None
    names = edits.split(",") if isinstance(edits, str) else list(edits)
    try:
        names = check_names(names)
    except ValueError as exc:
        raise SynthError(str(exc)) from None
    if not names:
        raise SynthError("--edits names no edit")
    return names


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_places(src: Path, out: Path, other: Path | None, overwrite: bool) -> None:
    if not src.is_dir():
        raise SynthError(f"no such folder: {src}")
    if other is not None and not other.is_dir():
        raise SynthError(f"no such folder: {other}")
    for root, what in ((src, "SRC"), (other, "--distractor-source")):
        if root is not None and (_inside(out, root) or _inside(root, out)):
            raise SynthError(f"OUT ({out}) and {what} ({root}) must not contain one another")
    if out.exists() and not out.is_dir():
        raise SynthError(f"OUT is a file, not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SynthError(f"OUT is not empty: {out} (pass --overwrite to replace a benchmark there)")
        if not (out / "bench.json").is_file():
            # --overwrite deletes OUT: only ever a benchmark this command made, never other files.
            raise SynthError(f"OUT holds files that are not a copyscan benchmark (no bench.json): {out}; not overwriting")


def _counts(n_src: int, other: list[str] | None, references, copy_fraction, distractors) -> tuple[int, int, int]:
    """References, copies and distractors to make, from the sizes of the sources."""
    if other is not None:  # distractors from their own folder: SRC is all references
        n_refs = references if references is not None else min(DEFAULT_REFERENCES, n_src)
        n_copies = round(copy_fraction * n_refs)
        n_distractors = distractors if distractors is not None else n_copies
        if n_refs > n_src:
            raise SynthError(f"SRC has {n_src} images, fewer than the {n_refs} references asked for")
        if n_distractors > len(other):
            raise SynthError(f"--distractor-source has {len(other)} images not in SRC, fewer than the {n_distractors} distractors asked for")
        return n_refs, n_copies, n_distractors
    if references is None:
        # As many references as SRC allows with its share held out for the distractors.
        share = 1.0 + (copy_fraction if distractors is None else 0.0)
        n_refs = min(DEFAULT_REFERENCES, int((n_src - (distractors or 0)) / share))
    else:
        n_refs = references
    n_copies = round(copy_fraction * n_refs)
    n_distractors = distractors if distractors is not None else n_copies
    if n_refs < 1 or n_refs + n_distractors > n_src:
        raise SynthError(
            f"SRC has {n_src} images; {max(n_refs, 1)} references and {n_distractors} distractors held out of it need "
            f"{max(n_refs, 1) + n_distractors} (lower --references / --distractors or pass --distractor-source)"
        )
    return n_refs, n_copies, n_distractors


# ---- images -------------------------------------------------------------------------------------


def _load(path: str, max_side: int) -> Image.Image:
    """The photo at `path`, RGB, its longest side at most `max_side`; DecodeError if unreadable."""
    return _read(path, max_side)[0]


def _read(path: str, max_side: int) -> tuple[Image.Image, str]:
    """`_load`'s image and the hash of the file's bytes."""
    data = read_bytes(path)
    img, _, _ = open_image(data, max_side)
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return img, file_hash(data)


def _save(img: Image.Image, path: Path) -> None:
    img.save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_references(candidates, n_refs, work, max_side, summary, bar) -> tuple[list[str], list[str], set[str]]:
    """Save the first `n_refs` readable candidates as references; returns their ids, the
    candidates not looked at, and the hashes of the references' files."""
    width = max(5, len(str(n_refs - 1)))
    ids: list[str] = []
    hashes: set[str] = set()
    pos = 0
    while len(ids) < n_refs and pos < len(candidates):
        path = candidates[pos]
        pos += 1
        try:
            img, digest = _read(path, max_side)
        except DecodeError as exc:
            summary.skipped.append(Skipped(path, str(exc)))
            continue
        hashes.add(digest)
        ref_id = f"R{len(ids):0{width}d}.jpg"
        _save(img, work / "references" / ref_id)
        ids.append(ref_id)
        bar.advance(1)
    return ids, candidates[pos:], hashes


def _pick_distractors(pool, n, max_side, reference_hashes, summary) -> tuple[list[str], list[str]]:
    """The first `n` readable photos of `pool` that are no reference's file, and the rest of the pool."""
    picked: list[str] = []
    pos = 0
    while len(picked) < n and pos < len(pool):
        path = pool[pos]
        pos += 1
        try:
            digest = _read(path, max_side)[1]
        except DecodeError as exc:
            summary.skipped.append(Skipped(path, str(exc)))
            continue
        if digest in reference_hashes:  # the same file twice in a photo collection is common
            summary.skipped.append(Skipped(path, "same bytes as a reference: not a distractor"))
            continue
        picked.append(path)
    return picked, pool[pos:]


def _write_queries(queries: list[_Query], work: Path, max_side: int, mix, backgrounds: list[str], bar) -> list[tuple]:
    width = max(5, len(str(len(queries) - 1)))
    rows = []
    for i, q in enumerate(queries):
        query_id = f"Q{i:0{width}d}.jpg"
        try:
            img = _load(q.source, max_side)
        except DecodeError as exc:  # it was read a moment ago: changed under us
            raise SynthError(f"{q.source} became unreadable during the run: {exc}") from None
        rng = random.Random(q.seed)
        names = random_chain(rng, mix=mix, difficulty=q.difficulty)
        edited, labels = apply_edits(img, names, rng, DIFFICULTIES[q.difficulty].strength, backgrounds=backgrounds or None)
        if max(edited.size) > max_side:
            edited.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=3.0)
        _save(edited, work / "queries" / query_id)
        rows.append((query_id, q.reference_id, ";".join(labels), q.difficulty))
        bar.advance(1)
    return rows


# ---- tables and folder ------------------------------------------------------------------------


def _write_tables(work: Path, rows) -> None:
    with open(work / "gt.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["query_id", "reference_id"])
        w.writerows((query_id, ref_id) for query_id, ref_id, _, _ in rows)
    with open(work / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["query_id", "edits", "difficulty"])
        w.writerows((query_id, edits, level) for query_id, _, edits, level in rows)


def _note_shortfall(summary: SynthSummary, n_refs: int, n_copies: int, n_distractors: int) -> None:
    for what, got, asked in (("references", summary.references, n_refs), ("distractors", summary.distractors, n_distractors)):
        if got < asked:
            summary.shortfall.append(f"{got} {what} of the {asked} asked for: too few readable images")
    if summary.references < n_refs and summary.copies < n_copies:
        summary.shortfall.append(f"{summary.copies} copies of the {n_copies} planned")


def _write_manifest(work, summary, src_root, other_root, seed, references, copy_fraction, distractors, edits, mix, difficulty, max_side) -> None:
    manifest = {
        "format": FORMAT,
        "copyscan_version": __version__,
        "seed": seed,
        "source": str(src_root),
        "distractor_source": str(other_root) if other_root is not None else None,
        "counts": {
            "references": summary.references,
            "queries": summary.queries,
            "copies": summary.copies,
            "distractors": summary.distractors,
            "skipped": len(summary.skipped),
        },
        "options": {
            "references": references,
            "copy_fraction": copy_fraction,
            "distractors": distractors,
            "edits": mix,
            "difficulty": difficulty,
            "max_side": max_side,
            "jpeg_quality": JPEG_QUALITY,
        },
        "skipped": [{"path": s.path, "reason": s.reason} for s in sorted(summary.skipped, key=lambda s: s.path)],
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (work / "bench.json").write_text(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), encoding="utf-8")


def _replace(work: Path, out: Path) -> None:
    """Move the finished benchmark to `out`; an old benchmark there goes only once the new one is in place."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _bar(enabled: bool, total: int, label: str):
    from .progress import progress_bar  # the same bar as index and query (a no-op one when disabled)

    return progress_bar(enabled, total, label)
