// The host entry points of the CUDA kernels, which ops.cpp registers as torch ops. Each is defined in
// a translation unit of its own (paper_forward.cu, paper_backward.cu, jca_forward.cu,
// jca_backward.cu), so that the build compiles the kernels of the four passes in parallel.
#pragma once

#include <torch/types.h>

#include <vector>

namespace rja::ops {

std::vector<at::Tensor> paper_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                      int64_t iterations, bool h_tanh, bool out_relu);
std::vector<at::Tensor> paper_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                       const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                       at::TensorList weights, bool h_tanh, bool out_relu);
std::vector<at::Tensor> jca_forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList weights,
                                    int64_t iterations);
std::vector<at::Tensor> jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                     const at::Tensor& xv_iters, at::TensorList weights);

}  // namespace rja::ops
