"""The decode-and-embed stage: worker priority on a CPU model."""

import os

import numpy as np
import torch

from copyscan import decode, embed
from copyscan.decode import Decoded
from copyscan.discover import FileEntry
from copyscan.models.base import DescriptorModel, ModelInfo


class _NicenessProbe(DescriptorModel):
    """A CPU 'model' whose descriptor is the niceness the decoder ran at (sent as the pixels)."""

    def __init__(self):
        self.info = ModelInfo("probe", 1, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "0" * 64, "torch")
        self.device = torch.device("cpu")

    def embed(self, batch):
        return np.asarray(batch)[:, 0, 0, :1].astype(np.float32)


def _decode_reports_niceness(path, size, max_pixels):
    # Runs in the worker: os.nice(0) reads the niceness without changing it.
    return Decoded(np.full((size, size, 3), os.nice(0), np.uint8), 1, 1, path, path)


def _niceness_seen(monkeypatch, workers):
    monkeypatch.setattr(decode, "decode_file", _decode_reports_niceness)  # what decode_or_reason calls
    entries = [FileEntry(f"/x/{i}.jpg", 1, 1) for i in range(6)]
    seen = [d for b in embed.embed_entries(entries, _NicenessProbe(), batch_size=2, workers=workers) for d in b.descriptors[:, 0]]
    assert len(seen) == 6
    return set(int(v) for v in seen)


def test_cpu_model_decoders_run_at_lower_priority(monkeypatch):
    before = os.nice(0)
    expected = min(19, before + embed.CPU_DECODE_NICENESS)
    assert _niceness_seen(monkeypatch, workers=2) == {expected}
    assert os.nice(0) == before  # the model's own process keeps its priority


def test_decoding_in_the_main_process_keeps_its_priority(monkeypatch):
    before = os.nice(0)
    assert _niceness_seen(monkeypatch, workers=0) == {before}
    assert os.nice(0) == before


