"""The "cuda" backend on a real GPU, both operators, against the reference and against the "triton"
backend. Skipped without a CUDA device: on CPU the proof of the CUDA kernels is
tests/test_cuda_emulated.py (the same kernel source under the emulator).

Accuracy rule (as tests/test_triton.py): error against a float64 reference at most twice the
error of the reference computed in the same dtype, plus twice the error of rounding the exact
result to the dtype. The backward is checked on the same saved features for every party: through
autograd, in float16/bfloat16 the rounding of each backend's own saved iterates dominates the
gradient error and varies from element to element, which is no measure of the kernel.
"""

import pytest
import torch

from rja_kernels.backends import BackendUnavailableError, get_backend, why_unavailable
from rja_kernels.testing import allow_tf32, call_operator, low_precision_tolerance, make_inputs

PAPER, JCA = "recursive_joint_attention", "joint_cross_attention"
_reason = why_unavailable("cuda", torch.device("cuda"), torch.float32)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or _reason is not None,
    reason=f"needs a CUDA device and the cuda backend ({_reason or 'no CUDA device'})")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = {  # (B, L, da, dv, k, T, Tw); k is the JCA form's only
    "odd": (3, 5, 24, 40, 12, 3, 3),
    "shared-weights": (2, 7, 33, 17, 9, 2, 1),
    "paper": (4, 16, 512, 512, 32, 2, 2),
    "long": (2, 64, 512, 512, 64, 3, 3),
}
# (operator, options): the paper's form with its switches (the released code's both on), the JCA form.
FORMS = [(PAPER, {"h_tanh": False, "out_relu": False}), (PAPER, {"h_tanh": True, "out_relu": True}),
         (PAPER, {"h_tanh": True, "out_relu": False}), (JCA, {})]
FORM_IDS = ["paper", "paper-released-switches", "paper-h_tanh", "jca"]


def _case(operator, shape, dtype):
    b, seq, da, dv, k, iterations, tw = SHAPES[shape]
    inputs = make_inputs(operator, b, seq, da, dv, iterations, k=k, tw=tw, dtype=dtype, device="cuda")
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn((b, seq, d), generator=gen).to("cuda", dtype) for d in (da, dv)]
    return inputs, iterations, grads_out


def _weights(inputs):
    return tuple(t for n, t in inputs.items() if n.startswith("w_"))


def _check(names, got, low, exact, dtype):
    for name, g, lo, ex in zip(names, got, low, exact):
        assert g.dtype == dtype and g.shape == ex.shape, name
        tol = low_precision_tolerance(lo, ex)
        err = (g.double() - ex).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(("operator", "options"), FORMS, ids=FORM_IDS)
def test_cuda_matches_reference(operator, options, shape, dtype):
    inputs, iterations, grads_out = _case(operator, shape, dtype)
    cuda, reference = get_backend(operator, "cuda"), get_backend(operator, "reference")
    weights = _weights(inputs)
    exact_weights = tuple(w.double() for w in weights)
    got = cuda.forward(inputs["xa"], inputs["xv"], weights, iterations, **options)
    low = reference.forward(inputs["xa"], inputs["xv"], weights, iterations, **options)
    exact = reference.forward(inputs["xa"].double(), inputs["xv"].double(), exact_weights, iterations, **options)
    _check(("xa_out", "xv_out", "xa_iters", "xv_iters"), got, low, exact, dtype)

    saved = (low[2], low[3])
    got = cuda.backward(*grads_out, *saved, weights, **options)
    low = reference.backward(*grads_out, *saved, weights, **options)
    exact = reference.backward(*(t.double() for t in (*grads_out, *saved)), exact_weights, **options)
    _check([f"grad {n}" for n in inputs], got, low, exact, dtype)


@pytest.mark.parametrize("shape", ["odd", "paper"])
@pytest.mark.parametrize(("operator", "options"), [FORMS[1], FORMS[3]], ids=[FORM_IDS[1], FORM_IDS[3]])
def test_float32_with_tf32_allowed_takes_3xtf32(operator, options, shape):
    # With TF32 allowed the float32 kernels take 3xTF32 (about 2^-22 |a b| per product) where cuBLAS,
    # and so the reference, takes TF32 (2^-11): the kernels' error stays within a twentieth of the
    # reference's own plus float32's rounding, which one TF32 product per float32 one would not.
    inputs, iterations, grads_out = _case(operator, shape, torch.float32)
    cuda, reference = get_backend(operator, "cuda"), get_backend(operator, "reference")
    weights = _weights(inputs)
    exact_weights = tuple(w.double() for w in weights)
    with allow_tf32():
        got = cuda.forward(inputs["xa"], inputs["xv"], weights, iterations, **options)
        low = reference.forward(inputs["xa"], inputs["xv"], weights, iterations, **options)
        saved = (low[2], low[3])
        got_grads = cuda.backward(*grads_out, *saved, weights, **options)
        low_grads = reference.backward(*grads_out, *saved, weights, **options)
    exact = reference.forward(inputs["xa"].double(), inputs["xv"].double(), exact_weights, iterations, **options)
    exact_grads = reference.backward(*(t.double() for t in (*grads_out, *saved)), exact_weights, **options)
    names = ["xa_out", "xv_out", "xa_iters", "xv_iters"] + [f"grad {n}" for n in inputs]
    for name, g, lo, ex in zip(names, (*got, *got_grads), (*low, *low_grads), (*exact, *exact_grads)):
        tol = low_precision_tolerance(lo, ex, factor=0.05)
        err = (g.double() - ex).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > {tol:.3g}, a twentieth of the TF32 reference's"


