#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call: build rja against that machine's own torch,
# run the GPU tests, then the GPU benchmark (both operators, eager / torch.compile baselines,
# Triton and CUDA C++), writing every log and the benchmark JSON under $OUT (or ./gpu-results).
#
#   bash benchmarks/gpu_session.sh      # build, GPU tests, paper size without max-autotune
#                                       (device tool: run(command="bash benchmarks/gpu_session.sh", timeout_s=600))
#   RJA_GPU_SKIP_TESTS=1 RJA_GPU_BENCH_K="paper-form-paper and max-autotune" bash benchmarks/gpu_session.sh
#   RJA_GPU_BENCH_K="" bash benchmarks/gpu_session.sh   # all 180 benchmarks (far over 10 minutes)
#   RJA_GPU_SPLIT_AB=1 bash benchmarks/gpu_session.sh   # also Triton and CUDA C++ with one program per sample
#   RJA_GPU_CORES_AB=1 bash benchmarks/gpu_session.sh   # also CUDA C++ with every pass on CUDA cores
#
# Sized for one 10-minute call on an H100/H200 (16 cores): the build for compute capability 9.0
# only (RJA_CUDA_ARCHS), the GPU tests with -x, and by default the paper size with every
# implementation but max-autotune (whose autotuning takes minutes per shape). Every stage has a
# deadline that leaves the later ones their time, and what finished is already under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

stage() {  # stage NAME SECONDS CMD...: run with a deadline, log to $OUT/NAME.log, report its time
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv > "$OUT/summary.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/summary.txt"

# No emulator there: the GPU runs the CUDA kernels themselves.
export RJA_CUDA_ARCHS=${RJA_CUDA_ARCHS:-9.0} RJA_EXTENSIONS=${RJA_EXTENSIONS:-cpu,cuda} MAX_JOBS=${MAX_JOBS:-16}
stage build 300 "$PY" -m pip install --no-build-isolation --no-deps -v . || exit 1
# The installed package, not the checkout (-P): the one whose extensions were just built.
stage extensions 60 "$PY" -P -m rja_kernels.ext_info --require-cuda || exit 1

if [ "${RJA_GPU_SKIP_TESTS:-0}" != 1 ]; then
  # The files that test on the GPU; the rest of the suite needs packages that machine lacks (PyAV).
  stage tests "${RJA_GPU_TEST_SECONDS:-150}" "$PY" -P -m pytest -q -x -p no:cacheprovider \
    tests/test_cuda_gpu.py tests/test_approx_tanh.py tests/test_triton.py tests/test_triton_split.py \
    tests/test_triton_tf32x3.py
fi
select=(-k "${RJA_GPU_BENCH_K-paper-form-paper and not max-autotune}")
[ -z "${select[1]}" ] && select=()
stage benchmark "${RJA_GPU_BENCH_SECONDS:-400}" "$PY" -P -m pytest -q -p no:cacheprovider -s \
  benchmarks/test_bench_gpu.py --benchmark-only --benchmark-json="$OUT/bench_gpu.json" \
  --benchmark-columns=median,min,max,rounds "${select[@]}"
# RJA_GPU_SPLIT_AB=1: the paper form's kernels again with one program (block) per sample
# (RJA_TRITON_SPLIT=1, RJA_CUDA_SPLIT=1), against the splits chosen in the run above;
# RJA_GPU_SPLIT_AB_K selects other benchmarks (the JCA form's: "jca-form-paper and ...").
if [ "${RJA_GPU_SPLIT_AB:-0}" = 1 ]; then
  RJA_TRITON_SPLIT=1 RJA_CUDA_SPLIT=1 stage benchmark-split1 "${RJA_GPU_SPLIT_AB_SECONDS:-150}" "$PY" -P -m pytest \
    -q -p no:cacheprovider -s benchmarks/test_bench_gpu.py --benchmark-only \
    -k "${RJA_GPU_SPLIT_AB_K:-paper-form-paper and (cuda or triton) and not compile and not eager}" \
    --benchmark-json="$OUT/bench_gpu_split1.json" --benchmark-columns=median,min,max,rounds
fi
# RJA_GPU_CORES_AB=1: the CUDA C++ kernels again with every pass on CUDA cores (RJA_CUDA_TENSOR_CORES=0),
# against their tensor-core paths in the run above; RJA_GPU_CORES_AB_K selects other benchmarks.
if [ "${RJA_GPU_CORES_AB:-0}" = 1 ]; then
  RJA_CUDA_TENSOR_CORES=0 stage benchmark-cuda-cores "${RJA_GPU_CORES_AB_SECONDS:-100}" "$PY" -P -m pytest \
    -q -p no:cacheprovider -s benchmarks/test_bench_gpu.py --benchmark-only \
    -k "${RJA_GPU_CORES_AB_K:-paper-form-paper and cuda and not compile and not eager}" \
    --benchmark-json="$OUT/bench_gpu_cuda_cores.json" --benchmark-columns=median,min,max,rounds
fi
cat "$OUT/summary.txt"
