"""The fused C++ CPU backend ("cpu") of both operators: csrc/cpu/, reached as torch.ops.rja.cpu_*.

- the paper's form, "recursive_joint_attention": `rja::cpu_rja_forward` / `cpu_rja_backward`
  (csrc/cpu/paper_cpu.cpp);
- the JCA form, "joint_cross_attention": `rja::cpu_jca_forward` / `cpu_jca_backward`
  (csrc/cpu/jca_cpu.cpp).

Registers itself in the backend registry whether or not the extension is built; when it is not,
`unsupported` says why, so backend="cpu" fails with the reason and "auto" falls back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

try:
    import rja_kernels._C  # noqa: F401  (registers torch.ops.rja.cpu_*)

    _IMPORT_ERROR: str | None = None
except ImportError as err:
    _IMPORT_ERROR = f"the C++ extension rja_kernels._C is not built or does not load ({err})"

DTYPES = (torch.float32, torch.float64)


def _contiguous(tensors) -> list[Tensor]:
    return [t.contiguous() for t in tensors]


def paper_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int,
                  h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the paper's form in one C++ call: outputs and every iteration's input features."""
    return torch.ops.rja.cpu_rja_forward(*_contiguous((xa, xv, *weights)), iterations, h_tanh, out_relu)


def paper_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
                   weights: tuple[Tensor, ...], h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, ...]:
    """Grads of (xa, xv, *weights), recomputing each iteration's tiles from its saved features."""
    return tuple(torch.ops.rja.cpu_rja_backward(
        *_contiguous((grad_xa, grad_xv, xa_iters, xv_iters, *weights)), h_tanh, out_relu))


def jca_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the JCA form in one C++ call."""
    return torch.ops.rja.cpu_jca_forward(*_contiguous((xa, xv, *weights)), iterations)


def jca_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
                 weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.ops.rja.cpu_jca_backward(*_contiguous((grad_xa, grad_xv, xa_iters, xv_iters, *weights))))


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device.type != "cpu":
        return f"the cpu backend runs CPU tensors only, got device {device}"
    if dtype not in DTYPES:
        return f"the cpu backend supports {', '.join(map(str, DTYPES))}, got {dtype}"
    return None


register_backend(Backend("cpu", "recursive_joint_attention", paper_forward, paper_backward, unsupported))
register_backend(Backend("cpu", "joint_cross_attention", jca_forward, jca_backward, unsupported))
