"""The "triton" backend: fused Triton kernels (forward: one launch for all iterations; backward:
one launch plus a deterministic reduction of the weight gradients).

Importing this module is cheap and never fails: it only checks that triton is installed. The
kernels live in `rja_kernels._triton_kernels`, imported on first use (see its docstring for the
kernel design), so `TRITON_INTERPRET` is read then and not at `import rja_kernels`.

On CUDA the kernels run compiled; on CPU they run in Triton's interpreter when the environment has
`TRITON_INTERPRET=1` (slow: a correctness proof for machines without a GPU, as in CI).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

_KERNELS_MODULE = "rja_kernels._triton_kernels"
_TRITON_MISSING = (
    None if importlib.util.find_spec("triton") is not None
    else "triton is not installed (pip install triton; it ships for Linux only)"
)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run inputs of this device and dtype here, or None."""
    if _TRITON_MISSING is not None:
        return _TRITON_MISSING
    if dtype == torch.float64:
        return ("float64 is not supported: the kernels accumulate in float32 and tl.dot has no "
                "float64 tensor-core path; use backend='reference' (or 'cpu'/'cuda') for float64")
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not supported; expected one of {_DTYPES}"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"device type {device.type!r} is not supported; expected cuda (or cpu via the interpreter)"
    if not _interpret_requested():
        return "set TRITON_INTERPRET=1 to run the Triton kernels on CPU via the interpreter, or use a CUDA device"
    kernels = sys.modules.get(_KERNELS_MODULE)
    if kernels is not None and not kernels.INTERPRETED:
        # @triton.jit fixed the mode when the kernels were first defined in this process.
        return ("the Triton kernels were already compiled for the GPU in this process (TRITON_INTERPRET was "
                "unset at their first use); set TRITON_INTERPRET=1 before the first call to run them on CPU")
    return None


def _kernels():
    # Lazy: importing triton is slow, and the kernels' definition reads TRITON_INTERPRET.
    import rja_kernels._triton_kernels  # noqa: F401  (registers rja::triton_forward/backward)

    return torch.ops.rja


def forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_kernels().triton_forward(xa, xv, *weights, iterations))


def backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
             weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(_kernels().triton_backward(grad_xa, grad_xv, xa_iters, xv_iters, *weights))


register_backend(Backend("triton", "joint_cross_attention", forward, backward, unsupported))
