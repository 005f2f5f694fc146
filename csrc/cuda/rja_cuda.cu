// The CUDA kernels of the operator as torch ops rja::cuda_forward / rja::cuda_backward (CUDA
// dispatch key); rja_kernels/cuda.py registers them as backend "cuda".
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host.h"

namespace {

std::vector<at::Tensor> cuda_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                     int64_t iterations) {
  const c10::cuda::CUDAGuard guard(xa.device());
  return rja::forward(xa, xv, weights, iterations, rja::Config{});
}

std::vector<at::Tensor> cuda_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                      const at::Tensor& xv_iters, at::TensorList weights) {
  const c10::cuda::CUDAGuard guard(xa_iters.device());
  return rja::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, rja::Config{});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rja, m) {
  m.def("cuda_forward(Tensor xa, Tensor xv, Tensor[] weights, int iterations) -> Tensor[]");
  m.def("cuda_backward(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, Tensor[] weights) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rja, CUDA, m) {
  m.impl("cuda_forward", &cuda_forward);
  m.impl("cuda_backward", &cuda_backward);
}
