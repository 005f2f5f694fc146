"""Test support shared by the test suite and the benchmarks: inputs of given sizes and the
low-precision tolerance rule. Not part of the operator's API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from rja_kernels import jca_op, paper_op
from rja_kernels.op import OperatorSpec

OPERATORS: dict[str, OperatorSpec] = {spec.name: spec for spec in (paper_op.SPEC, jca_op.SPEC)}
PUBLIC = {"recursive_joint_attention": paper_op.recursive_joint_attention,
          "joint_cross_attention": jca_op.joint_cross_attention}


def make_inputs(
    operator: str, b: int, seq: int, da: int, dv: int, iterations: int, k: int | None = None,
    tw: int | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """Inputs of `operator` ("recursive_joint_attention" or "joint_cross_attention", which needs `k`):
    features ~ N(0, 1) and Xavier-scaled weights, as the model initialises them, so the tanh and
    relu see realistic (neither saturated nor linear) pre-activations."""
    spec = OPERATORS[operator]
    tw = iterations if tw is None else tw
    gen = torch.Generator().manual_seed(seed)
    shapes = {"xa": (b, seq, da), "xv": (b, seq, dv)}
    shapes.update({name: (tw, *shape) for name, shape in spec.weight_shapes(seq, da, dv, {"k": k}).items()})
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name in spec.weight_names:
            t *= (2.0 / (shape[1] + shape[2])) ** 0.5
        out[name] = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return out


@contextlib.contextmanager
def allow_tf32(allowed: bool = True) -> Iterator[None]:
    """`torch.backends.cuda.matmul.allow_tf32 = allowed` inside the block, restored after: float32
    products may then be TF32 in cuBLAS and the Triton kernels, and 3xTF32 in the CUDA C++ ones."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def call_operator(operator: str, inp: dict[str, Tensor], iterations: int, backend: str = "auto",
                  **options: bool) -> tuple[Tensor, Tensor]:
    """The public function of `operator` on the tensors of `make_inputs`."""
    return PUBLIC[operator](**inp, iterations=iterations, backend=backend, **options)


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


def assert_near_reordered_sum(name: str, one: Tensor, many: Tensor, dtype: torch.dtype, terms: int) -> None:
    """`many` (several programs or blocks per sample) is `one` (one per sample) up to the order of
    float32 sums of `terms` terms: the split sums the same terms, associated otherwise (program p
    sums tiles p, p + S, ..., then the S partials are added). Two orders of such a sum stay within
    (n - 1) eps32 sum|terms| of the exact sum, so they differ by at most about 2 (n - 1) eps32 times
    the sums' magnitude. Such a difference enters at every iteration, forward and backward, and is
    carried through O(1) gains: allowed, 4 n eps32 max|result| (measured on the CUDA emulator: up to
    4.3 eps32 max|result| at n = 13, T = 2; 3.1 at n = 3, T = 3). In float16/bfloat16 it can move a
    rounding to the dtype by one ulp of an element, so eps(dtype) max|result| is added (measured:
    at most 0.1 of that)."""
    assert one.dtype == many.dtype and one.shape == many.shape, name
    if not one.numel():
        return
    scale = one.double().abs().max().item()
    tol = scale * 4 * terms * torch.finfo(torch.float32).eps
    if dtype != torch.float32:
        tol += scale * torch.finfo(dtype).eps
    err = (many.double() - one.double()).abs().max().item()
    assert err <= tol, f"{name}: S > 1 differs from S = 1 by {err:.3g} > {tol:.3g}"


class Fusion(torch.nn.Module):
    """A small module around an operator, for torch.compile tests."""

    def __init__(self, operator: str, backend: str, iterations: int = 2, **options: bool):
        super().__init__()
        self.operator, self.backend, self.iterations, self.options = operator, backend, iterations, options

    def forward(self, inp: dict) -> torch.Tensor:
        xa, xv = call_operator(self.operator, inp, self.iterations, self.backend, **self.options)
        return torch.cat([xa, xv], dim=-1).relu()


def _sizes(operator: str) -> dict[str, int]:
    return {"k": 3} if operator == "joint_cross_attention" else {}


def opcheck_backend(operator: str, backend: str, device: str = "cpu", dtype: torch.dtype = torch.float64) -> None:
    """torch.library.opcheck of `operator` through `backend`, with per-iteration and shared weights
    (and, for the paper's form, both switches on)."""
    op = getattr(torch.ops.rja, operator).default
    options = (True, True) if operator == "recursive_joint_attention" else ()
    for shared in (False, True):
        inp = make_inputs(operator, 2, 4, 6, 5, 2, **_sizes(operator), tw=1 if shared else None, dtype=dtype,
                          device=device, requires_grad=True)
        torch.library.opcheck(op, (*inp.values(), 2, *options, backend))


def compile_matches_eager(operator: str, backend: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                          **options: bool) -> None:
    """torch.compile(fullgraph=True) of a module using the op matches eager, outputs and grads."""
    inp = make_inputs(operator, 2, 5, 6, 7, 2, **_sizes(operator), dtype=dtype, device=device, requires_grad=True)
    module = Fusion(operator, backend, **options)
    eager = module(inp)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)(inp)
    torch.testing.assert_close(compiled, eager)
    grads_eager = torch.autograd.grad(eager.square().sum(), list(inp.values()))
    grads_compiled = torch.autograd.grad(compiled.square().sum(), list(inp.values()))
    for g, e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g, e)
