"""Checks every operator must pass, on every backend this machine runs. Each operator's test file
(test_recursive_joint_attention.py, test_joint_cross_attention.py) imports them and provides the
fixtures `operator`, `options` (its switch settings) and `spec_loop` (its independent oracle)."""

from __future__ import annotations

import pytest
import torch

import rja_kernels
from rja_kernels.backends import BACKEND_NAMES, why_unavailable
from rja_kernels.testing import (
    OPERATORS,
    call_operator,
    compile_matches_eager,
    low_precision_tolerance,
    make_inputs,
    opcheck_backend,
)

KERNEL_BACKENDS = [n for n in BACKEND_NAMES if n != "reference"]
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SHAPES = [  # B, L, da, dv, k (k: JCA form only). Odd sizes; the last ones span several tiles.
    (3, 4, 6, 5, 7),
    (2, 1, 3, 8, 2),
    (1, 5, 24, 40, 12),
    (2, 17, 33, 20, 20),
]


def _require(backend: str, operator: str, dtype: torch.dtype = torch.float32) -> None:
    reason = why_unavailable(backend, torch.device("cpu"), dtype, operator)
    if reason is not None:
        pytest.skip(reason)


def _inputs(operator, shape, iterations, shared=False, dtype=torch.float64, requires_grad=False, seed=0):
    b, seq, da, dv, k = shape
    return make_inputs(operator, b, seq, da, dv, iterations, k=k, tw=1 if shared else None, dtype=dtype,
                       seed=seed, requires_grad=requires_grad)


def grad_outputs(inp, grad_seed=1):
    """Fixed random gradients of both outputs (shaped and typed like xa, xv)."""
    gen = torch.Generator().manual_seed(grad_seed)
    return tuple(torch.randn(inp[n].shape, generator=gen, dtype=torch.float64).to(inp[n].device, inp[n].dtype)
                 for n in ("xa", "xv"))


def _forward_and_grads(operator, inp, iterations, backend, options, grad_out=None):
    """Outputs and the gradients of every input for the output gradients `grad_out` (default:
    `grad_outputs(inp)`)."""
    inp = {n: t.detach().requires_grad_() for n, t in inp.items()}
    xa, xv = call_operator(operator, inp, iterations, backend, **options)
    grads = torch.autograd.grad((xa, xv), list(inp.values()), grad_outputs(inp) if grad_out is None else grad_out)
    return (xa.detach(), xv.detach(), *grads)


def _axes(operator, name):
    """Names of dims 1 and 2 of input `name` ("L", "da", "dv", "da + dv" or "k")."""
    layouts = {"xa": "[L, da]", "xv": "[L, dv]", **OPERATORS[operator].weight_layouts}
    return layouts[name].strip("[]").split(", ")


def _permute(operator, name, t, orders, inverse=False):
    for dim, axis in enumerate(_axes(operator, name), start=1):
        order = orders[axis].to(t.device)
        t = t.index_select(dim, order.argsort() if inverse else order)
    return t


def reference_tolerances(operator, low_inp, iterations, options, grad_out, exact, factor=3.0, reorders=3):
    """`low_precision_tolerance` of each output and gradient, with the reference's own error in the
    low dtype taken as the largest of its evaluation as written and of `reorders` equivalent ones:
    the same problem with its clip and feature axes permuted (the permutation undone afterwards),
    which sums every contraction in another order. One evaluation's error is one sample: where a
    few elements decide the max (L = 1) or a saturating tanh amplifies rounding, the error of an
    equally valid order was up to 6.5x the written one's (issue 17). `exact`: the float64
    reference at the low-precision inputs and `grad_out`, upcast."""
    spec = OPERATORS[operator]
    sizes = {"L": low_inp["xa"].shape[1], "da": low_inp["xa"].shape[2], "dv": low_inp["xv"].shape[2],
             **{size: low_inp[spec.size_weight].shape[dim] for size, dim in spec.extra_sizes.items()}}
    names = ["xa", "xv", *low_inp]
    gen = torch.Generator().manual_seed(0)
    results = [_forward_and_grads(operator, low_inp, iterations, "reference", options, grad_out)]
    for _ in range(reorders):
        orders = {axis: torch.randperm(n, generator=gen) for axis, n in sizes.items()}
        orders["da + dv"] = torch.cat([orders["da"], sizes["da"] + orders["dv"]])
        got = _forward_and_grads(
            operator, {n: _permute(operator, n, t, orders) for n, t in low_inp.items()}, iterations, "reference",
            options, tuple(_permute(operator, n, g, orders) for n, g in zip(("xa", "xv"), grad_out)))
        results.append([_permute(operator, n, t, orders, inverse=True) for n, t in zip(names, got)])
    return [max(low_precision_tolerance(r[i], e, factor) for r in results) for i, e in enumerate(exact)]


