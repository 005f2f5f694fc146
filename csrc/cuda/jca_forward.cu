// rja::ops::jca_forward (ops.h): the JCA form's forward kernels, a translation unit of their own.
#include <c10/cuda/CUDAGuard.h>

#include "host.h"
#include "ops.h"

std::vector<at::Tensor> rja::ops::jca_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                              int64_t iterations) {
  const c10::cuda::CUDAGuard guard(xa.device());
  return jca::forward(xa, xv, weights, iterations, Config{});
}
