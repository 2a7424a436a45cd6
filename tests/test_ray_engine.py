"""`--engine ray` on a real local Ray cluster (started here on 127.0.0.1 with 2 CPUs): the same
rows and descriptors as the local engine, incremental, and a model worker killed mid-run costs
nothing (retried, no row lost or doubled)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_photo

ray = pytest.importorskip("ray", reason="Ray is the optional extra copyscan[ray]")

from copyscan import api  # noqa: E402
from copyscan.engines.ray_engine import Embedder, RayEngine  # noqa: E402
from copyscan.extraction import Extraction  # noqa: E402
from copyscan.indexing import index_into  # noqa: E402
from copyscan.index_recovery import SHARD_META_KEY  # noqa: E402
from copyscan.store import IndexStore  # noqa: E402

NO_WORKERS = Extraction(batch_size=4, workers=0, device="cpu")


@pytest.fixture(scope="module")
def cluster():
    # Classes defined in this test module travel to the workers by value (they cannot import it).
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False,
             runtime_env={"env_vars": {"COPYSCAN_CACHE": os.environ["COPYSCAN_CACHE"]}})
    yield
    ray.shutdown()


@pytest.fixture()
def photos(tmp_path):
    for s in range(14):
        make_photo(tmp_path / "photos" / f"p{s:02d}.jpg", size=(80 + s, 60), seed=s)
    make_photo(tmp_path / "photos" / "copy.png", size=(96, 72), seed=0)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path / "photos"


def rows_by_path(index_dir: Path) -> dict[str, tuple]:
    table = IndexStore(index_dir).read_table()
    d = table.to_pydict()
    return {p: (d["bytes"][i], d["mtime_ns"][i], d["content_hash"][i], d["pixel_hash"][i], d["width"][i], d["height"][i],
                np.asarray(d["descriptor"][i], np.float32)) for i, p in enumerate(d["path"])}


def shard_path_counts(index_dir: Path) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for shard in IndexStore(index_dir).shard_paths():
        for p in pq.read_table(shard, columns=["path_bytes"]).column("path_bytes").to_pylist():
            counts[p] = counts.get(p, 0) + 1
    return counts


def assert_same_index(ray_dir: Path, local_dir: Path) -> None:
    ray_rows, local_rows = rows_by_path(ray_dir), rows_by_path(local_dir)
    assert sorted(ray_rows) == sorted(local_rows)
    for path, local in local_rows.items():
        got = ray_rows[path]
        assert got[:6] == local[:6], path
        np.testing.assert_allclose(got[6], local[6], atol=1e-5, rtol=0)
    assert [s.path for s in IndexStore(ray_dir).read_skipped()] == [s.path for s in IndexStore(local_dir).read_skipped()]
    assert all(n == 1 for n in shard_path_counts(ray_dir).values())  # no row twice


def test_ray_index_equals_local_and_is_incremental(cluster, photos, tmp_path, tiny_model_path):
    local = api.index_folder(photos, index_dir=tmp_path / "local", model=str(tiny_model_path), extraction=NO_WORKERS)
    first = api.index_folder(photos, index_dir=tmp_path / "ray", model=str(tiny_model_path), extraction=NO_WORKERS,
                             engine="ray")
    assert first.embedded == local.embedded == 15 and first.total == 15
    assert [s.path for s in first.skipped] == [str(photos / "broken.jpg")]
    assert_same_index(tmp_path / "ray", tmp_path / "local")
    names = [p.name for p in IndexStore(tmp_path / "ray").shard_paths()]
    assert names and all(n.startswith("part-000000-") for n in names)  # one run, one shard per task
    manifest = IndexStore(tmp_path / "ray").read_manifest()
    # The workers' shards carry the model's identity and the driver listed every one of them.
    assert sorted(manifest["shards"]) == sorted(names) == sorted(p.name for p in IndexStore(tmp_path / "ray").shard_files())
    for name in names:
        meta = pq.read_schema(tmp_path / "ray" / "shards" / name).metadata
        assert json.loads(meta[SHARD_META_KEY])["model"]["name"] == manifest["model"]["name"]
    assert manifest["counts"]["images"] == 15 and manifest["faiss"]["count"] == 15

    # A rerun embeds only what is new; then the same query answers from either index.
    make_photo(photos / "new" / "n1.jpg", size=(70, 70), seed=77)
    again = api.index_folder(photos, index_dir=tmp_path / "ray", model=str(tiny_model_path), extraction=NO_WORKERS,
                             engine="ray")
    assert again.embedded == 1 and again.unchanged == 16 and again.total == 16
    api.index_folder(photos, index_dir=tmp_path / "local", model=str(tiny_model_path), extraction=NO_WORKERS)
    assert_same_index(tmp_path / "ray", tmp_path / "local")


class KillOnce(Embedder):
    """The model actor, whose process is SIGKILLed at its second batch the first time round."""

    marker: str = ""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_killed_model_worker_is_retried_nothing_lost_or_doubled(cluster, photos, tmp_path, tiny_model_path):
    marker = tmp_path / "killed"
    killer = type("Killer", (KillOnce,), {"marker": str(marker)})
    engine = RayEngine(tmp_path / "ray", embedder=killer, shard_rows=4)
    summary = index_into(IndexStore(tmp_path / "ray"), str(photos), str(tiny_model_path), NO_WORKERS, engine=engine)
    assert marker.exists()  # a model worker really died mid-run
    assert int(marker.read_text()) != os.getpid()
    assert summary.embedded == 15 and summary.total == 15
    api.index_folder(photos, index_dir=tmp_path / "local", model=str(tiny_model_path), extraction=NO_WORKERS)
    assert_same_index(tmp_path / "ray", tmp_path / "local")


def test_engine_option_is_checked(photos, tmp_path, tiny_model_path):
    from copyscan.errors import UserError

    with pytest.raises(UserError, match="--engine must be local or ray"):
        api.index_folder(photos, index_dir=tmp_path / "i", model=str(tiny_model_path), engine="spark")
    with pytest.raises(UserError, match="--ray-address goes with --engine ray"):
        api.index_folder(photos, index_dir=tmp_path / "i", model=str(tiny_model_path), ray_address="127.0.0.1:6379")


def test_ray_dedupe_slices_give_the_local_groups(cluster, photos, tmp_path, tiny_model_path):
    local = api.dedupe(photos, output=tmp_path / "out", index_dir=tmp_path / "idx", model=str(tiny_model_path),
                       extraction=NO_WORKERS, report=False, threshold=0.9)
    sliced = api.dedupe(photos, output=tmp_path / "out-ray", index_dir=tmp_path / "idx", extraction=NO_WORKERS,
                        report=False, threshold=0.9, engine="ray")
    assert local.groups
    assert [[(m.path, round(m.score, 5)) for m in g.members] for g in sliced.groups] == \
           [[(m.path, round(m.score, 5)) for m in g.members] for g in local.groups]
    assert list((tmp_path / "out-ray" / "pairs" / "pairs").glob("pairs-*.parquet"))
