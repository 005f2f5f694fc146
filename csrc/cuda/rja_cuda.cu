// The CUDA kernels of both operators as torch ops (CUDA dispatch key), which rja_kernels/cuda.py
// registers as backend "cuda":
//   rja::cuda_paper_forward / rja::cuda_paper_backward   the paper's form (paper.cuh)
//   rja::cuda_jca_forward / rja::cuda_jca_backward       the JCA form (jca.cuh)
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host.h"

namespace {

std::vector<at::Tensor> cuda_paper_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                           int64_t iterations, bool h_tanh, bool out_relu) {
  const c10::cuda::CUDAGuard guard(xa.device());
  return rja::paper::forward(xa, xv, weights, iterations, h_tanh, out_relu, rja::Config{});
}

std::vector<at::Tensor> cuda_paper_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                            const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                            at::TensorList weights, bool h_tanh, bool out_relu) {
  const c10::cuda::CUDAGuard guard(xa_iters.device());
  return rja::paper::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, h_tanh, out_relu, rja::Config{});
}

std::vector<at::Tensor> cuda_jca_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                         int64_t iterations) {
  const c10::cuda::CUDAGuard guard(xa.device());
  return rja::jca::forward(xa, xv, weights, iterations, rja::Config{});
}

std::vector<at::Tensor> cuda_jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                          const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                          at::TensorList weights) {
  const c10::cuda::CUDAGuard guard(xa_iters.device());
  return rja::jca::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, rja::Config{});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rja, m) {
  m.def("cuda_paper_forward(Tensor xa, Tensor xv, Tensor[] weights, int iterations, bool h_tanh, bool out_relu)"
        " -> Tensor[]");
  m.def("cuda_paper_backward(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, Tensor[] weights, "
        "bool h_tanh, bool out_relu) -> Tensor[]");
  m.def("cuda_jca_forward(Tensor xa, Tensor xv, Tensor[] weights, int iterations) -> Tensor[]");
  m.def("cuda_jca_backward(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, Tensor[] weights)"
        " -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rja, CUDA, m) {
  m.impl("cuda_paper_forward", &cuda_paper_forward);
  m.impl("cuda_paper_backward", &cuda_paper_backward);
  m.impl("cuda_jca_forward", &cuda_jca_forward);
  m.impl("cuda_jca_backward", &cuda_jca_backward);
}
