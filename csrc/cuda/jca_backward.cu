// rja::ops::jca_backward (ops.h): the JCA form's backward kernels, a translation unit of their own.
#include <c10/cuda/CUDAGuard.h>

#include "host.h"
#include "ops.h"

std::vector<at::Tensor> rja::ops::jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                               const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                               at::TensorList weights) {
  const c10::cuda::CUDAGuard guard(xa_iters.device());
  return jca::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, Config{});
}
