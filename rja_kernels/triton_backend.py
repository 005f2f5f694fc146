"""The "triton" backend of both operators: fused Triton kernels, forward in one launch for all
iterations, backward in one launch plus a deterministic reduction of the weight gradients.

- the paper's form, "recursive_joint_attention": torch ops `rja::triton_paper_forward` and
  `rja::triton_paper_backward` (rja_kernels/_triton_paper.py);
- the JCA form, "joint_cross_attention": `rja::triton_jca_forward` and `rja::triton_jca_backward`
  (rja_kernels/_triton_jca.py).

Both pairs are `torch.library.triton_op`s launching through `wrap_triton`, so torch.compile sees
the kernels. Importing this module is cheap and never fails: it only checks that triton is
installed. The kernels are imported on first use (see rja_kernels/_triton_common.py for the
design both forms share), so `TRITON_INTERPRET` is read then and not at `import rja_kernels`.

On CUDA the kernels run compiled; on CPU they run in Triton's interpreter when the environment has
`TRITON_INTERPRET=1` (slow: a correctness proof for machines without a GPU, as in CI).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

_COMMON_MODULE = "rja_kernels._triton_common"
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
    common = sys.modules.get(_COMMON_MODULE)
    if common is not None and not common.INTERPRETED:
        # @triton.jit fixed the mode when the kernels were first defined in this process.
        return ("the Triton kernels were already compiled for the GPU in this process (TRITON_INTERPRET was "
                "unset at their first use); set TRITON_INTERPRET=1 before the first call to run them on CPU")
    return None


def _ops(module: str):
    # Lazy: importing triton is slow, and the kernels' definition reads TRITON_INTERPRET.
    importlib.import_module(module)  # registers its rja::triton_* ops
    return torch.ops.rja


def paper_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int,
                  h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the paper's form in one launch: outputs and every iteration's input features."""
    ops = _ops("rja_kernels._triton_paper")
    return tuple(ops.triton_paper_forward(xa, xv, *weights, iterations, h_tanh, out_relu))


def paper_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
                   weights: tuple[Tensor, ...], h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, ...]:
    """Grads of (xa, xv, *weights), recomputing each iteration's tiles of C from its saved features."""
    ops = _ops("rja_kernels._triton_paper")
    return tuple(ops.triton_paper_backward(grad_xa, grad_xv, xa_iters, xv_iters, *weights, h_tanh, out_relu))


def jca_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the JCA form in one launch."""
    return tuple(_ops("rja_kernels._triton_jca").triton_jca_forward(xa, xv, *weights, iterations))


def jca_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
                 weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Grads of (xa, xv, *weights) of the JCA form."""
    ops = _ops("rja_kernels._triton_jca")
    return tuple(ops.triton_jca_backward(grad_xa, grad_xv, xa_iters, xv_iters, *weights))


register_backend(Backend("triton", "recursive_joint_attention", paper_forward, paper_backward, unsupported))
register_backend(Backend("triton", "joint_cross_attention", jca_forward, jca_backward, unsupported))
