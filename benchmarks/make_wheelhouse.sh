#!/usr/bin/env bash
# Build the wheelhouse that benchmarks/gpu_check.sh installs from on the GPU machine.
#
# The GPU machine has python3 3.12 (x86-64) with cupy, torch, numpy, scipy, h5py, pandas,
# scikit-image, matplotlib, imageio, pillow, pluggy, threadpoolctl, onnx, onnxruntime and
# pytest, but no hydra-core/omegaconf, and it cannot reach a package index. This script puts
# lrpflow's own wheels (core and the first-party plugins) and the few missing dependencies
# into benchmarks/wheelhouse/ (git-ignored, about 2 MB; carry it with the device run):
#
#   bash benchmarks/make_wheelhouse.sh            # from the repository root, with network
#
# Pure-Python dependencies are built/downloaded as py3 wheels; mat-io has compiled code and is
# downloaded for CPython 3.12 on manylinux x86-64. Versions are pinned to the ones the test
# suite runs with here. zennit (pure Python) is the optional LRP reference for the VGG-16 row.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
W=${1:-$here/wheelhouse}
PY=${PYTHON:-python3}
GPU_PY=${GPU_PYTHON_VERSION:-3.12}

rm -rf "$W"
mkdir -p "$W"
# lrpflow and the first-party plugins the test suite imports
"$PY" -m pip wheel -q --no-deps -w "$W" "$repo" "$repo/plugins/lrpflow-onnx" "$repo/plugins/lrpflow-example"
# pure-Python dependencies the GPU machine lacks
"$PY" -m pip wheel -q --no-deps -w "$W" \
    hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 zennit==0.5.1
# compiled dependency: the GPU machine's interpreter and platform
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$W" mat-io==1.0.2
{
    echo "commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty=$(git -C "$repo" status --porcelain -- lrpflow plugins 2>/dev/null | wc -l | tr -d ' ')"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$W/BUILD_INFO"
ls -l "$W"
du -sh "$W"
