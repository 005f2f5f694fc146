// rja::ops::paper_forward (ops.h): the paper form's forward kernels, a translation unit of their own.
#include <c10/cuda/CUDAGuard.h>

#include "host.h"
#include "ops.h"

std::vector<at::Tensor> rja::ops::paper_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                                int64_t iterations, bool h_tanh, bool out_relu) {
  const c10::cuda::CUDAGuard guard(xa.device());
  return paper::forward(xa, xv, weights, iterations, h_tanh, out_relu, Config{});
}