def test_default_workers_by_device(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert embed.default_workers() == 8  # CPU: the model needs cores as well
    assert embed.default_workers(gpu=True) == 15  # GPU: decoding is the limit; one core feeds it
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert embed.default_workers() == 1 and embed.default_workers(gpu=True) == 1


class _TorchFreeProbe(_NicenessProbe):
    """The same probe, run as a model that needs no torch (an ONNX model on the CPU is one)."""

    uses_torch = False

    def __init__(self):
        super().__init__()
        from copyscan.models.descriptor import CPU

        self.device = CPU


def _decode_reports_order(path, size, max_pixels):
    n = int(os.path.basename(path).split(".")[0])
    return Decoded(np.full((size, size, 3), n, np.uint8), 1, 1, path, path)


def test_torch_free_decode_pool_keeps_order_and_priority(monkeypatch):
    entries = [FileEntry(f"/x/{i}.jpg", 1, 1) for i in range(23)]
    monkeypatch.setattr(decode, "decode_file", _decode_reports_order)
    for workers in (0, 2):
        batches = list(embed.embed_entries(entries, _TorchFreeProbe(), batch_size=4, workers=workers))
        assert [int(v) for b in batches for v in b.descriptors[:, 0]] == list(range(23))
        assert [r.path for b in batches for r in b.rows] == [e.path for e in entries]
    monkeypatch.setattr(decode, "decode_file", _decode_reports_niceness)
    before = os.nice(0)
    seen = {int(v) for b in embed.embed_entries(entries[:6], _TorchFreeProbe(), batch_size=2, workers=2)
            for v in b.descriptors[:, 0]}
    assert seen == {min(19, before + embed.CPU_DECODE_NICENESS)}


def test_decode_pool_tasks_carry_only_their_batch_and_work_under_spawn(tmp_path, monkeypatch):
    """A pool task pickles its batch's part of the file list, not the whole list (which a spawn
    or forkserver start would copy to every worker), and the pool decodes the same as the main
    process where workers start by spawn (macOS, Windows)."""
    import multiprocessing
    import pickle

    from conftest import make_photo

    many = embed._Files([FileEntry(f"/photos/{i:07d}.jpg", 1, 1) for i in range(5000)], 64, 10**8)
    part = many.part(4000, 4032)
    assert len(pickle.dumps(part)) * 50 < len(pickle.dumps(many))
    assert list(part.numbers()) == list(range(4000, 4032)) and part.entries[0].path == "/photos/0004000.jpg"
    assert part.part(4010, 4012).entries == many.entries[4010:4012]
    requests = embed._Requests([(f"/p/{i}.jpg", [(0.0, 0.0, 0.5, 0.5)]) for i in range(100)], 64, 10**8)
    assert requests.part(10, 12).requests == requests.requests[10:12]

    paths = [make_photo(tmp_path / f"{i}.jpg", size=(80, 60), seed=i) for i in range(7)]
    entries = [FileEntry(str(p), 1, 1) for p in paths]
    (tmp_path / "3.jpg").write_bytes(b"not a photo")  # a failure keeps its number too
    monkeypatch.setattr(embed, "POOL_CONTEXT", multiprocessing.get_context("spawn"))
    runs = {}
    for workers in (0, 2):
        batches = list(embed.decoded_batches(embed._Files(entries, 64, 10**8), 3, workers, 0, embed._collate,
                                             uses_torch=False))
        runs[workers] = ([i for b in batches for i in b[0]], np.concatenate([b[1] for b in batches]),
                         [bad for b in batches for bad in b[3]])
    assert runs[2][0] == runs[0][0] == [0, 1, 2, 4, 5, 6]
    assert np.array_equal(runs[2][1], runs[0][1])
    assert [i for i, _ in runs[2][2]] == [i for i, _ in runs[0][2]] == [3]


def _decode_dies(path, size, max_pixels):
    os._exit(3)  # a decoder killed mid-file (the OOM killer, a crash in a codec)


def test_a_decode_worker_that_dies_is_reported_clearly(monkeypatch):
    import pytest

    monkeypatch.setattr(decode, "decode_file", _decode_dies)
    entries = [FileEntry(f"/x/{i}.jpg", 1, 1) for i in range(4)]
    from copyscan.errors import UserError

    # A UserError: the CLI says it on one line (exit 1), not as an internal error.
    with pytest.raises(UserError, match="decode worker process stopped unexpectedly.*run the same command again"):
        list(embed.embed_entries(entries, _TorchFreeProbe(), batch_size=2, workers=1))


def test_known_cpu_without_torch(monkeypatch):
    from copyscan.models import descriptor

    assert descriptor.known_cpu("cpu") and not descriptor.known_cpu("cuda")
    monkeypatch.delitem(descriptor.sys.modules, "torch", raising=False)  # put back after the test
    monkeypatch.setattr(descriptor.sys, "platform", "linux")
    monkeypatch.setattr(descriptor.os.path, "exists", lambda p: False)
    assert descriptor.known_cpu("auto")  # no GPU driver files: torch would find none either
    monkeypatch.setattr(descriptor.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert not descriptor.known_cpu("auto")  # ask torch


def test_index_keeps_what_was_embedded_when_a_decoder_dies(tmp_path, monkeypatch, tiny_model_path):
    """`copyscan index` whose decode worker is killed mid-run: one line (exit 1, no internal
    error), the batches embedded before it saved, and the next run embeds only the rest."""
    import subprocess
    import sys

    from conftest import make_photo

    for i in range(40):
        make_photo(tmp_path / "photos" / f"p{i:02d}.jpg", size=(64, 48), seed=i)
    # The 31st file kills its decoder: the whole worker process goes, as under the OOM killer.
    probe = (
        "import os, sys\n"
        "from copyscan import decode\n"
        "real = decode.decode_file\n"
        "def dies(path, *a, **k):\n"
        "    if path.endswith('p30.jpg') and not os.environ.get('SPARE'): os._exit(9)\n"
        "    return real(path, *a, **k)\n"
        "decode.decode_file = dies\n"
        "from copyscan.cli import main\n"
        "sys.argv = ['copyscan', 'index', 'photos', '--index-dir', 'idx', '--model', sys.argv[1], '-j', '1', '-b', '4', '-q']\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COPYSCAN_FLUSH_ROWS"}  # one shard a run: saved by the flush
    r = subprocess.run([sys.executable, "-c", probe, str(tiny_model_path)], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "decode worker process stopped unexpectedly" in r.stderr and "internal error" not in r.stderr
    assert "images saved" in r.stderr
    r = subprocess.run([sys.executable, "-c", probe, str(tiny_model_path)], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "SPARE": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    embedded = int(r.stdout.split(" embedded")[0].rsplit(" ", 1)[-1])
    assert 0 < embedded < 40  # the first run's batches were kept
