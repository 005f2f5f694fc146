// Entry points of the CPU kernels, registered as torch.ops.rja.cpu_* in ops.cpp.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/core/Tensor.h>
#pragma GCC diagnostic pop

#include <tuple>
#include <vector>

namespace rja_cpu {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The paper's form (docs/SPEC.md section 1), paper_cpu.cpp: (xa_T, xv_T, xa_iters, xv_iters).
Forward cpu_rja_forward(const at::Tensor& xa, const at::Tensor& xv, const at::Tensor& w_ja,
                        const at::Tensor& w_jv, const at::Tensor& w_ca, const at::Tensor& w_cv,
                        const at::Tensor& w_ha, const at::Tensor& w_hv, int64_t iterations, bool h_tanh,
                        bool out_relu);
// Grads of (xa, xv, w_ja, w_jv, w_ca, w_cv, w_ha, w_hv).
std::vector<at::Tensor> cpu_rja_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                         const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                         const at::Tensor& w_ja, const at::Tensor& w_jv,
                                         const at::Tensor& w_ca, const at::Tensor& w_cv,
                                         const at::Tensor& w_ha, const at::Tensor& w_hv, bool h_tanh,
                                         bool out_relu);

// The JCA form (docs/SPEC.md section 2), jca_cpu.cpp.
Forward cpu_jca_forward(const at::Tensor& xa, const at::Tensor& xv, const at::Tensor& w_ja,
                        const at::Tensor& w_jv, const at::Tensor& w_a, const at::Tensor& w_v,
                        const at::Tensor& w_ca, const at::Tensor& w_cv, const at::Tensor& w_ha,
                        const at::Tensor& w_hv, int64_t iterations);
std::vector<at::Tensor> cpu_jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                         const at::Tensor& xa_iters, const at::Tensor& xv_iters,
                                         const at::Tensor& w_ja, const at::Tensor& w_jv,
                                         const at::Tensor& w_a, const at::Tensor& w_v,
                                         const at::Tensor& w_ca, const at::Tensor& w_cv,
                                         const at::Tensor& w_ha, const at::Tensor& w_hv);

}  // namespace rja_cpu
