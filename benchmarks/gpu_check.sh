#!/usr/bin/env bash
# The GPU check of lrpflow's cupy backend, in one run of at most ~7 minutes.
#
# On a machine with an NVIDIA GPU whose python3 has cupy, torch, numpy, scipy, h5py, onnx,
# onnxruntime and pytest (no network, no hydra), from the repository root:
#
#   bash benchmarks/make_wheelhouse.sh      # once, beforehand, where pip reaches an index
#   bash benchmarks/gpu_check.sh [OUT_DIR]  # on the GPU machine; OUT_DIR defaults to $OUT
#
# 1. installs lrpflow's wheels and its missing dependencies from benchmarks/wheelhouse
#    (pip --no-index --no-deps --target: never the network; PYTHONPATH points there);
# 2. runs the test suite's `gpu` mark (at most GPU_CHECK_PYTEST_S seconds, default 100);
# 3. runs benchmarks/gpu_check.py (agreement, timing, VGG-16 at batch 64 and 256) with TF32 off,
#    then, if time is left, its timing and VGG phases again with CUPY_TF32=1;
# and leaves OUT_DIR/gpu_check.json (all figures), gpu_check.log and pytest_gpu.xml.
# GPU_CHECK_BUDGET (seconds, default 420) bounds the whole run; every step has a timeout.
# GPU_CHECK_DRY=1: the driver runs with --dry-run (numpy, tiny sizes): checks this script without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-420}
PYTEST_S=${GPU_CHECK_PYTEST_S:-100}
DRY=()
[[ ${GPU_CHECK_DRY:-0} == 1 ]] && DRY=(--dry-run)
export PYTHONUNBUFFERED=1
: > "$LOG"
say() { echo "[gpu_check.sh $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - SECONDS )); }

say "start; budget ${BUDGET}s; out $OUT_DIR"
(command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi) 2>&1 | tee -a "$LOG"

# 1. lrpflow and its missing dependencies, from the carried wheelhouse only
W=${GPU_CHECK_WHEELHOUSE:-benchmarks/wheelhouse}
SITE=${GPU_CHECK_SITE:-/tmp/lrpflow-site}
if ls "$W"/*.whl >/dev/null 2>&1; then
    cat "$W/BUILD_INFO" 2>/dev/null | tee -a "$LOG"
    export GPU_CHECK_COMMIT=$(sed -n 's/^commit=//p' "$W/BUILD_INFO" 2>/dev/null)
    WHEELS=("$W"/*.whl)
    # lrpflow's own wheels afresh from this working tree (setuptools is there), so a wheelhouse built
    # at an older commit cannot measure old code; the carried ones if that fails
    FRESH=/tmp/lrpflow-fresh-wheels
    rm -rf "$FRESH"
    if timeout 120 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index --disable-pip-version-check \
            -w "$FRESH" . plugins/lrpflow-onnx plugins/lrpflow-example >>"$LOG" 2>&1; then
        WHEELS=("$FRESH"/*.whl)
        for f in "$W"/*.whl; do
            case $(basename "$f") in lrpflow-*|lrpflow_*) ;; *) WHEELS+=("$f") ;; esac
        done
        say "lrpflow wheels built from the working tree"
        export GPU_CHECK_COMMIT="${GPU_CHECK_COMMIT:-?} (wheelhouse); lrpflow built from the working tree"
    else
        say "could not build lrpflow's wheels here: installing the carried ones"
    fi
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --upgrade --target "$SITE" "${WHEELS[@]}" 2>&1 | tee -a "$LOG"
    say "pip install from $W: rc ${PIPESTATUS[0]}"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
    say "no wheels in $W (run benchmarks/make_wheelhouse.sh first); using the source tree"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import lrpflow; print('lrpflow', lrpflow.__file__); import cupy; print('cupy', cupy.__version__)" 2>&1 | tee -a "$LOG"

# 2. the test suite's gpu mark
say "pytest -m gpu (at most ${PYTEST_S}s)"
timeout -k 5 "$PYTEST_S" "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT_DIR/pytest_gpu.xml" tests \
    > "$OUT_DIR/pytest_gpu.txt" 2>&1
say "pytest -m gpu: rc $?"
tail -40 "$OUT_DIR/pytest_gpu.txt" | tee -a "$LOG"

# 3. the driver: TF32 off, then (time permitting) timing and VGG with TF32 on
DRIVER_S=$(( $(left) - 75 ))
(( DRIVER_S < 60 )) && DRIVER_S=60
say "gpu_check.py, TF32 off (budget $(( DRIVER_S - 20 ))s)"
env -u CUPY_TF32 timeout -k 10 "$DRIVER_S" "$PY" benchmarks/gpu_check.py "${DRY[@]}" --out "$OUT_DIR" --budget $(( DRIVER_S - 20 )) \
    --pytest-log "$OUT_DIR/pytest_gpu.txt" 2>&1 | tee -a "$LOG"
say "gpu_check.py (fp32): rc ${PIPESTATUS[0]}"
if (( $(left) > 60 )); then
    TF_S=$(( $(left) - 10 ))
    say "gpu_check.py, CUPY_TF32=1 (budget $(( TF_S - 15 ))s)"
    CUPY_TF32=1 timeout -k 10 "$TF_S" "$PY" benchmarks/gpu_check.py "${DRY[@]}" --out "$OUT_DIR" --tf32 --phases env,timing,vgg \
        --budget $(( TF_S - 15 )) 2>&1 | tee -a "$LOG"
    say "gpu_check.py (tf32): rc ${PIPESTATUS[0]}"
fi
say "done: $(ls "$OUT_DIR" | tr '\n' ' ')"
