// rja_kernels._C_cuda_emu: the CUDA kernels of csrc/cuda (both operators) compiled by the host
// compiler against the emulator (emu.h), for CPU tensors, plus small kernels that test the emulator
// itself. The "cuda" backend (rja_kernels/cuda.py) runs CPU tensors through it when
// RJA_CUDA_EMULATE=1; it is test support, slow by design.
#include <torch/extension.h>

#define RJA_EMULATE
#include "../cuda/host.h"

namespace {

using rja::Ptr;

rja::Config config(int64_t threads, int64_t rows, int64_t cols) { return {int(threads), int(rows), int(cols)}; }

std::vector<at::Tensor> paper_forward(const at::Tensor& xa, const at::Tensor& xv, const std::vector<at::Tensor>& weights,
                                      int64_t iterations, bool h_tanh, bool out_relu, int64_t threads, int64_t rows,
                                      int64_t cols) {
  return rja::paper::forward(xa, xv, weights, iterations, h_tanh, out_relu, config(threads, rows, cols));
}

std::vector<at::Tensor> paper_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                       const at::Tensor& xv_iters, const std::vector<at::Tensor>& weights, bool h_tanh,
                                       bool out_relu, int64_t threads, int64_t rows, int64_t cols) {
  return rja::paper::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, h_tanh, out_relu,
                              config(threads, rows, cols));
}

std::vector<at::Tensor> jca_forward(const at::Tensor& xa, const at::Tensor& xv, const std::vector<at::Tensor>& weights,
                                    int64_t iterations, int64_t threads, int64_t rows, int64_t cols) {
  return rja::jca::forward(xa, xv, weights, iterations, config(threads, rows, cols));
}

std::vector<at::Tensor> jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                     const at::Tensor& xv_iters, const std::vector<at::Tensor>& weights, int64_t threads,
                                     int64_t rows, int64_t cols) {
  return rja::jca::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, config(threads, rows, cols));
}

// --- kernels that test the emulator ---

// Each thread writes out[threadIdx.x]; launched with more threads than out has elements.
__global__ void write_per_thread_kernel(Ptr<float> out) { out[threadIdx.x] = float(threadIdx.x); }

// mode 0: only the first half of the block reaches the barrier; mode 1: the halves wait at
// different barriers.
__global__ void divergent_barrier_kernel(Ptr<float> out, int mode) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  } else if (mode == 1) {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Sum of `in`: warps reduce with __shfl_down_sync, warp totals meet in static shared memory, warp 0
// reduces them with __shfl_xor_sync, block totals meet in `total` through atomicAdd.
__global__ void block_sum_kernel(Ptr<const float> in, int n, Ptr<float> per_block, Ptr<float> total) {
  RJA_STATIC_SHARED(float, warp_sums, 32);
  __shared__ int warps;  // the plain (unchecked) form of static shared memory
  if (threadIdx.x == 0) warps = int(blockDim.x / 32);
  float v = 0.f;
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += int(gridDim.x * blockDim.x)) v += in[i];
  for (unsigned offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? warp_sums[lane] : 0.f;
    for (int mask = 16; mask > 0; mask /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, mask);
    if (lane == 0) {
      per_block[blockIdx.x] = s;
      atomicAdd(&total[0], s);
    }
  }
}

template <class K>
__global__ void round_trip_kernel(Ptr<const float> in, Ptr<float> out, int n) {
  RJA_BLOCK_LOOP(i, n) out[i] = rja::to_float(rja::from_float<K>(in[i]));
}

template <class T>
Ptr<T> view(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, name, " must be a contiguous float32 tensor");
  return rja::make_ptr(reinterpret_cast<T*>(t.data_ptr()), t.numel(), name);
}

void write_per_thread(const at::Tensor& out, int64_t threads) {
  rja::launch(write_per_thread_kernel, 1, int(threads), 0, view<float>(out, "out"));
}

void divergent_barrier(int64_t mode) {
  const at::Tensor out = at::zeros({64});
  rja::launch(divergent_barrier_kernel, 1, 64, 0, view<float>(out, "out"), int(mode));
}

// Returns (per-block sums, total).
std::vector<at::Tensor> block_sum(const at::Tensor& in, int64_t blocks, int64_t threads) {
  auto per_block = at::zeros({blocks}), total = at::zeros({1});
  rja::launch(block_sum_kernel, int(blocks), int(threads), 0, view<const float>(in, "in"), int(in.numel()),
              view<float>(per_block, "per_block"), view<float>(total, "total"));
  return {per_block, total};
}

// float32 -> dtype -> float32 through the emulator's 16-bit types.
at::Tensor round_trip(const at::Tensor& in, at::ScalarType dtype) {
  auto out = at::empty_like(in);
  rja::dispatch_element(dtype, [&](auto tag) {
    using K = decltype(tag);
    rja::launch(round_trip_kernel<K>, 1, 64, 0, view<const float>(in, "in"), view<float>(out, "out"), int(in.numel()));
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The rja CUDA kernels executed on CPU by the host CUDA emulator (test support).";
  m.def("paper_forward", &paper_forward, "emulated rja::cuda_paper_forward on CPU tensors");
  m.def("paper_backward", &paper_backward, "emulated rja::cuda_paper_backward on CPU tensors");
  m.def("jca_forward", &jca_forward, "emulated rja::cuda_jca_forward on CPU tensors");
  m.def("jca_backward", &jca_backward, "emulated rja::cuda_jca_backward on CPU tensors");
  m.def("max_shared_bytes", &rja::max_shared_bytes);
  m.def("write_per_thread", &write_per_thread);
  m.def("divergent_barrier", &divergent_barrier);
  m.def("block_sum", &block_sum);
  m.def("round_trip", &round_trip);
}
