"""`copyscan export`: write a registered model or a model file as an ONNX file (optionally int8).

The export itself (graph, metadata, quantisation) is copyscan.models.onnx_export; this module
only loads the model by name, on torch, so that there is a torch graph to export.
"""

from __future__ import annotations

import os

from .errors import ExportError
from .models import create_model
from .models.onnx_export import ONNX_CONFIG_KEY, ExportResult, export_descriptor, require_onnx


def export_onnx(model: str | os.PathLike = "lite0_gem", output: str | os.PathLike = "model.onnx", int8: bool = False,
                calibration: str | os.PathLike | None = None, calibration_images: int = 128, batch_size: int = 16,
                seed: int = 0) -> ExportResult:
    """Write `model` (a registered name or a copyscan / TorchScript file) as an ONNX file.

    With `int8`, the file is quantised statically, calibrated on up to `calibration_images`
    images from the folder `calibration` (synthetic pictures when None).
    """
    from .models.base import TorchDescriptor

    require_onnx()
    loaded = create_model(model, device="cpu", runtime="torch")
    if not isinstance(loaded, TorchDescriptor):
        raise ExportError(f"{loaded.name} runs on {loaded.info.runtime}, not torch: only torch models can be exported")
    return export_descriptor(loaded, output, int8, calibration, calibration_images, batch_size, seed)


__all__ = ["ONNX_CONFIG_KEY", "ExportError", "ExportResult", "export_descriptor", "export_onnx"]
