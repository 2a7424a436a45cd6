"""The index job: files under a folder -> Parquet shards -> FAISS file -> manifest.

Its pipeline shape, which another engine (Ray) plugs into at step 2:

1. `plan`      reader: discover the folder (stage 1) and compare it with the store: which files
               to embed (new or changed), which are unchanged, which skip records stay. No model.
2. engine      decode mapper + embed mapper (stages 2-3): `(entries, model, extraction, advance)
               -> EmbeddedBatch...`, where `model` is a models.LazyModel: `model.get()` loads it
               here, `model.ref` and `model.device` let an engine load it in its own workers.
               `local_engine` runs embed.embed_entries (DataLoader decode workers + the model in
               this process); any callable with that shape can replace it.
3. `ShardWriter`  buffers rows, writes a Parquet shard every SHARD_ROWS rows or SHARD_SECONDS,
               with the skip list; Ctrl-C or SIGTERM flushes it, so the next run resumes.
4. `commit`    compaction (rows of removed, now-unreadable or re-embedded files), the FAISS file
               over every live row in the score rule's form (score.py), then the manifest.

An unchanged folder stops after step 1 with nothing written and no model loaded. The store
(store.py) owns every file name and manifest key used here.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from .discover import FileEntry, Skipped, discover, under
from .errors import Interrupted, UserError, WorkerLost, WriteError
from .extraction import Extraction
from .identity import ModelInfo
from .models import LazyModel
from .oserrors import writing
from .progress import Throughput, progress_bar
from .results import IndexSummary
from .store import IndexStore

if TYPE_CHECKING:
    from .embed import EmbeddedBatch
    from .models.base import DescriptorModel

SHARD_ROWS = 2048  # rows per Parquet shard (or $COPYSCAN_FLUSH_ROWS) ...
SHARD_SECONDS = 30.0  # ... or fewer, so that a killed run loses at most this much work
FLUSH_ROWS_ENV = "COPYSCAN_FLUSH_ROWS"

# entries, the run's model (loaded on demand), extraction settings, advance(n images done) -> embedded batches
Engine = Callable[[Sequence[FileEntry], LazyModel, Extraction, Callable[[int], None]], Iterable["EmbeddedBatch"]]


# ---- 1. plan ------------------------------------------------------------------------------------


@dataclass
class IndexPlan:
    """What one run over `root` has to do, found without a model."""

    root: str
    entries: list[FileEntry]  # every image file under root
    todo: list[FileEntry]  # new or changed since indexed (or since they failed): to embed
    known: dict[str, tuple[int, int]]  # path -> (bytes, mtime_ns) of every live row of the index
    keep_skips: list[Skipped]  # skip records that stay: outside root, or unchanged bad files
    found_skips: list[Skipped]  # what discovery could not look at on this run
    old_skips: list[Skipped] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        return len(self.entries) - len(self.todo)


def plan(store: IndexStore, root: str, regions: bool = False) -> IndexPlan:
    """`regions`: files indexed without region rows or stored local features count as changed
    (they are embedded again: an index made by a version before local features were stored, or
    whose features file was lost, gets them)."""
    entries, found_skips = discover(root)
    known = store.known_files()
    if regions:
        from .local_store import LocalFeatureReader

        reader = LocalFeatureReader.open(store.local_features_path)
        with_regions = store.paths_with_regions() & (reader.paths() if reader is not None else set())
        known_for_todo = {p: v for p, v in known.items() if p in with_regions}
    else:
        known_for_todo = known
    old_skips = store.read_skipped()
    old_skip_at = {s.path: (s.bytes, s.mtime_ns) for s in old_skips}
    present = {e.path for e in entries}
    todo = [e for e in entries if known_for_todo.get(e.path) != (e.bytes, e.mtime_ns) and old_skip_at.get(e.path) != (e.bytes, e.mtime_ns)]
    redo = {e.path for e in todo}
    # Skip records outside this folder stay; inside it, those of unchanged bad files stay.
    keep_skips = [s for s in old_skips if not under(s.path, root) or (s.path in present and s.path not in redo)]
    return IndexPlan(root, entries, todo, known, keep_skips, list(found_skips), old_skips)


# ---- 2. engine ----------------------------------------------------------------------------------


def local_engine(entries: Sequence[FileEntry], model: LazyModel, extraction: Extraction,
                 advance: Callable[[int], None]) -> Iterator[EmbeddedBatch]:
    """Decode in DataLoader worker processes, embed in this one (embed.py)."""
    from .embed import embed_entries

    return embed_entries(entries, model.get(), extraction.batch_size, extraction.workers, extraction.max_pixels,
                         progress=advance, boxes=extraction.boxes, local_features=extraction.local_features)


# ---- 3. shard writer ----------------------------------------------------------------------------


class ShardWriter:
    """Buffers embedded rows and writes them as shards, with the skip list, every `flush_rows`
    rows or `flush_seconds` seconds."""

    def __init__(self, store: IndexStore, info: ModelInfo, keep_skips: list[Skipped], flush_rows: int,
                 flush_seconds: float = SHARD_SECONDS):
        self.store = store
        self.info = info  # the model's identity, written into every shard (store.write_shard)
        self.keep_skips = keep_skips
        self.new_skips: list[Skipped] = []
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.written = 0
        self._rows: list = []
        self._descriptors: list = []
        self._regions: list = []  # with region rows (index --regions): each row's region number and box
        self._boxes: list = []
        # (path, ORB features' bytes or None) of each buffered image (local_store.py)
        self._local: list[tuple[str, bytes | None]] = []
        self._local_writer = None
        self._last_flush = time.monotonic()

    def add(self, batch: EmbeddedBatch, boxes: Sequence = ()) -> None:
        """`boxes`: the region crops `batch.region_descriptors` hold, stored as region rows."""
        self.written += batch.stored  # shards an engine's workers wrote themselves
        if boxes and batch.region_descriptors is not None:
            from .regions import with_region_rows

            rows, descriptors, regions, row_boxes = with_region_rows(batch.rows, batch.descriptors, batch.region_descriptors, boxes)
            self._rows.extend(rows)
            self._descriptors.append(descriptors)
            self._regions.append(regions)
            self._boxes.append(row_boxes)
        else:
            self._rows.extend(batch.rows)
            self._descriptors.append(batch.descriptors)
        self.new_skips.extend(batch.skipped)
        local = batch.local_features if batch.local_features is not None else [None] * len(batch.rows)
        self._local.extend((row.path, data) for row, data in zip(batch.rows, local))
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            import numpy as np

            from .store import rows_to_table

            # Taken out of the buffer before the write: a Ctrl-C landing after the shard is on
            # disk must not make the interrupt handler's flush write the same rows again. One
            # landing before the rename loses this shard's rows, which the next run embeds.
            rows, descs = list(self._rows), list(self._descriptors)
            regions, boxes = list(self._regions), list(self._boxes)
            local = list(self._local)
            self._rows.clear()
            self._descriptors.clear()
            self._regions.clear()
            self._boxes.clear()
            self._local.clear()
            # Before the shard: its rows never point at missing or older features (a kill in
            # between leaves features of rows the next run embeds again, and overwrites).
            self._write_local(local)
            if regions:
                kinds = np.concatenate(regions)
                table = rows_to_table(rows, np.concatenate(descs), kinds, np.concatenate(boxes))
                self.written += int((kinds == 0).sum())
            else:
                table = rows_to_table(rows, np.concatenate(descs))
                self.written += len(rows)
            self.store.write_shard(self.store.next_shard_number(), table, self.info)
        self.store.write_skipped(self.skips)
        self._last_flush = time.monotonic()

    def _write_local(self, local: list[tuple[str, bytes | None]]) -> None:
        features = [(p, d) for p, d in local if d is not None]
        if not features and not self.store.local_features_path.exists():
            return  # an index without --regions has no features file
        if self._local_writer is None:
            from .local_store import LocalFeatureWriter

            self._local_writer = LocalFeatureWriter(self.store.local_features_path)
        with writing(self.store.local_features_path, "--index-dir"):
            self._local_writer.put(features)
            # Re-embedded without features: their old ones no longer describe the file.
            self._local_writer.delete([p for p, d in local if d is None])

    def close(self) -> None:
        if self._local_writer is not None:
            self._local_writer.close()
            self._local_writer = None

    @property
    def skips(self) -> list[Skipped]:
        return self.keep_skips + self.new_skips


def flush_rows() -> int:
    """Rows per shard: SHARD_ROWS, or $COPYSCAN_FLUSH_ROWS (smaller shards lose less to a kill)."""
    text = os.environ.get(FLUSH_ROWS_ENV, "").strip()
    if not text:
        return SHARD_ROWS
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{FLUSH_ROWS_ENV} must be a whole number of rows of at least 1, not {text!r}")
    return int(text)


# ---- 4. commit ----------------------------------------------------------------------------------


def commit(store: IndexStore, info: ModelInfo, roots: list[str], skipped: int,
           memory_budget: int | None = None) -> tuple[int, str]:
    """Build the FAISS file over every live row and write the manifest; returns (rows, FAISS type).

    The index kind is the most exact that `memory_budget` allows (index_choice); an approximate
    one records its score margin, so that searches re-score its candidates exactly."""
    import numpy as np

    from .index_choice import build_index, margin_for, plan_index, write_vectors
    from .postprocess import describe_score, load_stored
    from .score import references_of

    post = load_stored(store)
    # The live rows shard by shard, their vectors into a file the build maps: the descriptors are
    # never in memory whole (10M x 128-d is 5 GB), nor a Python object per row.
    rows = store.live_rows(["region"])
    region_rows = int(np.count_nonzero(rows.table.column("region").fill_null(0).to_numpy(zero_copy_only=False)))
    count = len(rows)
    # index --regions: the live paths (already read here) say which stored features stay.
    live = ({os.fsdecode(p) for p in rows.table.column("path_bytes").to_pylist()}
            if store.local_features_path.exists() else None)
    scratch = store.scratch_vectors_path()
    try:
        dim = references_of(post, np.eye(1, store.stored_model().dim, dtype=np.float32)).shape[1]
        if count:
            with writing(scratch, "--index-dir"):
                write_vectors(scratch, count, dim, ((references_of(post, d),) for d in store.descriptor_blocks(rows)))
            vectors = np.load(scratch, mmap_mode="r")
        else:
            vectors = np.zeros((0, dim), np.float32)
        del rows
        choice = plan_index(count, dim, memory_budget)
        index = build_index(choice, vectors, ondisk_path=str(store.ondisk_lists_path()))
        margin = margin_for(choice, index, vectors)
        del vectors
    finally:
        scratch.unlink(missing_ok=True)
    if live is not None:  # index --regions: features of removed images dropped
        from .local_store import LocalFeatureWriter

        local = LocalFeatureWriter(store.local_features_path)
        with writing(store.local_features_path, "--index-dir"):
            local.keep_only(live)
        local.close()
    meta = store.save_faiss(index, choice.factory, choice.reason, choice.nprobe, count,
                            describe_score(store.postprocess_entry()), margin=margin, kind_name=choice.kind)
    store.commit_manifest(info, count - region_rows, skipped, meta, roots, region_rows)
    return count - region_rows, choice.factory


# ---- the job ------------------------------------------------------------------------------------


def index_into(store: IndexStore, root: str, model: LazyModel | DescriptorModel | str,
               extraction: Extraction | None = None, engine: Engine | None = None,
               memory_budget: int | None = None) -> IndexSummary:
    """Run the index job for folder `root` into `store`, holding its lock."""
    new_folder = not store.folder.exists()
    new_index = not store.exists()
    store.lock()
    done = False
    try:
        summary = _index_locked(store, root, model if isinstance(model, LazyModel) else LazyModel(model, (extraction or Extraction()).device),
                                extraction or Extraction(), engine or local_engine, memory_budget)
        done = True
        return summary
    finally:
        if not done and new_index:
            # A new index that failed before saving any image (a full disk, a protected folder)
            # leaves nothing behind that a later run with another model would trip over.
            store.discard_if_empty(remove_folder=new_folder)
        store.unlock()


def _index_locked(store: IndexStore, root: str, model: LazyModel, extraction: Extraction, engine: Engine,
                  memory_budget: int | None = None) -> IndexSummary:
    clock = Throughput()
    rows_per_shard = flush_rows()
    info = model.identity()
    store.check_model(info)
    work = plan(store, root, regions=bool(extraction.boxes))
    writer = ShardWriter(store, info, work.keep_skips + work.found_skips, rows_per_shard)
    if work.todo:
        store.start_manifest(info, [root])  # before any shard: a resumed run is checked against the same model
        bar = progress_bar(extraction.progress, len(work.todo), f"indexing with {info.name}")
        try:
            with bar, _sigterm_as_interrupt():
                for batch in engine(work.todo, model, extraction, bar.advance):
                    if model.loaded:  # shards record the runtime it runs on, as the manifest does
                        writer.info = model.get().info
                    clock.add(len(batch.rows) + batch.stored)
                    writer.add(batch, extraction.boxes)
        except KeyboardInterrupt:
            writer.flush()
            raise Interrupted(
                f"interrupted: {writer.written} images saved in {store.folder}; run the same command again to resume"
            ) from None
        except WorkerLost as exc:  # a decoder killed under the run (embed.py): what was embedded is kept
            writer.flush()
            raise WorkerLost(f"{exc} ({writer.written} images saved in {store.folder})") from None
        except WriteError as exc:  # a full disk, a protected folder: said with what was saved
            saved = f" ({writer.written} images were saved; the same command resumes)" if writer.written else ""
            raise WriteError(f"{exc}{saved}", exc.path, exc.errno) from None
    if model.loaded:
        info = model.get().info  # the runtime it ran on (onnxruntime for a torch model on a CPU)
    elif store.exists():
        # Not loaded here (nothing to embed, or an engine that loads it elsewhere): the manifest
        # keeps the runtime the index records.
        info = dataclasses.replace(info, runtime=store.stored_model().runtime or info.runtime)

    summary = IndexSummary(str(store.folder), info.name, found=len(work.entries), unchanged=work.unchanged,
                           skipped_record=str(store.skipped_path))
    # Rows whose file is gone, or changed and now unreadable, are dropped.
    now_bad = {s.path for s in writer.new_skips}
    present = {e.path for e in work.entries}
    dead = {p for p in work.known if under(p, root) and (p not in present or p in now_bad)}
    summary.removed = len(dead)
    summary.skipped = sorted((s for s in writer.skips if under(s.path, root)), key=lambda s: s.path)
    if work.todo or dead or not _up_to_date(store, root, writer.skips, work.old_skips):
        writer.flush()
        store.compact(dead)  # also drops rows superseded by re-embedded files, which are not removals
        summary.total, summary.faiss = commit(store, info, [root], len(writer.skips), memory_budget)
    else:
        manifest = store.read_manifest()
        summary.total, summary.faiss = store.image_count(manifest), store.faiss_type(manifest)
    writer.close()  # its features connection (after an exception the garbage collector closes it)
    summary.embedded = writer.written
    summary.notes = list(store.notes)
    summary.seconds = clock.seconds
    summary.rate = clock.rate
    return summary


def _up_to_date(store: IndexStore, root: str, skips: list[Skipped], old_skips: list[Skipped]) -> bool:
    """Whether an index with nothing to embed or drop needs no write at all: same skip list, this
    folder among its roots, and a FAISS file that matches the shards."""
    if not store.exists() or set(skips) != set(old_skips):
        return False
    manifest = store.read_manifest()
    return root in store.roots(manifest) and store.faiss_is_fresh(manifest)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # A polite kill (SIGTERM) saves work like Ctrl-C does.
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


__all__ = ["Engine", "FLUSH_ROWS_ENV", "IndexPlan", "SHARD_ROWS", "SHARD_SECONDS", "ShardWriter", "commit", "flush_rows",
           "index_into", "local_engine", "plan"]
