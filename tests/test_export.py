"""ONNX export (`copyscan export`), the automatic ONNX Runtime path on CPU, and `bench speed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import make_photo  # noqa: E402

from copyscan.export import export_onnx  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.models.runtime import onnx_cache_path  # noqa: E402


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    from conftest import photo_array

    return np.stack([photo_array((size, size), seed + i) for i in range(n)])


def test_export_keeps_identity_and_descriptors(tiny_model_path, tmp_path):
    out = tmp_path / "tiny.onnx"
    result = export_onnx(tiny_model_path, out)
    assert result.dim == 32 and result.input_size == 64 and not result.int8 and out.stat().st_size == result.bytes
    reference = create_model(tiny_model_path, device="cpu", runtime="torch")
    exported = create_model(out)
    # Input size and normalisation come from the file's metadata, not from a guess.
    assert exported.info.runtime == "onnxruntime" and exported.input_size == 64 and exported.dim == 32
    assert exported.info.mean == reference.info.mean and exported.info.std == reference.info.std
    batch = _pixels(5, 64)
    a, b = reference.embed(torch.from_numpy(batch)), exported.embed(batch)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.9999


def test_int8_export_is_calibrated_and_close(tiny_model_path, tmp_path):
    photos = tmp_path / "calib"
    for i in range(6):
        make_photo(photos / f"{i}.jpg", size=(96, 80), seed=i)
    out = tmp_path / "tiny_int8.onnx"
    result = export_onnx(tiny_model_path, out, int8=True, calibration=photos, calibration_images=6, batch_size=3)
    assert result.int8 and result.calibration_images == 6
    model = create_model(out)
    batch = _pixels(4, 64, seed=50)
    q = model.embed(batch)
    ref = create_model(tiny_model_path, device="cpu", runtime="torch").embed(torch.from_numpy(batch))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q * ref).sum(1).mean() > 0.9  # quantised, not identical; a broken graph scores ~0


def test_cpu_models_run_on_onnxruntime_by_default(tiny_model_path, monkeypatch):
    auto = create_model(tiny_model_path, device="cpu")
    torch_model = create_model(tiny_model_path, device="cpu", runtime="torch")
    assert auto.info.runtime == "onnxruntime" and torch_model.info.runtime == "torch"
    # The same model as far as an index is concerned: a torch index can be queried on ONNX.
    assert (auto.name, auto.dim, auto.info.weights_sha256) == (torch_model.name, torch_model.dim, torch_model.info.weights_sha256)
    batch = _pixels(3, 64, seed=9)
    np.testing.assert_allclose(auto.embed(batch), torch_model.embed(torch.from_numpy(batch)), atol=1e-4)
    cached = onnx_cache_path(torch_model)
    stamp = cached.stat().st_mtime_ns
    create_model(tiny_model_path, device="cpu")
    assert cached.stat().st_mtime_ns == stamp  # exported once, then reused
    monkeypatch.setenv("COPYSCAN_RUNTIME", "torch")
    assert create_model(tiny_model_path, device="cpu").info.runtime == "torch"
    monkeypatch.setenv("COPYSCAN_RUNTIME", "tensorrt")
    with pytest.raises(Exception, match="unknown runtime"):
        create_model(tiny_model_path, device="cpu")


def test_cached_twin_starts_without_building_the_torch_net(tiny_model_path, tmp_path):
    first = create_model(tiny_model_path, device="cpu")  # exports the twin if not cached yet
    batch = _pixels(3, 64, seed=21)
    np.save(tmp_path / "batch.npy", batch)
    probe = (
        "import sys, json, numpy as np\n"
        "from copyscan.models import create_model\n"
        f"m = create_model({str(tiny_model_path)!r}, device='cpu')\n"
        f"x = np.load({str(tmp_path / 'batch.npy')!r})\n"
        "print(json.dumps({'timm': 'timm' in sys.modules, 'onnx': 'onnx' in sys.modules, 'info': m.info.__dict__,\n"
        "                  'out': m.embed(x).tolist()}))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["timm"] is False  # the checkpoint's header and the cached twin were enough
    assert doc["onnx"] is False  # onnxruntime runs the twin; onnx (0.5 s to import) only exports
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in first.info.__dict__.items()} == doc["info"]
    np.testing.assert_allclose(np.asarray(doc["out"], np.float32), first.embed(batch), atol=1e-6)


def test_damaged_cached_twin_is_exported_again(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    good = create_model(tiny_model_path, device="cpu")
    cached = onnx_cache_path(good)
    cached.write_bytes(b"not an onnx model")
    again = create_model(tiny_model_path, device="cpu")
    assert again.info == good.info and cached.stat().st_size > 1000
    batch = _pixels(2, 64, seed=5)
    np.testing.assert_allclose(again.embed(batch), good.embed(batch), atol=1e-6)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "copyscan", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


def test_export_cli(tiny_model_path, tmp_path):
    r = _cli("export", str(tiny_model_path), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    assert "32-d" in r.stdout and "fp32" in r.stdout and r.stderr.strip() == ""
    r = _cli("export", "no_such_model", "-o", str(tmp_path / "x.onnx"))
    assert r.returncode == 1 and "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_bench_speed_cli(tiny_model_path, tmp_path):
    for i in range(10):
        make_photo(tmp_path / "photos" / f"{i}.jpg", size=(120, 90), seed=i)
    r = _cli("bench", "speed", str(tmp_path / "photos"), "-m", str(tiny_model_path), "--repeats", "1",
             "--stages", "decode,model,index", "-j", "1", "--batch-size", "4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["images"] == 10
    (row,) = doc["models"]
    for stage in ("decode", "model", "index"):
        assert row[stage]["images_per_s"] > 0 and row[stage]["peak_rss_mb"] > 0
    assert row["model"]["runtime"] == "onnxruntime"
    assert 0 < row["index_over_model"] and 0 < row["index_over_decode"]
    # 10 images in batches of 4: the steady rate spans the last two batches.
    assert row["index"]["steady_images_per_s"] > 0 and row["index"]["startup_s"] > 0
    assert row["steady_over_model"] > 0
    r = _cli("bench", "speed", str(tmp_path / "photos"), "--stages", "decode,warp")
    assert r.returncode == 1 and "unknown stage" in r.stderr


def _int8_beside(tiny_model_path, folder):
    """A copy of the tiny checkpoint with an int8 twin exported beside it, as ship_model.py does."""
    import shutil

    from copyscan.models.runtime import INT8_SUFFIX

    photos = folder / "calib"
    for i in range(6):
        make_photo(photos / f"{i}.jpg", size=(96, 80), seed=i)
    checkpoint = folder / "m.safetensors"
    shutil.copyfile(tiny_model_path, checkpoint)
    twin = folder / f"m{INT8_SUFFIX}"
    export_onnx(checkpoint, twin, int8=True, calibration=photos, calibration_images=6, batch_size=3)
    return checkpoint, twin


def test_a_shipped_int8_twin_runs_on_the_cpu(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    checkpoint, twin = _int8_beside(tiny_model_path, tmp_path)
    exact = create_model(checkpoint, device="cpu", runtime="torch")
    auto = create_model(checkpoint, device="cpu")
    # Same identity as the torch model (an index built on a GPU is queried here), int8 runtime.
    assert auto.info.runtime == "onnxruntime-int8" and auto.info.weights_sha256 == exact.info.weights_sha256
    assert (auto.name, auto.dim, auto.input_size) == (exact.name, exact.dim, exact.input_size)
    batch = _pixels(4, 64, seed=70)
    np.testing.assert_allclose(auto.embed(batch), create_model(twin).embed(batch), atol=1e-6)  # the file, as is
    assert (auto.embed(batch) * exact.embed(torch.from_numpy(batch))).sum(1).mean() > 0.9
    assert not onnx_cache_path(exact).exists()  # nothing exported: the twin was enough
    fp32 = create_model(checkpoint, device="cpu", runtime="onnx-fp32")
    assert fp32.info.runtime == "onnxruntime"
    np.testing.assert_allclose(fp32.embed(batch), exact.embed(torch.from_numpy(batch)), atol=1e-4)
    monkeypatch.setenv("COPYSCAN_RUNTIME", "torch")
    assert create_model(checkpoint, device="cpu").info.runtime == "torch"


def test_an_int8_twin_of_other_weights_is_not_used(tiny_model_path, tmp_path, monkeypatch):
    """Retrained weights under the same name never run the old weights' twin."""
    from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint

    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    checkpoint, _ = _int8_beside(tiny_model_path, tmp_path)
    net = load_checkpoint(checkpoint, "cpu").net
    with torch.no_grad():
        next(net.parameters()).mul_(1.5)
    save_checkpoint(net, read_config(checkpoint), checkpoint)
    model = create_model(checkpoint, device="cpu")
    assert model.info.runtime == "onnxruntime"  # the fp32 twin of the new weights, exported now
    batch = _pixels(2, 64, seed=3)
    np.testing.assert_allclose(model.embed(batch), create_model(checkpoint, device="cpu", runtime="torch")
                               .embed(torch.from_numpy(batch)), atol=1e-4)


