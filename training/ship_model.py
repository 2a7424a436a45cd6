"""Turn a `copyscan train` checkpoint into a model shipped inside the package.

    python training/ship_model.py RUN_DIR/model.safetensors copyscan_lite0_128 \\
        [--input-size 160] [--fold-background DIR [--whiten 0.5]] [--threshold T] [--description "..."] \
        [--int8-calibration ../shared/data/imagenette-train]

Writes copyscan/weights/NAME.safetensors: the same weights in fp16 (half the size; descriptors
change by ~1e-3 cosine, far below what separates copies from non-copies) with the config's name,
description and licence set, and optionally the centring (and partial whitening) of a
background folder folded into the projector (`copyscan.train.student.fold_centring`), so that `create_model(NAME)` and `--model NAME` find it. The model
card for each shipped model is training/MODELS.md.

With --int8-calibration it also writes NAME.int8.onnx beside it: the int8 ONNX twin that a CPU
runs (copyscan/models/runtime.py), calibrated on that folder's photos (never a benchmark's).
Without it, an older twin of that name is removed: it would not match the new weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint  # noqa: E402
from copyscan.models.runtime import int8_twin_path  # noqa: E402

LICENCE = "Apache-2.0 (Lite0 ImageNet start: Apache-2.0; distilled from SSCD, MIT)"


def ship(source: str, name: str, input_size: int | None = None, description: str | None = None,
         weights_dir: str | os.PathLike = ROOT / "copyscan" / "weights", fold_background: str | None = None,
         whiten: float = 0.0, fold_images: int = 5000, dims: int | None = None, threshold: float | None = None,
         int8_calibration: str | None = None, calibration_images: int = 256) -> Path:
    from copyscan.train.data import list_images, plain_batches
    from copyscan.train.student import fold_centring

    config = read_config(source)
    net = load_checkpoint(source, "cpu").net  # checked against its config, in float32
    config = dict(config, name=name, license=LICENCE)
    if input_size:
        config["input_size"] = int(input_size)
    if dims and not fold_background:
        raise SystemExit("--dims needs --fold-background: the axes are the background's")
    if fold_background:
        batches = plain_batches(fold_background, list_images(fold_background), int(config["input_size"]), fold_images)
        info = fold_centring(net, batches, config["mean"], config["std"], torch.device("cpu"), whiten, dims)
        config["embed_dim"] = net.out_dim
        config["folded_background"] = {"folder": os.path.basename(os.path.abspath(fold_background)), **info}
    if threshold is not None:  # calibrated on photos that are not the benchmark's (`copyscan calibrate`)
        config["threshold"] = float(threshold)
    dim = config["embed_dim"] or config["feature_dim"]
    config["description"] = description or (
        f"copyscan's copy detector: EfficientNet-Lite0 distilled from SSCD (RDCD), {dim}-d, {config['input_size']} px")
    os.makedirs(weights_dir, exist_ok=True)
    target = Path(weights_dir) / f"{name}.safetensors"
    save_checkpoint(net, config, target, half=True)
    twin = Path(int8_twin_path(str(target)))
    if int8_calibration:
        from copyscan.export import export_onnx

        export_onnx(target, twin, int8=True, calibration=int8_calibration, calibration_images=calibration_images)
    elif twin.exists():
        twin.unlink()
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("name")
    ap.add_argument("--input-size", type=int)
    ap.add_argument("--description")
    ap.add_argument("--fold-background", help="Folder of photos (not the benchmark's) whose mean is folded into the projector.")
    ap.add_argument("--whiten", type=float, default=0.0, help="0: centre only; 1: full PCA whitening; between: partial.")
    ap.add_argument("--fold-images", type=int, default=5000)
    ap.add_argument("--dims", type=int, help="Keep only the strongest principal axes of the background (needs --fold-background).")
    ap.add_argument("--weights-dir", default=str(ROOT / "copyscan" / "weights"))
    ap.add_argument("--threshold", type=float, help="The model's default cosine threshold for query and dedupe "
                    "(from `copyscan calibrate` on photos outside the benchmarks).")
    ap.add_argument("--int8-calibration", help="Folder of photos (not the benchmark's) to calibrate the int8 ONNX twin on.")
    ap.add_argument("--calibration-images", type=int, default=256)
    args = ap.parse_args()
    target = ship(args.checkpoint, args.name, args.input_size, args.description, args.weights_dir,
                  args.fold_background, args.whiten, args.fold_images, args.dims, args.threshold,
                  args.int8_calibration, args.calibration_images)
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    with torch.no_grad():
        main()
