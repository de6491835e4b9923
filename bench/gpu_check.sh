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
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"
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
