"""Run each model on the fastest runtime this machine has for it.

On a CPU, ONNX Runtime runs our EfficientNet-Lite descriptors about four times faster than torch
eager (measured: `copyscan bench speed`, BENCHMARKS.md) with the same descriptors (cosine 1.0000
to torch fp32). So a torch model that lands on the CPU is exported once to ONNX, cached under
`$COPYSCAN_CACHE/onnx/` keyed by its weights' checksum, and run by onnxruntime. On CUDA, torch
(autocast, channels_last) stays.

Where copyscan ships an int8 twin beside a checkpoint (`<checkpoint stem>.int8.onnx`, exported
from exactly those weights: its metadata carries their checksum), the CPU runs that instead: 1.7x
the fp32 twin's speed here, descriptors at a mean cosine of 0.99 to fp32's and the same micro AP
to within 0.002 (training/MODELS.md). It needs no torch at all, and no export on first use.

The model keeps its identity (name, weights checksum, dimension): an index built with one runtime
is queried with another, and only the manifest's `runtime` field tells them apart.
`COPYSCAN_RUNTIME=torch` (or `runtime="torch"`) keeps torch everywhere; `onnx-fp32` takes the
exact fp32 twin on a CPU even where an int8 one is shipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings

from typing import TYPE_CHECKING

from ..errors import ModelUnavailable
from ..identity import ModelInfo
from .descriptor import known_cpu

if TYPE_CHECKING:
    from .descriptor import DescriptorModel
    from .base import TorchDescriptor

RUNTIMES = ("auto", "torch", "onnx", "onnx-fp32")
INT8_SUFFIX = ".int8.onnx"  # the shipped int8 twin of `name.safetensors` is `name.int8.onnx`
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
    if choice == "torch" or not model.uses_torch or model.device.type != "cpu":
        return model  # (a model that runs without torch is left so without importing torch)
    from .base import TorchDescriptor

    if not isinstance(model, TorchDescriptor):
        return model
    if not onnx_available():
        if choice in ("onnx", "onnx-fp32"):
            raise ModelUnavailable('runtime "onnx" needs the onnx and onnxruntime packages: pip install onnx onnxruntime')
        return model
    try:
        return _onnx_twin(model)
    except Exception as exc:  # an architecture the exporter cannot take: torch still works
        if choice in ("onnx", "onnx-fp32"):
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
    Runtime and it is shipped (int8) or was exported before (fp32); else None. Building the torch
    net first would import timm and torchvision (about 3 s of every command's start-up on this
    CPU) only to be dropped."""
    choice = requested_runtime(runtime)
    if choice == "torch" or not onnx_available(export=False) or not on_cpu(device):
        return None
    if choice != "onnx-fp32":
        twin = shipped_int8_twin(info)
        if twin is not None:
            return twin
    path = onnx_cache_path(info)
    if not path.exists():
        return None
    try:
        return _twin_at(path, info)
    except ModelUnavailable:
        return None  # a damaged or mismatched cache file: the slow path exports it again


def on_cpu(device) -> bool:
    """Whether `device` resolves to the CPU; torch is asked only where no cheaper sign says so."""
    if known_cpu(device):
        return True
    from .base import resolve_device

    return resolve_device(device).type == "cpu"


def int8_twin_path(checkpoint: str | None) -> str | None:
    """Where the int8 twin of a checkpoint file would lie (beside it); None for no checkpoint."""
    if not checkpoint or not checkpoint.lower().endswith(".safetensors"):
        return None
    return checkpoint[: -len(".safetensors")] + INT8_SUFFIX


def shipped_int8_twin(info: ModelInfo) -> DescriptorModel | None:
    """The int8 ONNX twin beside the checkpoint `info` came from, if there is one exported from
    these very weights; None otherwise (a retrained checkpoint never runs a stale twin)."""
    path = int8_twin_path(info.source)
    if path is None or not os.path.isfile(path):
        return None
    try:
        twin = _twin_at(path, info)
    except ModelUnavailable:
        return None
    if twin.config.get("source_sha256") != info.weights_sha256 or twin.config.get("precision") != "int8":
        return None
    twin.info = dataclasses.replace(info, runtime="onnxruntime-int8")
    return twin


def _twin_at(path, info: ModelInfo) -> DescriptorModel:
    from .onnx_model import OnnxDescriptor

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
