// The torch.library registrations of the CPU extension: the kernels of both operators
// (paper_cpu.cpp, jca_cpu.cpp) and two test hooks.
#include "common.h"
#include "kernels.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#pragma GCC diagnostic pop

namespace rja_cpu {
namespace {

// Test hook: the kernels' vectorised tanh applied elementwise (tail lanes through masked loads);
// `accurate`: vec_tanh_accurate, the one of the paper form's h_tanh activation.
at::Tensor cpu_tanh(const at::Tensor& x_in, bool accurate) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rja_cpu_tanh", [&] {
    using T = scalar_t;
    const int64_t n = x.numel(), V = kLanes<T>;
    const T* src = x.data_ptr<T>();
    T* dst = y.data_ptr<T>();
    for (int64_t i = 0; i < n; i += V) {
      const int64_t count = std::min(V, n - i);
      const Vec<T> v = Vec<T>::loadu(src + i, count);
      (accurate ? vec_tanh_accurate<T>(v) : vec_tanh<T>(v)).store(dst + i, count);
    }
  });
  return y;
}

// Test hook: the calling thread's MXCSR (0 on targets without one), to check that the kernels
// restore the caller's floating-point environment.
int64_t cpu_mxcsr() { return current_mxcsr(); }

}  // namespace
}  // namespace rja_cpu

TORCH_LIBRARY_FRAGMENT(rja, m) {
  m.def(
      "cpu_rja_forward(Tensor xa, Tensor xv, Tensor w_ja, Tensor w_jv, Tensor w_ca, Tensor w_cv, "
      "Tensor w_ha, Tensor w_hv, int iterations, bool h_tanh, bool out_relu) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cpu_rja_backward(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, "
      "Tensor w_ja, Tensor w_jv, Tensor w_ca, Tensor w_cv, Tensor w_ha, Tensor w_hv, "
      "bool h_tanh, bool out_relu) -> Tensor[]");
  m.def(
      "cpu_jca_forward(Tensor xa, Tensor xv, Tensor w_ja, Tensor w_jv, Tensor w_a, Tensor w_v, "
      "Tensor w_ca, Tensor w_cv, Tensor w_ha, Tensor w_hv, int iterations) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cpu_jca_backward(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, "
      "Tensor w_ja, Tensor w_jv, Tensor w_a, Tensor w_v, Tensor w_ca, Tensor w_cv, "
      "Tensor w_ha, Tensor w_hv) -> Tensor[]");
  m.def("cpu_tanh(Tensor x, bool accurate=False) -> Tensor");
  m.def("cpu_mxcsr() -> int", &rja_cpu::cpu_mxcsr);
}

TORCH_LIBRARY_IMPL(rja, CPU, m) {
  m.impl("cpu_rja_forward", &rja_cpu::cpu_rja_forward);
  m.impl("cpu_rja_backward", &rja_cpu::cpu_rja_backward);
  m.impl("cpu_jca_forward", &rja_cpu::cpu_jca_forward);
  m.impl("cpu_jca_backward", &rja_cpu::cpu_jca_backward);
  m.impl("cpu_tanh", &rja_cpu::cpu_tanh);
}
