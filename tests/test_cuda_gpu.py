"""The "cuda" backend on a real GPU against the reference and against the "triton" backend.
Skipped without a CUDA device: on CPU the proof of the CUDA kernels is tests/test_cuda_emulated.py
(the same kernel source under the emulator).

Accuracy rule (as tests/test_triton.py): error against a float64 reference at most twice the
error of the reference computed in the same dtype, plus twice the error of rounding the exact
result to the dtype. The backward is checked on the same saved features for every party: through
autograd, in float16/bfloat16 the rounding of each backend's own saved iterates dominates the
gradient error and varies from element to element, which is no measure of the kernel.
"""

import pytest
import torch

import rja_kernels
from rja_kernels import cuda, reference
from rja_kernels.backends import BackendUnavailableError, why_unavailable
from rja_kernels.op import WEIGHT_NAMES
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


def _case(shape, dtype):
    b, seq, da, dv, k, iterations, tw = SHAPES[shape]
    inputs = make_inputs(b, seq, da, dv, k, iterations, tw=tw, dtype=dtype, device="cuda")
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn((b, seq, d), generator=gen).to("cuda", dtype) for d in (da, dv)]
    return inputs, iterations, grads_out


def _check(names, got, low, exact, dtype):
    for name, g, lo, ex in zip(names, got, low, exact):
        assert g.dtype == dtype and g.shape == ex.shape, name
        tol = low_precision_tolerance(lo, ex)
        err = (g.double() - ex).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cuda_matches_reference(shape, dtype):
    inputs, iterations, grads_out = _case(shape, dtype)
    weights = tuple(inputs[n] for n in WEIGHT_NAMES)
    exact_weights = tuple(w.double() for w in weights)
    got = cuda.forward(inputs["xa"], inputs["xv"], weights, iterations)
    low = reference.forward(inputs["xa"], inputs["xv"], weights, iterations)
    exact = reference.forward(inputs["xa"].double(), inputs["xv"].double(), exact_weights, iterations)
    _check(("xa_out", "xv_out", "xa_iters", "xv_iters"), got, low, exact, dtype)

    saved = (low[2], low[3])
    got = cuda.backward(*grads_out, *saved, weights)
    low = reference.backward(*grads_out, *saved, weights)
    exact = reference.backward(*(t.double() for t in (*grads_out, *saved)), exact_weights)
    _check([f"grad {n}" for n in ("xa", "xv", *WEIGHT_NAMES)], got, low, exact, dtype)


def _autograd(inputs, iterations, backend, grads_out):
    inputs = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    out = rja_kernels.recursive_joint_attention(**inputs, iterations=iterations, backend=backend)
    return [*out, *torch.autograd.grad(out, list(inputs.values()), grads_out)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ["odd", "paper"])
def test_cuda_against_triton_through_autograd(shape, dtype):
    """Both backends end to end (op, autograd, own saved features): cuda's error against the float64
    reference is within twice triton's, or within the accuracy rule."""
    reason = why_unavailable("triton", torch.device("cuda"), dtype)
    if reason is not None:
        pytest.skip(f"triton backend unavailable: {reason}")
    inputs, iterations, grads_out = _case(shape, dtype)
    got = _autograd(inputs, iterations, "cuda", grads_out)
    triton = _autograd(inputs, iterations, "triton", grads_out)
    low = _autograd(inputs, iterations, "reference", grads_out)
    exact = _autograd({n: t.double() for n, t in inputs.items()}, iterations, "reference",
                      [g.double() for g in grads_out])
    names = ["xa_out", "xv_out"] + [f"grad {n}" for n in inputs]
    for name, g, t, lo, ex in zip(names, got, triton, low, exact):
        tol = low_precision_tolerance(lo, ex)
        err, err_triton = ((x.double() - ex).abs().max().item() for x in (g, t))
        assert err <= max(2 * err_triton, tol), f"{name}: cuda error {err:.3g}, triton {err_triton:.3g}, rule {tol:.3g}"


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