def _stored_in_dtype(operator, low_inp, iterations, options, grad_out):
    """Outputs and gradients of a perfect kernel in the low dtype: float64 arithmetic at the
    low-precision inputs, each iteration's output features rounded to that dtype, as every backend
    stores them (the rounding taken as the identity in the backward)."""
    dtype = low_inp["xa"].dtype
    inp = {n: t.detach().double().requires_grad_() for n, t in low_inp.items()}
    xa, xv = inp["xa"], inp["xv"]
    for i in range(iterations):
        step = {n: w[i:i + 1] if w.shape[0] > 1 else w for n, w in inp.items() if n not in ("xa", "xv")}
        xa, xv = call_operator(operator, {"xa": xa, "xv": xv, **step}, 1, "reference", **options)
        xa, xv = (x + (x.to(dtype).double() - x).detach() for x in (xa, xv))
    grads = torch.autograd.grad((xa, xv), list(inp.values()), tuple(g.double() for g in grad_out))
    return (xa.detach(), xv.detach(), *grads)


def low_precision_check(operator, low_inp, iterations, backend, options):
    """(name, error, tolerance) of every output and gradient of `backend` at the low-precision
    inputs, against the float64 reference at the same inputs (upcast), as flash-attention's tests
    do: an exact result of the unrounded inputs would count the inputs' rounding, amplified by the
    problem's conditioning, as the kernel's error (a perfect kernel failed the rule that way).
    For the same reason the error is the distance to the nearer of two answers, the exact one and
    the perfect kernel's (`_stored_in_dtype`): rounding an iteration's features can move a `G` near
    0 across the relu, and the gradients then differ by O(1) from the exact ones whatever the
    arithmetic (1x5x24x40x12, T = 2, float16: the perfect kernel's grad_xa was 2.1 off, the
    reference's own error 0.04); a correct kernel is within the tolerance of one of the two."""
    grad_out = grad_outputs(low_inp)
    exact = _forward_and_grads(operator, {n: t.double() for n, t in low_inp.items()}, iterations, "reference",
                               options, tuple(g.double() for g in grad_out))
    stored = _stored_in_dtype(operator, low_inp, iterations, options, grad_out)
    got = _forward_and_grads(operator, low_inp, iterations, backend, options, grad_out)
    tolerances = reference_tolerances(operator, low_inp, iterations, options, grad_out, exact)
    names = ["xa_out", "xv_out", *(f"grad_{n}" for n in low_inp)]
    for g in got:
        assert g.dtype == low_inp["xa"].dtype
    return [(n, min((g.double() - e).abs().max().item(), (g.double() - p).abs().max().item()), tol)
            for n, g, e, p, tol in zip(names, got, exact, stored, tolerances)]


def test_every_backend_runs_here(operator):
    # CI has every extension built and the test environment turns on Triton's interpreter and the
    # CUDA emulator, so a missing backend is a failure, not a skip.
    missing = {n: why_unavailable(n, torch.device("cpu"), torch.float32, operator) for n in BACKEND_NAMES}
    assert not {n: r for n, r in missing.items() if r is not None}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True])
def test_reference_matches_spec_loop(operator, options, spec_loop, shape, iterations, shared):
    inp = _inputs(operator, shape, iterations, shared)
    expect = spec_loop(inp, iterations, **options)
    plain = getattr(rja_kernels, f"{operator}_reference")(**inp, iterations=iterations, **options)
    through_op = call_operator(operator, inp, iterations, "reference", **options)
    for got in (plain, through_op):
        for g, e in zip(got, expect):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 3, 4, 3, 2), (1, 1, 2, 3, 2), (2, 4, 3, 5, 3)])
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_reference(operator, options, shape, iterations, shared):
    # The reference's analytic backward (the formulas every kernel implements) against finite differences.
    inp = _inputs(operator, shape, iterations, shared, requires_grad=True)
    names = list(inp)

    def fn(*tensors):
        return call_operator(operator, dict(zip(names, tensors)), iterations, "reference", **options)

    assert torch.autograd.gradcheck(fn, tuple(inp.values()), eps=1e-6, atol=1e-7)