def _autograd(operator, inputs, iterations, backend, grads_out, options):
    inputs = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    out = call_operator(operator, inputs, iterations, backend, **options)
    return [*out, *torch.autograd.grad(out, list(inputs.values()), grads_out)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ["odd", "paper"])
@pytest.mark.parametrize(("operator", "options"), FORMS, ids=FORM_IDS)
def test_cuda_against_triton_through_autograd(operator, options, shape, dtype):
    """Both backends end to end (op, autograd, own saved features): cuda's error against the float64
    reference is within twice triton's, or within the accuracy rule."""
    reason = why_unavailable("triton", torch.device("cuda"), dtype, operator)
    if reason is not None:
        pytest.skip(f"triton backend of {operator} unavailable: {reason}")
    inputs, iterations, grads_out = _case(operator, shape, dtype)
    got = _autograd(operator, inputs, iterations, "cuda", grads_out, options)
    triton = _autograd(operator, inputs, iterations, "triton", grads_out, options)
    low = _autograd(operator, inputs, iterations, "reference", grads_out, options)
    exact = _autograd(operator, {n: t.double() for n, t in inputs.items()}, iterations, "reference",
                      [g.double() for g in grads_out], options)
    names = ["xa_out", "xv_out"] + [f"grad {n}" for n in inputs]
    for name, g, t, lo, ex in zip(names, got, triton, low, exact):
        tol = low_precision_tolerance(lo, ex)
        err, err_triton = ((x.double() - ex).abs().max().item() for x in (g, t))
        assert err <= max(2 * err_triton, tol), f"{name}: cuda error {err:.3g}, triton {err_triton:.3g}, rule {tol:.3g}"


@pytest.mark.parametrize(("operator", "options"), [FORMS[1], FORMS[3]], ids=[FORM_IDS[1], FORM_IDS[3]])
def test_weight_gradients_are_deterministic(operator, options):
    inputs = make_inputs(operator, 8, 16, 128, 96, 2, k=32, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        out = call_operator(operator, inputs, 2, "cuda", **options)
        runs.append(torch.autograd.grad(out[0].sum() + out[1].sum(), list(inputs.values())))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_empty_batch_on_gpu(operator):
    inputs = make_inputs(operator, 0, 5, 24, 40, 2, k=12, device="cuda", requires_grad=True)
    xa, xv = call_operator(operator, inputs, 2, "cuda")
    assert xa.shape == (0, 5, 24) and xv.shape == (0, 5, 40)
    grads = torch.autograd.grad(xa.sum() + xv.sum(), list(inputs.values()))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_float64_is_refused_with_the_reason(operator):
    inputs = make_inputs(operator, 1, 4, 8, 8, 1, k=4, dtype=torch.float64, device="cuda")
    with pytest.raises(BackendUnavailableError, match="float32, float16 and bfloat16"):
        call_operator(operator, inputs, 1, "cuda")


def _one_element_in(t):
    """t's values in a buffer that starts one element past the allocator's alignment."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    return buf[1:].view(t.shape).copy_(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("operator", "options"), [FORMS[1], FORMS[3]], ids=[FORM_IDS[1], FORM_IDS[3]])
def test_unaligned_buffers_give_the_same_bits(operator, options, dtype):
    # The kernels stage tiles in 16-byte loads where a buffer is aligned and element by element where
    # it is not (csrc/cuda/common.cuh: stage_tile): a misaligned vector load would fault here.
    inputs, iterations, grads_out = _case(operator, "paper", dtype)
    kernel = get_backend(operator, "cuda")

    def run(inp, grads):
        weights = _weights(inp)
        saved = kernel.forward(inp["xa"], inp["xv"], weights, iterations, **options)
        return [*saved, *kernel.backward(*grads, saved[2], saved[3], weights, **options)]

    aligned = run(inputs, grads_out)
    unaligned = run({n: _one_element_in(t) for n, t in inputs.items()}, [_one_element_in(g) for g in grads_out])
    assert inputs["xa"].data_ptr() % 16 == 0 and _one_element_in(inputs["xa"]).data_ptr() % 16 != 0
    for a, u in zip(aligned, unaligned, strict=True):
        assert torch.equal(a, u)
