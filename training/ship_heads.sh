#!/bin/bash
# Ship the heads fit_heads.py wrote to DIR (head_64/128/256.safetensors, float32 trunk + head):
# fold the background's centring and half whitening into each head (ship_model.py), calibrate each
# model on 300 imagenette-val photos, write the lowest threshold with precision 0.999 (rounded up to
# 0.01) into its header, and score it on the hard and plain dev benchmarks (BENCHMARKS.md).
#
#   training/ship_heads.sh DIR [DATA (../shared/data)] [BENCH (bench: hard-mini, disc-mini)]
#
# Writes DIR/ship/copyscan_lite0_DIM.safetensors (copy them into copyscan/weights/ to ship),
# DIR/calib_DIM.txt, DIR/hard_DIM.txt, DIR/plain_DIM.txt.
set -euxo pipefail
D=$1
DATA=${2:-../shared/data}
BENCH=${3:-bench}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$D/ship"
for d in 128 64 256; do
  [ -f "$D/ship/copyscan_lite0_$d.safetensors" ] || $PY training/ship_model.py "$D/head_$d.safetensors" copyscan_lite0_$d \
      --fold-background "$DATA/imagenette-train" --whiten 0.5 --fold-images 2000 --weights-dir "$D/ship" >> "$D/ship.log" 2>&1
  $PY -m copyscan calibrate "$DATA/imagenette-val" --sample 300 -p 0.999 -p 0.99 \
      --model "$D/ship/copyscan_lite0_$d.safetensors" -o "$D/calib-$d" -q > "$D/calib_$d.txt" 2>&1
  $PY - "$D/ship/copyscan_lite0_$d.safetensors" "$D/calib-$d/calibration.json" <<'PYEOF'
import json, math, sys
import torch
from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint
path, calibration = sys.argv[1], json.load(open(sys.argv[2]))
t = next(p for p in calibration["points"] if p["target_precision"] == 0.999)["threshold"]
t = math.ceil(t * 100) / 100
with torch.no_grad():
    save_checkpoint(load_checkpoint(path, "cpu").net, dict(read_config(path), threshold=t), path, half=True)
print(path, "threshold", t)
PYEOF
done
for d in 128 64 256; do
  $PY benchmarks/copy_detection.py "$BENCH/hard-mini" "$DATA/imagenette-train" --no-post --rank1-by-first-edit \
      --models "$D/ship/copyscan_lite0_$d.safetensors" --work "$D/work-hard-$d" > "$D/hard_$d.txt" 2>&1
  $PY benchmarks/copy_detection.py "$BENCH/disc-mini" "$DATA/imagenette-train" --no-post \
      --models "$D/ship/copyscan_lite0_$d.safetensors" --work "$D/work-plain-$d" > "$D/plain_$d.txt" 2>&1
done
