"""The CUDA path: models, extraction, index + query and hard-view training on a GPU.

CI has no GPU, so these are skipped there; they run on a machine with one (the `device` tool's
GPU machine: `benchmarks/gpu_session.sh` runs this file first). Each compares the GPU's result
with the CPU's on the same input, so a GPU-only bug (a tensor left on the wrong device, the fp16
autocast of `TorchDescriptor.embed`, pinned memory, the training run's device moves) fails here.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photos(folder, n, size=(96, 72), first=0):
    return [make_photo(folder / f"p{i:02d}.jpg", size=size, seed=first + i) for i in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_shipped_default_on_cuda_matches_the_cpu():
    from copyscan.models import DEFAULT_MODEL, create_model

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 160, 160, 3), dtype=np.uint8)
    pixels[:4] = np.asarray(Image.fromarray(pixels[0]).resize((40, 40)).resize((160, 160)))[None]  # smooth ones too
    gpu = create_model(DEFAULT_MODEL, "cuda", runtime="torch")
    cpu = create_model(DEFAULT_MODEL, "cpu", runtime="torch")
    assert gpu.device.type == "cuda"
    a, b = gpu.embed(pixels), cpu.embed(pixels)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
    assert _cos(a, b).min() > 0.995  # fp16 autocast on the GPU, fp32 on the CPU


def test_index_and_query_on_cuda_give_the_cpus_matches(tmp_path, tiny_model_path):
    from copyscan import api
    from copyscan.extraction import Extraction

    _photos(tmp_path / "refs", 12)
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in range(0, 12, 2):  # half the references, resized and re-encoded
        Image.open(tmp_path / "refs" / f"p{i:02d}.jpg").resize((80, 60)).save(queries / f"q{i:02d}.jpg", quality=70)
    rows = {}
    for side, device in (("gpu", "cuda"), ("cpu", "cpu")):
        extraction = Extraction(batch_size=4, workers=2, device=device)
        summary = api.index_folder(tmp_path / "refs", index_dir=tmp_path / f"index_{side}", model=str(tiny_model_path),
                                   extraction=extraction)
        assert summary.embedded == 12
        q = api.query_folder(queries, index_dir=tmp_path / f"index_{side}", output=tmp_path / f"out_{side}",
                             threshold=-1, top_k=1, extraction=extraction, report=False, regions=False)
        with open(q.csv_path, newline="") as fh:
            rows[side] = {r["query_path"]: (r["reference_path"], float(r["score"])) for r in csv.DictReader(fh)}
    assert len(rows["gpu"]) == 6
    for query, (ref, score) in rows["gpu"].items():
        cpu_ref, cpu_score = rows["cpu"][query]
        assert ref == cpu_ref
        assert score == pytest.approx(cpu_score, abs=0.01)


def _hard_config(data, out, start, **kw):
    """test_hard.py's tiny run, with the shipped recipe's levers on (L_hn, the view teacher)."""
    from test_hard import tiny_config

    return tiny_config(data, out, start, **{"w_hn": 1.0, "rel_anchor": "view", "rel_space": "feature", **kw})


def test_hard_run_on_cuda_follows_the_cpu_run_and_resumes_on_the_cpu(tmp_path, tiny_model_path):
    from copyscan.models import create_model
    from copyscan.train.hardrun import HardRun

    data = tmp_path / "photos"
    _photos(data, 40, size=(72, 60), first=900)
    HardRun(_hard_config(data, tmp_path / "cpu", tiny_model_path, device="cpu")).run()
    gpu = HardRun(_hard_config(data, tmp_path / "gpu", tiny_model_path, device="cuda", workers=2))
    assert next(gpu.net.parameters()).device.type == "cuda" and gpu.queue.rows.device.type == "cuda"
    gpu.run(stop_after=2)
    # The state written on the GPU resumes on the CPU (device is one of the resumable settings).
    resumed = HardRun(_hard_config(data, tmp_path / "gpu", tiny_model_path, device="cpu"), resume=True)
    assert resumed.step == 2 and next(resumed.net.parameters()).device.type == "cpu"
    resumed.run()
    from test_hard import read_jsonl

    cpu_log, gpu_log = read_jsonl(tmp_path / "cpu" / "metrics.jsonl"), read_jsonl(tmp_path / "gpu" / "metrics.jsonl")
    assert [r["step"] for r in gpu_log] == [1, 2, 3, 4]
    for a, b in zip(cpu_log, gpu_log):
        for key in ("loss", "rel", "con", "hn", "align"):
            # TF32 convolutions and products on the GPU: close, not equal
            assert b[key] == pytest.approx(a[key], rel=1e-2, abs=1e-3), (a["step"], key)
    model = create_model(str(tmp_path / "gpu" / "best.safetensors"), "cuda", runtime="torch")
    assert model.embed(np.zeros((2, 64, 64, 3), np.uint8)).shape == (2, 32)


def test_gpu_extraction_bench_script_runs(tmp_path, tiny_model_path):
    """benchmarks/gpu_extraction.py, the script behind BENCHMARKS.md's GPU rows, on a tiny folder."""
    import subprocess
    import sys
    from pathlib import Path

    _photos(tmp_path / "photos", 24)
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_extraction.py"), str(tmp_path / "photos"),
                    "--model", str(tiny_model_path), "--repeats", "1", "--batch-sizes", "8", "--json", str(out)],
                   check=True, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert {r["device"] for r in result["runs"]} == {"cuda", "cpu"}
    assert all(r["images"] == 24 and r["images_per_s"] > 0 for r in result["runs"])