def test_int8_keeps_the_first_convolutions_in_fp32(tiny_model_path, tmp_path):
    import onnx

    from copyscan.models.onnx_export import FP32_LEADING_CONVS

    _, twin = _int8_beside(tiny_model_path, tmp_path)
    graph = onnx.load(twin).graph
    dequantised = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantised = [node.input[1] in dequantised for node in convs]
    assert len(convs) > FP32_LEADING_CONVS + 2
    assert quantised[:FP32_LEADING_CONVS] == [False] * FP32_LEADING_CONVS and all(quantised[FP32_LEADING_CONVS:])


def test_bench_speed_decode_stage_times_the_decoders_the_model_gets(monkeypatch):
    """`bench speed`'s decode stage feeds the same decoders as `index` would: copyscan's pool for
    an ONNX model on the CPU, torch's DataLoader under runtime "torch" (and on a GPU)."""
    from copyscan import embed, speed

    seen = []

    def fake_batches(dataset, batch_size, workers, niceness, collate, *, uses_torch, pin_memory=False):
        seen.append((uses_torch, pin_memory))
        return iter(())

    monkeypatch.setattr(embed, "decoded_batches", fake_batches)
    base = {"size": 64, "batch_size": 4, "workers": 0, "device": "cpu"}
    for runtime, expected, label in ((None, (False, False), "decode pool"), ("onnx", (False, False), "decode pool"),
                                     ("torch", (True, False), "torch DataLoader")):
        work, n, note = speed._prepare_decode(dict(base, runtime=runtime), ["/x/a.jpg", "/x/b.jpg"])
        work()
        assert seen[-1] == expected and n == 2 and note == label
    assert speed.decoders_of(dict(base, runtime="auto")) == (False, False)
