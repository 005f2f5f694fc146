// The CUDA kernels of both operators as torch ops (CUDA dispatch key), which rja_kernels/cuda.py
// registers as backend "cuda":
//   rja::cuda_paper_forward / rja::cuda_paper_backward   the paper's form (paper.cuh)
//   rja::cuda_jca_forward / rja::cuda_jca_backward       the JCA form (jca.cuh)
// Their host entry points are in ops.h.
#include <torch/library.h>

#include "ops.h"

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
  m.impl("cuda_paper_forward", &rja::ops::paper_forward);
  m.impl("cuda_paper_backward", &rja::ops::paper_backward);
  m.impl("cuda_jca_forward", &rja::ops::jca_forward);
  m.impl("cuda_jca_backward", &rja::ops::jca_backward);
}
