#!/usr/bin/env bash
# Everything a session with a borrowed GPU should run, in one go (it has minutes, not hours):
#   1. the GPU tests (pytest -m gpu: CUDA vs CPU model / tokenizers / masks, pre-training in
#      fp32, bf16 and fp16-with-GradScaler on CUDA),
#   2. the pre-training step benchmark of issue 5 on the GPU: small preset (T = 5, 16 x 16
#      tokens) at the benchmark's 4 clips and at 32 clips, fp32 and bf16; large-half at 4 and 16
#      clips in bf16; last, small at 4 clips with torch.compile. The paper's V100 reference is
#      32 clips/s (small).
# Logs go to $OUT (the device tool's folder that comes back) or ./gpu_out.
#
#   bash bench/gpu_check.sh                          # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh       # a 1-minute dry run of the script itself on CPU
#
# Needs torch, numpy, safetensors, tqdm, pytest (the device image has them); vimpac is imported
# from this checkout, not installed. PyAV is not needed: only test files with GPU tests are
# collected. Wheels carried in .whl/ are installed first (see /work/.library/device/README.md).
# The python is $PYTHON, else the first of .venv/bin/python and python3 whose torch sees CUDA (the
# .venv's torch is a CPU build; the device image's python3 has the CUDA one); with none it stops at once.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
sees_device() {  # python: its torch can run on $DEVICE
    [ "${DEVICE%%:*}" != cuda ] || "$1" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null
}
# The repository's .venv holds a CPU-only torch (torch 2.13+cpu from the Makefile): on a GPU machine
# where it was carried along, the python3 with the CUDA build is taken instead.
if [ -z "${PYTHON:-}" ]; then
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null && sees_device "$candidate"; then PYTHON=$candidate; break; fi
    done
fi
if [ -z "${PYTHON:-}" ] || ! sees_device "$PYTHON"; then
    # Stop now: the GPU tests would all skip (pytest exits 0) and every benchmark would fail.
    echo "gpu_check: no python here whose torch sees a CUDA device (tried ${PYTHON:-.venv/bin/python, python3}); on" \
         "the GPU machine run it with the python3 that holds the CUDA build of torch (PYTHON=...), or pass DEVICE=cpu" \
         | tee "$OUT/machine.txt" >&2
    exit 1
fi
# The device tool stops a command after 10 minutes: finish inside BUDGET_SECONDS (default 540 s),
# each benchmark bounded by BENCH_SECONDS and by what is left, so a hang loses only itself.
deadline=$((SECONDS + ${BUDGET_SECONDS:-540}))
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
status=0

{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
    2>&1 | tee "$OUT/machine.txt"

gpu_test_files=$(grep -rl "pytest.mark.gpu" tests --include="test_*.py" | sort)
# shellcheck disable=SC2086
timeout 240 "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider $gpu_test_files 2>&1 | tee "$OUT/gpu_tests.log" \
    || status=1

bench() {  # name, then bench_pretrain_step.py arguments
    local name=$1; shift
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 30 ]; then echo "skipped $name: time budget spent" | tee "$OUT/step_$name.log"; status=1; return; fi
    timeout "$(( left < BENCH_SECONDS ? left : BENCH_SECONDS ))" "$PYTHON" bench/bench_pretrain_step.py \
        --device "$DEVICE" --matmul-seconds "$MATMUL_SECONDS" "$@" 2>&1 | tee "$OUT/step_$name.log" || status=1
}
if [ "${QUICK:-0}" = 1 ]; then   # the script's own dry run: tiny model, one timed step
    MATMUL_SECONDS=0.1 BENCH_SECONDS=300
    bench quick --preset tiny --iters 1 --variants eager --optimizers fused --no-loss-check
else
    # Most wanted first: eager small, large-half, then torch.compile (minutes of compilation).
    MATMUL_SECONDS=0.5 BENCH_SECONDS=240
    bench small_4clips --preset small --videos 2 --iters 20 --optimizers fused
    bench small_32clips --preset small --videos 16 --iters 10 --optimizers fused --no-loss-check
    bench large_half --preset large-half --videos 2 --iters 10 --precisions bf16 --optimizers fused --no-loss-check
    bench large_half_16clips --preset large-half --videos 8 --iters 5 --precisions bf16 --optimizers fused \
        --no-loss-check
    bench small_4clips_compile --preset small --videos 2 --iters 20 --variants compile --optimizers fused \
        --no-loss-check
fi
echo "gpu_check: exit status $status (logs in $OUT)"
exit $status
