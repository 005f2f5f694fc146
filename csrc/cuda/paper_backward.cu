// rja::ops::paper_backward (ops.h): the paper form's backward kernels, a translation unit of their own.
#include <c10/cuda/CUDAGuard.h>

#include "host.h"
#include "ops.h"

std::vector<at::Tensor> rja::ops::paper_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                                 const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                                 at::TensorList weights, bool h_tanh, bool out_relu) {
  const c10::cuda::CUDAGuard guard(xa_iters.device());
  return paper::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, h_tanh, out_relu, Config{});
}
