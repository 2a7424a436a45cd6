"""torch models: `TorchDescriptor` runs an nn.Module on the CPU or a GPU; `DescriptorNet` is
copyscan's trunk -> GeM -> projector net. What every model offers the pipeline
(`DescriptorModel`) is torch-free, in descriptor.py, and re-exported here.

This module imports torch; what a model *is* (ModelInfo, ModelSpec) lives in copyscan.identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The identity types are torch-free (copyscan.identity); re-exported for code that imports them here.
from ..errors import ModelUnavailable
from ..identity import ModelInfo, ModelSpec, sha256_file
from .descriptor import DescriptorModel


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


__all__ = ["DescriptorModel", "DescriptorNet", "GeM", "ModelInfo", "ModelSpec", "ModelUnavailable", "TorchDescriptor",
           "resolve_device", "sha256_file"]
