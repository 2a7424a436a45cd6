"""Export a loaded torch descriptor to ONNX, optionally quantised to int8, for CPU inference.

The exported graph keeps copyscan's model contract: uint8 NHWC pixels at the model's input size
in, L2-normalised float32 descriptors out. Normalisation is inside the graph, so the file drops
in wherever a model name is taken (`copyscan index --model lite0.onnx`) and decode workers stay
model-agnostic. The model's identity (name, dimension, input size, mean/std, the checksum of the
weights it came from, precision) is written into the ONNX metadata under `copyscan_config`.

int8 uses onnxruntime's static quantisation in QDQ form, per-channel weights, calibrated on real
images (a folder given by the user, or synthetic pictures when none is given, which is worse).
EfficientNet-Lite was designed for this: ReLU6 and no squeeze-excite keep activations in range.
Two choices made it match fp32 (measured on the shipped 128-d model, 256 photos; training/MODELS.md):
the first convolutions stay fp32 (quantising everything gave descriptors a mean cosine to fp32 of
0.89, keeping the stem and the first block 0.978) and activation ranges are the 99.99th
percentile, not the extremes (0.978 -> 0.992), at 1.7x fp32's speed on this 2-core CPU.

`copyscan export` (copyscan/export.py) loads a model by name and calls this; runtime.py calls it
to cache the ONNX twin of a torch model that lands on a CPU.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ExportError
from .base import TorchDescriptor

ONNX_CONFIG_KEY = "copyscan_config"
ONNX_FORMAT = "copyscan-onnx"
OPSET = 17
# Convolutions at the start of the graph kept in fp32 when quantising: an EfficientNet's stem and
# first block see the raw image at half resolution, where int8 loses most (see the docstring).
FP32_LEADING_CONVS = 3
# Activation ranges for int8: this percentile of the calibration values, clipping rare outliers.
CALIBRATION_PERCENTILE = 99.99
EXPORT_HINT = "pip install onnx onnxruntime (both are dependencies of copyscan)"


class _PixelsToDescriptor(nn.Module):
    """uint8 (B, H, W, 3) -> normalised NCHW float -> net -> L2 norm."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return F.normalize(self.net(x), dim=1)


@dataclass
class ExportResult:
    path: str
    dim: int
    input_size: int
    int8: bool
    bytes: int
    calibration_images: int = 0


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError(f"exporting to ONNX needs the onnx and onnxruntime packages: {EXPORT_HINT}") from None


def export_descriptor(loaded: TorchDescriptor, output: str | os.PathLike, int8: bool = False,
                      calibration: str | os.PathLike | None = None, calibration_images: int = 128,
                      batch_size: int = 16, seed: int = 0, name: str | None = None) -> ExportResult:
    """Write an already loaded torch descriptor as an ONNX file (see copyscan.export.export_onnx)."""
    require_onnx()
    import onnx

    info = loaded.info
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(loaded.net).float().cpu().eval()  # the caller's model stays where it was
    wrapper = _PixelsToDescriptor(net, info.mean, info.std).eval()
    config = {
        "format": ONNX_FORMAT, "version": 1, "name": name or out.stem, "exported_from": info.name, "dim": info.dim,
        "input_size": info.input_size, "mean": list(info.mean), "std": list(info.std),
        "source_sha256": info.weights_sha256, "precision": "int8" if int8 else "fp32",
    }
    with tempfile.TemporaryDirectory(prefix=".copyscan-export-", dir=out.parent) as tmp:
        fp32_path = os.path.join(tmp, "fp32.onnx")
        dummy = torch.zeros(2, info.input_size, info.input_size, 3, dtype=torch.uint8)
        # The TorchScript-based exporter (dynamo=False) needs only `onnx`, not onnxscript, and
        # takes TorchScript checkpoints too; its deprecation notice means nothing to a user.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (dummy,), fp32_path, input_names=["image"], output_names=["embedding"],
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=OPSET, dynamo=False,
            )
        n_calib = 0
        final = fp32_path
        if int8:
            final = os.path.join(tmp, "int8.onnx")
            n_calib = _quantise(fp32_path, final, tmp, info.input_size, calibration, calibration_images, batch_size, seed)
        proto = onnx.load(final)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CONFIG_KEY, json.dumps(config)
        staged = os.path.join(tmp, "final.onnx")
        onnx.save(proto, staged)
        os.replace(staged, out)  # same folder: atomic, never a half-written model at `output`
    return ExportResult(str(out), info.dim, info.input_size, int8, out.stat().st_size, n_calib)


def _quantise(src: str, dst: str, tmp: str, size: int, calibration, limit: int, batch_size: int, seed: int) -> int:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = os.path.join(tmp, "prepared.onnx")
    # Folds constants and infers shapes so the quantiser sees every Conv with its weights.
    quant_pre_process(src, prepared, skip_symbolic_shape=True)
    convs = [node.name for node in onnx.load(prepared).graph.node if node.op_type == "Conv"]
    batches = list(_calibration_batches(calibration, size, limit, batch_size, seed))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {"image": b}

    quantize_static(
        prepared, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        # The descriptor head (GeM's pow/mean, the projector, the L2 norm) is tiny and
        # precision-critical: only the convolutions of the trunk are quantised.
        op_types_to_quantize=["Conv"], nodes_to_exclude=convs[:FP32_LEADING_CONVS],
        calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
    )
    return sum(len(b) for b in batches)


def _calibration_batches(folder, size: int, limit: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    if folder is None:
        yield from _synthetic_batches(size, limit, batch_size, seed)
        return
    from ..decode import DecodeError, decode_file
    from ..discover import discover

    entries, _ = discover(folder)
    if not entries:
        raise ExportError(f"{folder}: no images found for int8 calibration")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(entries))[:limit]
    batch: list[np.ndarray] = []
    for i in order:
        try:
            batch.append(decode_file(entries[i].path, size).pixels)
        except DecodeError:
            continue
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _synthetic_batches(size: int, limit: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    # Smooth random colour fields with shapes: crude, but they exercise the activation ranges
    # better than noise does. Real photos calibrate better; the CLI says so.
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    done = 0
    while done < limit:
        n = min(batch_size, limit - done)
        imgs = []
        for _ in range(n):
            base = np.stack([127 + 120 * np.sin(6.28 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy) + rng.uniform(0, 6.28))
                             for _ in range(3)], axis=-1)
            img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(img)
            for _ in range(12):
                x0, y0 = rng.integers(0, size, 2)
                x1, y1 = x0 + rng.integers(4, size // 2), y0 + rng.integers(4, size // 2)
                draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            imgs.append(np.asarray(img))
        done += n
        yield np.stack(imgs)

