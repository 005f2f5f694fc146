"""The "cuda" backend on a real GPU, through the public operator and autograd, against the
reference and against the "triton" backend. Skipped without a CUDA device: on CPU the proof of
the CUDA kernels is tests/test_cuda_emulated.py (the same kernel source under the emulator).

Accuracy rule (as tests/test_triton.py): error against a float64 reference at most twice the
error of the reference computed in the same dtype, plus twice the error of rounding the exact
result to the dtype (outputs of a recursion carry about one unit in the last place)."""

import pytest
import torch

import rja_kernels
from rja_kernels.backends import BackendUnavailableError, why_unavailable
from rja_kernels.testing import low_precision_tolerance, make_inputs

_reason = why_unavailable("cuda", torch.device("cuda"), torch.float32)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or _reason is not None,
    reason=f"needs a CUDA device and the cuda backend ({_reason or 'no CUDA device'})")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = {  # (B, L, da, dv, k, T, Tw)
    "odd": (3, 5, 24, 40, 12, 3, 3),
    "shared-weights": (2, 7, 33, 17, 9, 2, 1),
    "paper": (4, 16, 512, 512, 32, 2, 2),
    "long": (2, 64, 512, 512, 64, 3, 3),
}


def _run(inputs, iterations, backend, grads_out):
    inputs = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    out = rja_kernels.recursive_joint_attention(**inputs, iterations=iterations, backend=backend)
    grads = torch.autograd.grad(out, list(inputs.values()), [g.to(out[0].dtype) for g in grads_out])
    return [*out, *grads]


def _tolerances(low, exact, dtype):
    return [low_precision_tolerance(lo, ex) + 2 * (ex.to(dtype).double() - ex).abs().max().item()
            for lo, ex in zip(low, exact)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cuda_matches_reference_and_triton(shape, dtype):
    b, seq, da, dv, k, iterations, tw = SHAPES[shape]
    inputs = make_inputs(b, seq, da, dv, k, iterations, tw=tw, dtype=dtype, device="cuda")
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn((b, seq, d), generator=gen, dtype=torch.float64).cuda() for d in (da, dv)]
    got = _run(inputs, iterations, "cuda", grads_out)
    low = _run(inputs, iterations, "reference", grads_out)
    exact = _run({n: t.double() for n, t in inputs.items()}, iterations, "reference", grads_out)
    tols = _tolerances(low, exact, dtype)
    names = ["xa_out", "xv_out"] + [f"grad {n}" for n in inputs]
    for name, g, ex, tol in zip(names, got, exact, tols):
        assert g.dtype == dtype and g.shape == ex.shape, name
        err = (g.double() - ex).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"
    if why_unavailable("triton", torch.device("cuda"), dtype) is None:
        triton = _run(inputs, iterations, "triton", grads_out)
        for name, g, t, tol in zip(names, got, triton, tols):
            err = (g.double() - t.double()).abs().max().item()
            assert err <= 2 * tol, f"{name}: cuda and triton differ by {err:.3g} > {2 * tol:.3g}"


def test_weight_gradients_are_deterministic():
    inputs = make_inputs(8, 16, 128, 96, 32, 2, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        out = rja_kernels.recursive_joint_attention(**inputs, iterations=2, backend="cuda")
        runs.append(torch.autograd.grad(out[0].sum() + out[1].sum(), list(inputs.values())))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_empty_batch_on_gpu():
    inputs = make_inputs(0, 5, 24, 40, 12, 2, device="cuda", requires_grad=True)
    xa, xv = rja_kernels.recursive_joint_attention(**inputs, iterations=2, backend="cuda")
    assert xa.shape == (0, 5, 24) and xv.shape == (0, 5, 40)
    grads = torch.autograd.grad(xa.sum() + xv.sum(), list(inputs.values()))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_float64_is_refused_with_the_reason():
    inputs = make_inputs(1, 4, 8, 8, 4, 1, dtype=torch.float64, device="cuda")
    with pytest.raises(BackendUnavailableError, match="float32, float16 and bfloat16"):
        rja_kernels.recursive_joint_attention(**inputs, iterations=1, backend="cuda")
