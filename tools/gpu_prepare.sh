#!/bin/bash
# Here (network to package registries), before the GPU runs: put what the GPU machine cannot
# fetch into git-ignored folders that device runs carry: the ORT headers (.gpu/ort-include),
# pytest's wheels (.whl), and onnxruntime-gpu in five parts (../shared/gpu/prepare-ort-gpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# (.gitignore ignores /.gpu/ and /.whl/)
bash ../shared/gpu/prepare-ort-gpu.sh
if [ ! -f runtime_ops/build/ort-headers/x/usr/include/onnxruntime/onnxruntime_c_api.h ]; then
  cmake -S runtime_ops -B runtime_ops/build -DOCO_CUDA=OFF > /dev/null
fi
rm -rf .gpu/ort-include && cp -r runtime_ops/build/ort-headers/x/usr/include/onnxruntime .gpu/ort-include
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 2>/dev/null
du -sh .gpu/ort-include .whl .gpu/ort/p5
