"""Run each model on the fastest runtime this machine has for it.

On a CPU, ONNX Runtime runs our EfficientNet-Lite descriptors about four times faster than torch
eager (measured: `copyscan bench speed`, BENCHMARKS.md) with the same descriptors (cosine 1.0000
to torch fp32). So a torch model that lands on the CPU is exported once to ONNX, cached under
`$COPYSCAN_CACHE/onnx/` keyed by its weights' checksum, and run by onnxruntime. On CUDA, torch
(autocast, channels_last) stays.

The model keeps its identity (name, weights checksum, dimension): an index built with one runtime
is queried with the other, and only the manifest's `runtime` field tells them apart.
`COPYSCAN_RUNTIME=torch` (or `runtime="torch"`) keeps torch everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings

from ..errors import ModelUnavailable
from ..identity import ModelInfo
from .base import DescriptorModel, TorchDescriptor, resolve_device

RUNTIMES = ("auto", "torch", "onnx")
RUNTIME_ENV = "COPYSCAN_RUNTIME"


def requested_runtime(runtime: str | None = None) -> str:
    value = (runtime or os.environ.get(RUNTIME_ENV) or "auto").lower()
    if value not in RUNTIMES:
        raise ModelUnavailable(f"unknown runtime {value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def onnx_available(export: bool = True) -> bool:
    """Whether onnxruntime (and, to `export` a twin, onnx: torch.onnx.export needs it) is
    installed. Looked up, not imported: importing onnx takes about 0.5 s here (ml_dtypes), which
    every `index` and `query` with a cached twin paid for nothing (BENCHMARKS.md, speed)."""
    return _installed("onnxruntime") and (not export or _installed("onnx"))


def _installed(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules, or a broken install
        return False


def for_this_machine(model: DescriptorModel, runtime: str | None = None) -> DescriptorModel:
    """`model`, or the same model on ONNX Runtime when it is a torch model on the CPU."""
    choice = requested_runtime(runtime)
    if choice == "torch" or not isinstance(model, TorchDescriptor) or model.device.type != "cpu":
        return model
    if not onnx_available():
        if choice == "onnx":
            raise ModelUnavailable('runtime "onnx" needs the onnx and onnxruntime packages: pip install onnx onnxruntime')
        return model
    try:
        return _onnx_twin(model)
    except Exception as exc:  # an architecture the exporter cannot take: torch still works
        if choice == "onnx":
            raise ModelUnavailable(f"{model.name} could not be run on ONNX Runtime: {str(exc).splitlines()[0]}") from None
        warnings.warn(f"{model.name}: ONNX export failed ({type(exc).__name__}); running on torch, which is slower on CPU")
        return model


def onnx_cache_path(model: DescriptorModel | ModelInfo):
    """Where the ONNX twin of a model (or of a model's identity) is cached."""
    from .weights import cache_dir

    info = model if isinstance(model, ModelInfo) else model.info
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.name)[:64]
    return cache_dir() / "onnx" / f"{stem}-{info.weights_sha256[:16]}-{info.input_size}.onnx"


def cached_twin(info: ModelInfo, device: str, runtime: str | None = None) -> DescriptorModel | None:
    """The ONNX twin of the torch model `info` names, when this machine would run it on ONNX
    Runtime and it was exported before; else None. Building the torch net first would import
    timm and torchvision (about 3 s of every command's start-up on this CPU) only to be dropped."""
    if requested_runtime(runtime) == "torch" or resolve_device(device).type != "cpu" or not onnx_available(export=False):
        return None
    path = onnx_cache_path(info)
    if not path.exists():
        return None
    try:
        return _twin_at(path, info)
    except ModelUnavailable:
        return None  # a damaged or mismatched cache file: the slow path exports it again


def _twin_at(path, info: ModelInfo) -> DescriptorModel:
    from .sscd import OnnxDescriptor

    twin = OnnxDescriptor(path, info.name)
    if twin.dim != info.dim or twin.input_size != info.input_size:
        raise ModelUnavailable(f"{path} does not match {info.name}; delete it to export again")
    twin.info = dataclasses.replace(info, runtime="onnxruntime")
    return twin


def _onnx_twin(model: TorchDescriptor) -> DescriptorModel:
    from .onnx_export import export_descriptor

    path = onnx_cache_path(model)
    if path.exists():
        try:
            return _twin_at(path, model.info)
        except ModelUnavailable:
            pass  # damaged or mismatched: export it again over the top
    # Written to a temporary name and renamed: two processes exporting at once both succeed.
    export_descriptor(model, path, name=model.name)
    return _twin_at(path, model.info)
