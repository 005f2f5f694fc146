"""The CUDA C++ backend ("cuda") of both operators: the fused kernels of csrc/cuda, one launch per
pass for all iterations.

- `recursive_joint_attention` (the paper's form): torch ops rja::cuda_paper_forward and
  rja::cuda_paper_backward (csrc/cuda/paper.cuh).
- `joint_cross_attention` (the JCA form): rja::cuda_jca_forward and rja::cuda_jca_backward
  (csrc/cuda/jca.cuh).

On CUDA tensors they run the extension rja_kernels._C_cuda. With the environment switch
`RJA_CUDA_EMULATE=1` the backend also runs CPU tensors, through the same kernel source compiled
against the host CUDA emulator (csrc/emu, extension rja_kernels._C_cuda_emu): every GPU thread is a
fiber, every memory access is bounds-checked and every barrier checked. That is slow and meant for
tests (tests/conftest.py sets the switch on machines without a GPU, as it sets TRITON_INTERPRET);
without it the backend refuses CPU tensors and says so. The switch is read at each call.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend

try:
    from rja_kernels import _C_cuda  # noqa: F401  (registers torch.ops.rja.cuda_*)

    _IMPORT_ERROR: ImportError | None = None
except ImportError as err:
    _IMPORT_ERROR = err

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EMULATE_ENV = "RJA_CUDA_EMULATE"
# Launch shape of the emulated kernels: small blocks and tiles, since every GPU thread is a fiber
# there, and tiles smaller than the test sizes make every loop take its ragged last tile. Multiples
# of 16, so float16/bfloat16 take the paper form's tensor-core path, as on the GPU, which uses 256
# threads and tiles of 32 rows and 64 features (csrc/cuda/host.h, Config).
# `split` is the thread blocks per sample of both forms, 0 to let the kernels' heuristic choose it
# for the emulated device (a few SMs, csrc/emu/emu.h).
EMULATED_CONFIG = {"threads": 64, "rows": 16, "cols": 48, "split": 0}
_config = dict(EMULATED_CONFIG)


def emulation_requested() -> bool:
    """Whether RJA_CUDA_EMULATE asks this process to run CPU tensors through the CUDA emulator."""
    return os.environ.get(EMULATE_ENV, "0").lower() in ("1", "true", "on", "yes")


def cuda_emulator():
    """The extension module of the emulated CUDA kernels (ImportError when it is not built)."""
    return importlib.import_module("rja_kernels._C_cuda_emu")


@contextlib.contextmanager
def emulated_config(**config: int) -> Iterator[None]:
    """Run the emulated kernels with another launch shape (`threads`, `rows`, `cols`, `split`) inside the block."""
    unknown = set(config) - set(EMULATED_CONFIG)
    if unknown:
        raise ValueError(f"unknown launch parameters {sorted(unknown)}; expected some of {sorted(EMULATED_CONFIG)}")
    saved = dict(_config)
    _config.update(config)
    try:
        yield
    finally:
        _config.clear()
        _config.update(saved)


def _launch_shape() -> tuple[int, int, int, int]:
    return _config["threads"], _config["rows"], _config["cols"], _config["split"]


def _dense(weights: tuple[Tensor, ...]) -> list[Tensor]:
    return [w.contiguous() for w in weights]


# ---- the paper's form ----------------------------------------------------------------------------

def paper_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int, h_tanh: bool = False,
                  out_relu: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(xa_out, xv_out, xa_iters [T, B, L, da], xv_iters [T, B, L, dv]) of the paper's form."""
    args = (xa.contiguous(), xv.contiguous(), _dense(weights), iterations, h_tanh, out_relu)
    if xa.device.type == "cpu":
        return tuple(cuda_emulator().paper_forward(*args, *_launch_shape()))
    return tuple(torch.ops.rja.cuda_paper_forward(*args))


def paper_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor, weights: tuple[Tensor, ...],
                   h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, ...]:
    """Gradients of (xa, xv, w_ja, w_jv, w_ca, w_cv, w_ha, w_hv) of the paper's form."""
    args = (grad_xa.contiguous(), grad_xv.contiguous(), xa_iters.contiguous(), xv_iters.contiguous(),
            _dense(weights), h_tanh, out_relu)
    if xa_iters.device.type == "cpu":
        return tuple(cuda_emulator().paper_backward(*args, *_launch_shape()))
    return tuple(torch.ops.rja.cuda_paper_backward(*args))


# ---- the JCA form --------------------------------------------------------------------------------

def jca_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(xa_out, xv_out, xa_iters [T, B, L, da], xv_iters [T, B, L, dv]) of the JCA form."""
    args = (xa.contiguous(), xv.contiguous(), _dense(weights), iterations)
    if xa.device.type == "cpu":
        return tuple(cuda_emulator().jca_forward(*args, *_launch_shape()))
    return tuple(torch.ops.rja.cuda_jca_forward(*args))


def jca_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor, weights: tuple[Tensor, ...]
                 ) -> tuple[Tensor, ...]:
    """Gradients of (xa, xv, w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv) of the JCA form."""
    args = (grad_xa.contiguous(), grad_xv.contiguous(), xa_iters.contiguous(), xv_iters.contiguous(),
            _dense(weights))
    if xa_iters.device.type == "cpu":
        return tuple(cuda_emulator().jca_backward(*args, *_launch_shape()))
    return tuple(torch.ops.rja.cuda_jca_backward(*args))


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the cuda backend cannot run inputs of this device and dtype here, or None."""
    if device.type == "cuda":
        if _IMPORT_ERROR is not None:
            return f"the CUDA extension rja_kernels._C_cuda is not built: {_IMPORT_ERROR}"
    elif device.type == "cpu":
        if not emulation_requested():
            return (f"the cuda backend needs CUDA tensors; on CPU use backend='cpu' or 'reference' (or set "
                    f"{EMULATE_ENV}=1 to run the CUDA kernels in the host CUDA emulator: slow, for tests)")
        try:
            cuda_emulator()
        except ImportError as err:
            return f"{EMULATE_ENV}=1 but the emulated CUDA kernels rja_kernels._C_cuda_emu are not built: {err}"
    else:
        return (f"the cuda backend runs CUDA tensors (and CPU tensors under {EMULATE_ENV}=1), "
                f"not tensors on {device}")
    if dtype not in SUPPORTED_DTYPES:
        return f"the cuda backend supports float32, float16 and bfloat16, not {dtype}"
    return None


register_backend(Backend("cuda", "recursive_joint_attention", paper_forward, paper_backward, unsupported))
register_backend(Backend("cuda", "joint_cross_attention", jca_forward, jca_backward, unsupported))
