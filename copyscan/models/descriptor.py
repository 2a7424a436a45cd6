"""What every descriptor model offers the pipeline, whatever runs it (torch, TorchScript, ONNX).

Models take batches of uint8 RGB pixels, NHWC, at their declared `input_size`, and return
L2-normalised float32 descriptors. Normalisation happens inside the model, on its device: the
decode workers stay model-agnostic and a GPU receives a quarter of the bytes.

Torch-free: a model that runs on ONNX Runtime (copyscan's own models on a CPU) is loaded and run
without importing torch (1.2-2 s of every command's start-up on a 2-core CPU); torch models are
in base.py.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ..identity import ModelInfo

if TYPE_CHECKING:  # numpy is not needed to list or describe models (`copyscan models`, --help)
    import numpy as np


class CpuDevice:
    """The device of a model that runs without torch: what the pipeline reads of a torch.device
    (`type`), without importing torch."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    __repr__ = __str__


CPU = CpuDevice()


class DescriptorModel:
    """A loaded model ready to embed batches."""

    info: ModelInfo
    device: object  # a torch.device, or CPU for models that run without torch
    # Whether batches come from a torch DataLoader (pinned memory for a GPU) or, False, from the
    # torch-free decode pool of copyscan.embed (numpy arrays only).
    uses_torch: bool = True

    def embed(self, batch) -> np.ndarray:
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


# Device files a GPU that torch could use leaves on Linux (NVIDIA, AMD ROCm, WSL's GPU bridge).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def known_cpu(device) -> bool:
    """Whether `device` surely means the CPU, known without importing torch: "cpu", or "auto"
    on Linux with none of the device files a GPU driver makes (where torch finds no GPU either).
    False means "ask torch" (base.resolve_device), not "a GPU"."""
    if not isinstance(device, str):
        return getattr(device, "type", None) == "cpu"
    if device == "cpu":
        return True
    if device != "auto" or "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False  # torch already loaded answers as cheaply; elsewhere no file tells
    return not any(os.path.exists(p) for p in GPU_DEVICE_FILES)


__all__ = ["CPU", "CpuDevice", "DescriptorModel", "GPU_DEVICE_FILES", "known_cpu"]