def test_double_backward_on_reference(operator, options):
    inp = _inputs(operator, (2, 3, 4, 3, 2), 2, requires_grad=True)
    names = list(inp)

    def fn(*tensors):
        return call_operator(operator, dict(zip(names, tensors)), 2, "reference", **options)

    assert torch.autograd.gradgradcheck(fn, tuple(inp.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_double_backward_on_a_kernel_says_what_to_use(operator, backend):
    _require(backend, operator, torch.float64 if backend == "cpu" else torch.float32)
    dtype = torch.float64 if backend == "cpu" else torch.float32
    inp = _inputs(operator, (2, 3, 4, 3, 2), 2, dtype=dtype, requires_grad=True)
    xa, _ = call_operator(operator, inp, 2, backend)
    (grad,) = torch.autograd.grad(xa.sum(), inp["xa"], create_graph=True)
    with pytest.raises(RuntimeError, match=rf"double backward through rja::{operator} is not supported on "
                                           rf"backend='{backend}'.*backend='reference'"):
        grad.square().sum().backward()


f64, f32, f16, bf16 = DTYPES
# (shape, iterations, shared weights, dtype): every shape, T = 1..4, Tw = 1 and T, every dtype,
# without the full product (Triton's interpreter and the CUDA emulator are slow).
BACKEND_CASES = [
    (SHAPES[0], 1, False, f64), (SHAPES[3], 3, False, f64),
    (SHAPES[0], 2, True, f32), (SHAPES[1], 3, False, f32), (SHAPES[2], 2, False, f32), (SHAPES[3], 2, True, f32),
    (SHAPES[0], 4, False, f32),
    (SHAPES[2], 2, False, f16), (SHAPES[1], 1, True, f16),
    (SHAPES[3], 2, True, bf16), (SHAPES[0], 3, False, bf16),
]


def _case_id(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value).replace("torch.", "")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize(("shape", "iterations", "shared", "dtype"), BACKEND_CASES, ids=_case_id)
def test_backend_matches_reference(operator, options, backend, shape, iterations, shared, dtype):
    """Outputs and all gradients within the rule: the error the reference itself makes in this dtype."""
    _require(backend, operator, dtype)
    exact_inp = _inputs(operator, shape, iterations, shared)
    if dtype == torch.float64:
        exact = _forward_and_grads(operator, exact_inp, iterations, "reference", options)
        got = _forward_and_grads(operator, exact_inp, iterations, backend, options)
        for name, g, e in zip(["xa_out", "xv_out", *(f"grad_{n}" for n in exact_inp)], got, exact):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=name)
        return
    low_inp = {n: t.to(dtype) for n, t in exact_inp.items()}
    for name, error, tol in low_precision_check(operator, low_inp, iterations, backend, options):
        assert error <= tol, (name, error, tol)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_saturating_and_non_contiguous_inputs(operator, options, backend):
    _require(backend, operator)
    inp = _inputs(operator, (2, 5, 6, 9, 4), 2)
    inp["xa"] = inp["xa"] * 30  # tanh saturates
    strided = {n: t.float().transpose(-1, -2).contiguous().transpose(-1, -2) for n, t in inp.items()}
    assert not strided["xa"].is_contiguous()
    for name, error, tol in low_precision_check(operator, strided, 2, backend, options):
        assert error <= tol, (name, error, tol)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_gradient_of_one_output_only(operator, backend):
    # The loss uses xv only: xa's output gradient arrives as None and must count as zero.
    dtype = torch.float64 if backend in ("reference", "cpu") else torch.float32
    _require(backend, operator, dtype)
    inp = _inputs(operator, (2, 3, 4, 5, 2), 2, dtype=dtype, requires_grad=True)
    _, xv = call_operator(operator, inp, 2, backend)
    got = torch.autograd.grad(xv.sum(), list(inp.values()))
    _, xv_ref = getattr(rja_kernels, f"{operator}_reference")(**inp, iterations=2)
    expect = torch.autograd.grad(xv_ref.sum(), list(inp.values()))
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_empty_batch(operator, backend):
    _require(backend, operator)
    inp = _inputs(operator, (0, 4, 6, 5, 3), 2, dtype=torch.float32, requires_grad=True)
    xa, xv = call_operator(operator, inp, 2, backend)
    assert xa.shape == (0, 4, 6) and xv.shape == (0, 4, 5)
    (xa.sum() + xv.sum()).backward()
    for name, t in inp.items():
        assert t.grad is not None and t.grad.shape == t.shape, name
        assert not t.grad.any(), name


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_opcheck(operator, backend):
    dtype = torch.float64 if backend in ("reference", "cpu") else torch.float32
    _require(backend, operator, dtype)
    opcheck_backend(operator, backend, dtype=dtype)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_compile_fullgraph(operator, options, backend):
    compile_matches_eager(operator, backend, **options)


def test_fake_tensor_shapes(operator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        inp = _inputs(operator, (3, 4, 6, 5, 2), 3, dtype=torch.float32)
        xa, xv = call_operator(operator, inp, 3, "reference")
    assert xa.shape == (3, 4, 6) and xv.shape == (3, 4, 5)


class _Block(torch.nn.Module):
    def __init__(self, operator, inp, options):
        super().__init__()
        self.operator, self.options = operator, options
        self.weights = torch.nn.ParameterDict({n: torch.nn.Parameter(t) for n, t in inp.items() if n.startswith("w_")})

    def forward(self, xa, xv):
        return call_operator(self.operator, {"xa": xa, "xv": xv, **self.weights}, 2, "auto", **self.options)


def test_torch_export_keeps_the_op_as_one_node(operator, options, tmp_path):
    inp = _inputs(operator, (3, 4, 6, 5, 2), 2, dtype=torch.float32)
    block = _Block(operator, inp, options)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(block, (inp["xa"], inp["xv"]), dynamic_shapes=({0: batch}, {0: batch}))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(getattr(torch.ops.rja, operator).default) == 1
    torch.export.save(program, tmp_path / "block.pt2")
    reloaded = torch.export.load(tmp_path / "block.pt2").module()
    other = _inputs(operator, (5, 4, 6, 5, 2), 2, dtype=torch.float32, seed=3)  # another batch size
    for got, expect in zip(reloaded(other["xa"], other["xv"]), block(other["xa"], other["xv"])):
        torch.testing.assert_close(got, expect)


def test_unknown_backend(operator):
    inp = _inputs(operator, (2, 4, 6, 5, 3), 2)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        call_operator(operator, inp, 2, "fast")
    with pytest.raises(TypeError, match="backend must be a str"):
        call_operator(operator, inp, 2, None)


def test_forced_backend_that_cannot_run_says_why(operator):
    # float64 has no Triton path: the forced backend must refuse, never fall back silently.
    inp = _inputs(operator, (2, 4, 6, 5, 3), 2)
    with pytest.raises(rja_kernels.BackendUnavailableError, match="backend='triton' cannot run torch.float64"):
        call_operator(operator, inp, 2, "triton")


@pytest.mark.parametrize(("iterations", "error", "match"), [
    (0, ValueError, "iterations must be >= 1"),
    (-1, ValueError, "iterations must be >= 1"),
    (2.0, TypeError, "iterations must be an int"),
    (True, TypeError, "iterations must be an int"),
])
def test_bad_iterations(operator, iterations, error, match):
    with pytest.raises(error, match=match):
        call_operator(operator, _inputs(operator, (2, 4, 6, 5, 3), 2), iterations, "reference")


@pytest.mark.parametrize(("name", "value", "error", "match"), [
    ("xa", [[1.0]], TypeError, "xa must be a torch.Tensor"),
    ("w_hv", None, TypeError, "w_hv must be a torch.Tensor"),
    ("xv", torch.ones(2, 4, 5, dtype=torch.int64), TypeError, "xv must have a floating dtype"),
    ("w_ha", torch.ones(2, 3, 11, dtype=torch.float32), TypeError, "w_ha has dtype torch.float32"),
    ("xa", torch.ones(2, 4, 6, device="meta", dtype=torch.float64), ValueError, "xv is on cpu but xa is on meta"),
    ("w_ja", torch.ones(2, 4, 4, device="meta", dtype=torch.float64), ValueError, "w_ja is on meta"),
    ("xa", torch.ones(8, 6, dtype=torch.float64), ValueError, r"xa must be 3-D"),
    ("w_ja", torch.ones(4, 4, dtype=torch.float64), ValueError, r"w_ja must be 3-D"),
    ("xv", torch.ones(3, 4, 5, dtype=torch.float64), ValueError, r"xv must have shape \[B, L, dv\] with B=2, L=4"),
    ("xv", torch.ones(2, 5, 5, dtype=torch.float64), ValueError, r"xv must have shape \[B, L, dv\]"),
    ("xa", torch.ones(2, 4, 0, dtype=torch.float64), ValueError, "da must be >= 1"),
])
def test_bad_argument_shared_rules(operator, name, value, error, match):
    inp = _inputs(operator, (2, 4, 6, 5, 3), 2)
    inp[name] = value
    with pytest.raises(error, match=match):
        call_operator(operator, inp, 2, "reference")


def bad_weight_shape(operator, name, shape, match, iterations=2, tw=None):
    """A weight of the wrong shape raises a ValueError matching `match`."""
    inp = make_inputs(operator, 2, 4, 6, 5, iterations, k=3, tw=tw, dtype=torch.float64)
    if name is not None:
        inp[name] = torch.ones(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        call_operator(operator, inp, iterations, "reference")


