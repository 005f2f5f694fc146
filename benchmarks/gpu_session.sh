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
# implementation but max-autotune (whose autotuning takes minutes per shape). The whole session
# keeps within RJA_GPU_SESSION_SECONDS (570: the call's 600 less the copy of $OUT back): a stage's
# deadline is its own or what is left, whichever is less, and a stage with under 10 s left is
# skipped. The benchmark writes one JSON per pass (forward, forward+backward, peak memory), so a
# stage cut short keeps the passes it finished; every log is under $OUT as it is written.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SESSION_SECONDS=${RJA_GPU_SESSION_SECONDS:-570}

stage() {  # stage NAME SECONDS CMD...: run with a deadline, log to $OUT/NAME.log, report its time
  local name=$1 limit=$2 start=$SECONDS rc left
  shift 2
  left=$((SESSION_SECONDS - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "$name: skipped, ${left} s of the session left" | tee -a "$OUT/summary.txt"
    return 124
  fi
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $((SECONDS - start)) s (deadline $limit s)" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
  return "$rc"
}

benchmark() {  # benchmark NAME SECONDS SELECTION: the GPU benchmark's three passes, a JSON each
  local name=$1 limit=$2 selection=$3 pass select=()
  [ -n "$selection" ] && select=(-k "$selection")
  for pass in forward forward_backward peak_memory; do
    stage "$name-$pass" "$limit" "$PY" -P -m pytest -q -p no:cacheprovider -s \
      "benchmarks/test_bench_gpu.py::test_$pass" --benchmark-only --benchmark-json="$OUT/$name-$pass.json" \
      --benchmark-columns=median,min,max,rounds "${select[@]}"
  done
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
benchmark bench_gpu "${RJA_GPU_BENCH_SECONDS:-200}" "${RJA_GPU_BENCH_K-paper-form-paper and not max-autotune}"
# RJA_GPU_SPLIT_AB=1: the paper form's kernels again with one program (block) per sample
# (RJA_TRITON_SPLIT=1, RJA_CUDA_SPLIT=1), against the splits chosen in the run above;
# RJA_GPU_SPLIT_AB_K selects other benchmarks (the JCA form's: "jca-form-paper and ...").
if [ "${RJA_GPU_SPLIT_AB:-0}" = 1 ]; then
  RJA_TRITON_SPLIT=1 RJA_CUDA_SPLIT=1 benchmark bench_gpu_split1 "${RJA_GPU_SPLIT_AB_SECONDS:-60}" \
    "${RJA_GPU_SPLIT_AB_K:-paper-form-paper and (cuda or triton) and not compile and not eager}"
fi
# RJA_GPU_CORES_AB=1: the CUDA C++ kernels again with every pass on CUDA cores (RJA_CUDA_TENSOR_CORES=0),
# against their tensor-core paths in the run above; RJA_GPU_CORES_AB_K selects other benchmarks.
if [ "${RJA_GPU_CORES_AB:-0}" = 1 ]; then
  RJA_CUDA_TENSOR_CORES=0 benchmark bench_gpu_cuda_cores "${RJA_GPU_CORES_AB_SECONDS:-40}" \
    "${RJA_GPU_CORES_AB_K:-paper-form-paper and cuda and not compile and not eager}"
fi
cat "$OUT/summary.txt"
