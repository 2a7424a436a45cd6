"""What a model is, without loading it: `ModelInfo` (the identity written into every index),
`ModelSpec` (a registry entry) and the weights checksum. Torch-free on purpose: the CLI, the
store and an unchanged-folder `index` use these without importing torch or building a net.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    """Identity and preprocessing of a loaded model; written into every index it builds."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    runtime: str  # torch | torchscript | onnxruntime | onnxruntime-int8
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


__all__ = ["ModelInfo", "ModelSpec", "sha256_file"]
