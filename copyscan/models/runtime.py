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

from .base import DescriptorModel, ModelUnavailable, TorchDescriptor

RUNTIMES = ("auto", "torch", "onnx")
RUNTIME_ENV = "COPYSCAN_RUNTIME"


def requested_runtime(runtime: str | None = None) -> str:
    value = (runtime or os.environ.get(RUNTIME_ENV) or "auto").lower()
    if value not in RUNTIMES:
        raise ModelUnavailable(f"unknown runtime {value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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


def onnx_cache_path(model: DescriptorModel):
    from .weights import cache_dir

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)[:64]
    return cache_dir() / "onnx" / f"{stem}-{model.info.weights_sha256[:16]}-{model.input_size}.onnx"


def _onnx_twin(model: TorchDescriptor) -> DescriptorModel:
    from ..export import export_descriptor
    from .sscd import OnnxDescriptor

    path = onnx_cache_path(model)
    if not path.exists():
        # Written to a temporary name and renamed: two processes exporting at once both succeed.
        export_descriptor(model, path, name=model.name)
    twin = OnnxDescriptor(path, model.name)
    if twin.dim != model.dim or twin.input_size != model.input_size:
        raise ModelUnavailable(f"{path} does not match {model.name}; delete it to export again")
    twin.info = dataclasses.replace(model.info, runtime="onnxruntime")
    return twin
