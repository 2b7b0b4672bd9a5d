#!/usr/bin/env bash
# The CUDA backend's checks that need a GPU (CI has none). Run from the
# repository root on a machine with an NVIDIA GPU, nvcc, torch and (for the
# comparison) gsplat 1.5.x importable; writes the logs and the benchmark
# results under ${OUT:-gpu_validation}.
#   1. the backend tests (forward and gradients against the torch reference and
#      the CPU backend, edge cases), cuda parameters included;
#   2. compute-sanitizer memcheck, racecheck and synccheck on forward and backward passes;
#   3. bench/rasterize.py side by side with gsplat: garden, 1M and 5M random
#      Gaussians at 1080p, forward and forward+backward ms and peak memory;
#   4. the multi-process trainer's NCCL path on the one GPU (torchrun, 1 process):
#      the default scene for 300 steps, against the plain one-process run;
#   5. the fused L1 + D-SSIM loss and the fused Adam step on the GPU against their
#      torch versions (values, gradients, speed: bench/fused_loss.py, bench/fused_adam.py).
#
# gsplat on a machine without internet (such as this project's lent GPU
# machines): here, `echo /.whl/ >> .git/info/exclude; python3 -m pip download
# --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
# --platform manylinux_2_28_x86_64 -d .whl gsplat==1.5.3` (a 6.5 MB pure-Python
# wheel; its CUDA code is compiled by torch on first use, which needs ninja and
# takes minutes, outside the timings); there, carry .whl and first run
# `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
# export PYTHONPATH=/tmp/site`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_validation}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import splat.backends.cuda as c, time; t = time.time(); c.load(); print(f'CUDA build {time.time() - t:.1f} s')" \
    2>&1 | tee "$OUT/build.log" || status=1
python3 -m pytest -q -rs tests/test_backends.py tests/test_edge_cases.py tests/test_cuda_build.py tests/test_raytrace.py \
    tests/test_fused_loss.py tests/test_fused_adam.py 2>&1 \
    | tee "$OUT/tests.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 99 \
        python3 scripts/cuda_smoke.py --n 1500 2>&1 | tee "$OUT/sanitizer_$tool.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
python3 bench/rasterize.py --device cuda --scenes garden 1M 5M --size 1920x1080 --repeats 20 \
    --json "$OUT/results_rasterize_cuda.json" 2>&1 | tee "$OUT/bench.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
python3 bench/raytrace.py --device cuda --scenes garden random_100k --repeats 10 \
    --json "$OUT/results_raytrace_cuda.json" 2>&1 | tee "$OUT/bench_raytrace.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
for launch in plain nccl; do
    if [ "$launch" = plain ]; then cmd=(python3 -m splat.train); else cmd=(torchrun --standalone --nproc-per-node=1 -m splat.train); fi
    "${cmd[@]}" --device cuda --iterations 300 --no-progress --save-renders 0 --out "$OUT/train_$launch" 2>&1 \
        | tee "$OUT/train_$launch.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
python3 bench/fused_loss.py --device cuda --repeats 50 --json "$OUT/results_fused_loss_cuda.json" 2>&1 \
    | tee "$OUT/bench_fused_loss.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
python3 bench/fused_adam.py --device cuda --counts 1000000 5000000 --repeats 20 \
    --json "$OUT/results_fused_adam_cuda.json" 2>&1 | tee "$OUT/bench_fused_adam.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "gpu_validate: exit $status"
exit $status
