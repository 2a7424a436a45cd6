"""What every descriptor model offers the pipeline, whatever runs it (torch, TorchScript, ONNX).

Models take batches of uint8 RGB pixels, NHWC, at their declared `input_size`, and return
L2-normalised float32 descriptors. Normalisation happens inside the model, on its device: the
decode workers stay model-agnostic and a GPU receives a quarter of the bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here: the message says what to install or where to put what."""


@dataclass
class ModelInfo:
    """Identity and preprocessing of a loaded model; written into every index it builds."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    runtime: str  # torch | torchscript | onnxruntime
    source: str = ""  # where the weights came from, for humans

    def preprocessing(self) -> dict[str, Any]:
        return {
            "resize": "squash",
            "size": self.input_size,
            "interpolation": "bilinear",
            "mean": list(self.mean),
            "std": list(self.std),
            "exif_transpose": True,
        }


class DescriptorModel:
    """A loaded model ready to embed batches; subclasses implement `_forward`."""

    info: ModelInfo
    device: torch.device

    def embed(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, dim) float32, L2-normalised."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def input_size(self) -> int:
        return self.info.input_size


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    return torch.device(device)


class TorchDescriptor(DescriptorModel):
    """Runs an nn.Module (or TorchScript module) that maps normalised NCHW floats to descriptors."""

    def __init__(self, net: nn.Module, info: ModelInfo, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.info = info
        self.net = net.eval().to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.net(x)
        else:
            out = self.net(x)
        out = F.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)


class GeM(nn.Module):
    """Generalised mean pooling (Radenovic et al.), p=3 as in SSCD."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class DescriptorNet(nn.Module):
    """timm trunk -> GeM -> optional linear projector -> L2 norm: lite0_gem and trained students.

    `features()` gives the pooled trunk feature before the projector, which relational
    distillation needs.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int | None = None, gem_p: float = 3.0):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p)
        self.projector = nn.Linear(feature_dim, embed_dim) if embed_dim else None
        self.feature_dim = feature_dim
        self.out_dim = embed_dim or feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.projector is not None:
            f = self.projector(f)
        return F.normalize(f, dim=1)


_sha_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) within the process."""
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


@dataclass
class ModelSpec:
    """A registry entry, in the spirit of timm's pretrained configs."""

    name: str
    description: str
    dim: int
    input_size: int
    license: str
    requires: str = ""  # what must be installed or downloaded, for `copyscan models`
    loader: Any = field(default=None, repr=False)  # (device) -> DescriptorModel
    # The copyscan checkpoint the loader reads, when it is one: its identity can then be read
    # from the file's header without building the net (see create_model's cached ONNX twin).
    checkpoint: str | None = field(default=None, repr=False)
