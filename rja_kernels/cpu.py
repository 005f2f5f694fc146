"""The fused C++ CPU backend ("cpu"): csrc/cpu/rja_cpu.cpp, reached as torch.ops.rja.cpu_*.

Registers itself in the backend registry whether or not the extension is built; when it is not,
`unsupported` says why, so backend="cpu" fails with the reason and "auto" falls back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

try:
    import rja_kernels._C  # noqa: F401  (registers torch.ops.rja.cpu_forward / cpu_backward)

    _IMPORT_ERROR: str | None = None
except ImportError as err:
    _IMPORT_ERROR = f"the C++ extension rja_kernels._C is not built or does not load ({err})"

DTYPES = (torch.float32, torch.float64)


def forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` in one C++ call: outputs and the input features of every iteration."""
    return torch.ops.rja.cpu_forward(xa.contiguous(), xv.contiguous(),
                                     *(w.contiguous() for w in weights), iterations)


def backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
             weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Grads of (xa, xv, *weights), recomputing each iteration's tiles from its saved features."""
    return tuple(torch.ops.rja.cpu_backward(
        grad_xa.contiguous(), grad_xv.contiguous(), xa_iters.contiguous(), xv_iters.contiguous(),
        *(w.contiguous() for w in weights)))


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device.type != "cpu":
        return f"the cpu backend runs CPU tensors only, got device {device}"
    if dtype not in DTYPES:
        return f"the cpu backend supports {', '.join(map(str, DTYPES))}, got {dtype}"
    return None


register_backend(Backend("cpu", "joint_cross_attention", forward, backward, unsupported))
