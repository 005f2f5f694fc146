"""Test support shared by the test suite and the benchmarks: inputs of given sizes and the
low-precision tolerance rule. Not part of the operator's API."""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.op import WEIGHT_NAMES, recursive_joint_attention, weight_shapes


def make_inputs(
    b: int, seq: int, da: int, dv: int, k: int, iterations: int, tw: int | None = None,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """Features ~ N(0, 1) and Xavier-scaled weights, as the model initialises them, so the
    tanh and relu see realistic (neither saturated nor linear) pre-activations."""
    tw = iterations if tw is None else tw
    gen = torch.Generator().manual_seed(seed)
    shapes = {"xa": (b, seq, da), "xv": (b, seq, dv)}
    shapes.update({name: (tw, *shape) for name, shape in weight_shapes(seq, da, dv, k).items()})
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name in WEIGHT_NAMES:
            t *= (2.0 / (shape[1] + shape[2])) ** 0.5
        out[name] = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return out


def low_precision_tolerance(ref_low: Tensor, ref_exact: Tensor, factor: float = 2.0, floor: float = 1e-5
                            ) -> float:
    """flash-attention's rule: a kernel in a low-precision dtype may be off from the exact result
    by at most `factor` times the error the reference itself makes in that dtype, plus twice the
    error of rounding the exact result to that dtype (a recursion stores each iteration's
    features in the dtype, so even a perfect kernel is about an ulp off, and the reference's
    own error can be lucky) and an absolute `floor`."""
    exact = ref_exact.double()
    own_error = (ref_low.double() - exact).abs().max().item()
    rounding = (exact.to(ref_low.dtype).double() - exact).abs().max().item()
    return factor * own_error + 2 * rounding + floor


# The CUDA kernels executed on CPU by the host CUDA emulator (csrc/emu, extension
# rja_kernels._C_cuda_emu). Small blocks and tiles by default: every GPU thread is a fiber here,
# and tiles smaller than the sizes make every loop take its ragged last tile.
EMULATED_CONFIG = {"threads": 64, "rows": 16, "cols": 24}


def cuda_emulator():
    """The extension module of the emulated CUDA kernels (ImportError when it is not built)."""
    from rja_kernels import _C_cuda_emu

    return _C_cuda_emu


def emulated_cuda_forward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int, **config: int
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The CUDA backend's forward on CPU tensors: (xa_out, xv_out, xa_iters, xv_iters)."""
    cfg = {**EMULATED_CONFIG, **config}
    return tuple(cuda_emulator().forward(
        xa.contiguous(), xv.contiguous(), [w.contiguous() for w in weights], iterations,
        cfg["threads"], cfg["rows"], cfg["cols"]))


def emulated_cuda_backward(grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
                           weights: tuple[Tensor, ...], **config: int) -> tuple[Tensor, ...]:
    """The CUDA backend's backward on CPU tensors: grads of (xa, xv, *weights)."""
    cfg = {**EMULATED_CONFIG, **config}
    return tuple(cuda_emulator().backward(
        grad_xa.contiguous(), grad_xv.contiguous(), xa_iters.contiguous(), xv_iters.contiguous(),
        [w.contiguous() for w in weights], cfg["threads"], cfg["rows"], cfg["cols"]))


class Fusion(torch.nn.Module):
    """A small module around the operator, for torch.compile tests."""

    def __init__(self, backend: str, iterations: int = 2):
        super().__init__()
        self.backend, self.iterations = backend, iterations

    def forward(self, inp: dict) -> torch.Tensor:
        xa, xv = recursive_joint_attention(**inp, iterations=self.iterations, backend=self.backend)
        return torch.cat([xa, xv], dim=-1).relu()


def opcheck_backend(backend: str, device: str = "cpu", dtype: torch.dtype = torch.float64) -> None:
    """torch.library.opcheck of the op through `backend`, with per-iteration and shared weights."""
    for shared in (False, True):
        inp = make_inputs(2, 4, 6, 5, 3, 2, tw=1 if shared else None, dtype=dtype, device=device,
                          requires_grad=True)
        torch.library.opcheck(torch.ops.rja.recursive_joint_attention.default,
                              (*inp.values(), 2, backend))


def compile_matches_eager(backend: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """torch.compile(fullgraph=True) of a module using the op matches eager, outputs and grads."""
    inp = make_inputs(2, 5, 6, 7, 3, 2, dtype=dtype, device=device, requires_grad=True)
    module = Fusion(backend)
    eager = module(inp)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)(inp)
    torch.testing.assert_close(compiled, eager)
    grads_eager = torch.autograd.grad(eager.square().sum(), list(inp.values()))
    grads_compiled = torch.autograd.grad(compiled.square().sum(), list(inp.values()))
    for g, e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g, e)
