"""The CUDA C++ backend: the fused kernels of csrc/cuda (torch ops rja::cuda_forward and
rja::cuda_backward of the extension rja_kernels._C_cuda), one launch per pass for all iterations."""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

try:
    from rja_kernels import _C_cuda  # noqa: F401  (registers torch.ops.rja.cuda_*)

    _IMPORT_ERROR: ImportError | None = None
except ImportError as err:
    _IMPORT_ERROR = err

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out = torch.ops.rja.cuda_forward(xa.contiguous(), xv.contiguous(), [w.contiguous() for w in weights], iterations)
    return tuple(out)


def backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor, weights: tuple[Tensor, ...]
             ) -> tuple[Tensor, ...]:
    return tuple(torch.ops.rja.cuda_backward(
        grad_xa.contiguous(), grad_xv.contiguous(), xa_iters.contiguous(), xv_iters.contiguous(),
        [w.contiguous() for w in weights]))


def _unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    if _IMPORT_ERROR is not None:
        return f"the CUDA extension rja_kernels._C_cuda is not built: {_IMPORT_ERROR}"
    if device.type != "cuda":
        return "the cuda backend needs CUDA tensors; on CPU use backend='cpu' or 'reference'"
    if dtype not in SUPPORTED_DTYPES:
        return f"the cuda backend supports float32, float16 and bfloat16, not {dtype}"
    return None


register_backend(Backend("cuda", "joint_cross_attention", forward, backward, _unsupported))
