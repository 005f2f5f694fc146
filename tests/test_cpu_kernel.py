"""The fused C++ CPU backend ("cpu") of both operators against the reference: values, gradients,
shapes that exercise every tile edge, determinism across thread counts, the op contract, and the
floating-point environment (subnormals, NaN gradients). The tanh of the kernels: test_cpu_tanh.py."""

from __future__ import annotations

import time

import pytest
import torch
from operator_checks import low_precision_check

from rja_kernels.backends import BackendUnavailableError, resolve_backend, why_unavailable
from rja_kernels.testing import (
    OPERATORS,
    call_operator,
    compile_matches_eager,
    low_precision_tolerance,
    make_inputs,
    opcheck_backend,
)

PAPER, JCA = "recursive_joint_attention", "joint_cross_attention"
_missing = why_unavailable("cpu", torch.device("cpu"), torch.float32, PAPER)
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"cpu backend unavailable: {_missing}")

# (B, L, da, dv) of the paper's form. Its kernel tiles d in columns of 4 vectors (64 float32 / 32
# float64) and the rows of C in chunks of 64: d = 97 and 200 leave ragged last tiles, da = 70 and
# 130 a ragged last chunk, L = 19 > 16 pads the [., L] operands to two vectors, L = 1 is the
# degenerate sequence, B = 1 splits a sample's column tiles into groups (partial sums); d = 64 and
# 256 are powers of 4, whose scale 1/sqrt(d) the forward folds into P; da, dv = 96, 160 are whole
# vectors, where the GEMM of U writes x + U itself.
PAPER_SHAPES = [(2, 5, 40, 57), (1, 7, 70, 33), (3, 16, 33, 17), (2, 1, 24, 40), (1, 19, 130, 70),
                (2, 9, 96, 160)]
# (B, L, da, dv, k) of the JCA form: row blocks of 2 vectors (32 float32 / 16 float64 rows) and
# d-chunks of 96; k = 5 and 12 pad the [., k] operands.
JCA_SHAPES = [(2, 5, 24, 40, 12), (1, 7, 16, 9, 5), (3, 16, 33, 17, 32), (2, 1, 50, 70, 3)]
SWITCHES = [{}, {"h_tanh": True}, {"out_relu": True}, {"h_tanh": True, "out_relu": True}]


def _cases(operator: str) -> list[tuple[tuple[int, ...], dict]]:
    if operator == PAPER:
        return [(shape, {}) for shape in PAPER_SHAPES]
    return [(shape[:4], {"k": shape[4]}) for shape in JCA_SHAPES]


def _names(operator: str) -> list[str]:
    return ["xa_T", "xv_T", *(f"grad {n}" for n in ("xa", "xv", *OPERATORS[operator].weight_names))]


def outputs_and_grads(operator: str, inp: dict, iterations: int, backend: str, seed: int = 1,
                      grad_out: tuple[torch.Tensor, torch.Tensor] | None = None, **options) -> list[torch.Tensor]:
    """(xa_T, xv_T) and the gradients of every input for fixed random upstream gradients."""
    inp = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    xa, xv = call_operator(operator, inp, iterations, backend, **options)
    if grad_out is None:
        gen = torch.Generator().manual_seed(seed)
        grad_out = tuple(torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (xa, xv))
    grads = torch.autograd.grad((xa, xv), list(inp.values()), grad_out)
    return [xa.detach(), xv.detach(), *grads]


def assert_matches_reference(operator, inp, iterations, rtol=1e-10, atol=1e-12, **options):
    """float64: elementwise within rtol, plus atol times the tensor's largest magnitude, or 50x the
    change that perturbing every input by 1e-16 (relative; half a float64 ulp) makes in the
    reference, when that is larger: with T = 4 and shared weights the features grow ~10x per
    iteration and such a perturbation already moves the gradients by ~1e-11 of their size."""
    got = outputs_and_grads(operator, inp, iterations, "cpu", **options)
    want = outputs_and_grads(operator, inp, iterations, "reference", **options)
    gen = torch.Generator().manual_seed(7)
    nudged = {k: v * (1 + 1e-16 * torch.randn(v.shape, generator=gen, dtype=v.dtype)) for k, v in inp.items()}
    moved = outputs_and_grads(operator, nudged, iterations, "reference", **options)
    for name, g, w, m in zip(_names(operator), got, want, moved):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if not w.numel():
            continue
        tol = max(atol * max(1.0, w.abs().max().item()), 50 * (m - w).abs().max().item())
        torch.testing.assert_close(g, w, rtol=rtol, atol=tol, msg=lambda msg, n=name: f"{n}: {msg}")


@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("options", SWITCHES, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("case", _cases(PAPER), ids=lambda c: str(c[0]))
def test_paper_float64_matches_reference(case, options, iterations, shared):
    shape, sizes = case
    inp = make_inputs(PAPER, *shape, iterations, **sizes, tw=1 if shared else None, dtype=torch.float64,
                      seed=iterations)
    assert_matches_reference(PAPER, inp, iterations, **options)


@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("case", _cases(JCA), ids=lambda c: str(c[0] + (c[1]["k"],)))
def test_jca_float64_matches_reference(case, iterations, shared):
    shape, sizes = case
    inp = make_inputs(JCA, *shape, iterations, **sizes, tw=1 if shared else None, dtype=torch.float64,
                      seed=iterations)
    assert_matches_reference(JCA, inp, iterations)


FLOAT32_CASES = [
    (PAPER, (2, 5, 40, 57), {}, {}), (PAPER, (3, 16, 33, 17), {}, {"h_tanh": True, "out_relu": True}),
    (PAPER, (1, 19, 130, 70), {}, {"h_tanh": True}),
    (PAPER, (4, 16, 128, 96), {}, {}),
    (PAPER, (2, 16, 256, 192), {}, {"out_relu": True}),
    (JCA, (2, 5, 24, 40), {"k": 12}, {}), (JCA, (3, 16, 33, 17), {"k": 32}, {}), (JCA, (4, 16, 128, 96), {"k": 32}, {}),
]


@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize(("operator", "shape", "sizes", "options"), FLOAT32_CASES,
                         ids=lambda v: v if isinstance(v, str) else str(v) if isinstance(v, tuple) else None)
def test_float32_within_reference_error(operator, shape, sizes, options, shared):
    """The float32 kernel may be off from the exact (float64) result at its inputs by at most 3x the
    error the float32 reference itself makes (tests/operator_checks.low_precision_check, after
    rja_kernels.testing.low_precision_tolerance; flash-attention uses 2x). 3x because the kernel's
    errors are independent of the reference's rather than the same ones: it sums in tiles and
    chunks in another order than MKL, folds 1/sqrt(d) into w_j, recomputes C in the backward, and
    its tanh is within 5.3 ulp."""
    iterations = 2
    inp = make_inputs(operator, *shape, iterations, **sizes, tw=1 if shared else None)
    for name, err, tol in low_precision_check(operator, inp, iterations, "cpu", options):
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_saturated_tanh(operator):
    """Large features drive |S| far past tanh's saturation (the kernel's float32 tanh clamps at 9)."""
    sizes = {"k": 5} if operator == JCA else {}
    inp = make_inputs(operator, 2, 6, 20, 12, 2, **sizes, dtype=torch.float64)
    inp["xa"] = inp["xa"] * 30
    options = {"h_tanh": True} if operator == PAPER else {}
    want = outputs_and_grads(operator, inp, 2, "reference", **options)
    for g, w in zip(outputs_and_grads(operator, inp, 2, "cpu", **options), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    inp32 = {k: v.float() for k, v in inp.items()}
    for name, err, tol in low_precision_check(operator, inp32, 2, "cpu", options):
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("operator", [PAPER, JCA])
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
def test_gradcheck(operator, shared):
    sizes = {"k": 3} if operator == JCA else {}
    options = {"h_tanh": True, "out_relu": True} if operator == PAPER else {}
    inp = make_inputs(operator, 2, 3, 5, 4, 2, **sizes, tw=1 if shared else None, dtype=torch.float64,
                      requires_grad=True)
    names = list(inp)

    def fn(*tensors):
        return call_operator(operator, dict(zip(names, tensors)), 2, "cpu", **options)

    assert torch.autograd.gradcheck(fn, tuple(inp.values()))


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_empty_batch(operator):
    sizes = {"k": 3} if operator == JCA else {}
    inp = make_inputs(operator, 0, 4, 6, 5, 2, **sizes, requires_grad=True)
    xa, xv = call_operator(operator, inp, 2, "cpu")
    assert xa.shape == (0, 4, 6) and xv.shape == (0, 4, 5)
    grads = torch.autograd.grad((xa.sum() + xv.sum()), list(inp.values()))
    for g, t in zip(grads, inp.values()):
        assert g.shape == t.shape and not g.any()


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_non_contiguous_inputs(operator):
    sizes = {"k": 12} if operator == JCA else {}
    inp = make_inputs(operator, 3, 5, 24, 40, 2, **sizes, dtype=torch.float64)
    # Same values through transposed, sliced and expanded views.
    strided = {}
    for name, t in inp.items():
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        strided[name] = wide[..., ::2] if name != "xa" else t.mT.contiguous().mT
    assert not any(t.is_contiguous() for t in strided.values())
    options = {"h_tanh": True, "out_relu": True} if operator == PAPER else {}
    got = outputs_and_grads(operator, strided, 2, "cpu", **options)
    want = outputs_and_grads(operator, inp, 2, "reference", **options)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# Large enough that every phase splits between 2 threads; B = 1 also splits the samples' work
# (paper form: column-tile groups with partial sums; JCA form: row-block parts).
THREAD_CASES = [(PAPER, (8, 16, 128, 128), {}), (PAPER, (1, 16, 256, 192), {}),
                (JCA, (8, 16, 128, 128), {"k": 32}), (JCA, (1, 16, 256, 256), {"k": 32})]


@pytest.mark.parametrize(("operator", "shape", "sizes"), THREAD_CASES,
                         ids=lambda v: v if isinstance(v, str) else str(v) if isinstance(v, tuple) else None)
def test_thread_count_and_determinism(operator, shape, sizes):
    """Every output element is summed in one order fixed by the shapes, never by the threads:
    1 and 2 threads, and any two runs, give the same bits."""
    inp = make_inputs(operator, *shape, 2, **sizes)
    options = {"out_relu": True} if operator == PAPER else {}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(operator, inp, 2, "cpu", **options)
        torch.set_num_threads(2)
        two = outputs_and_grads(operator, inp, 2, "cpu", **options)
        again = outputs_and_grads(operator, inp, 2, "cpu", **options)
    finally:
        torch.set_num_threads(threads)
    for name, a, b, c in zip(_names(operator), one, two, again):
        assert torch.equal(a, b), f"{name} differs between 1 and 2 threads"
        assert torch.equal(b, c), f"{name} differs between runs"


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_opcheck(operator):
    opcheck_backend(operator, "cpu")


@pytest.mark.parametrize(("operator", "options"), [(PAPER, {}), (PAPER, {"h_tanh": True, "out_relu": True}),
                                                   (JCA, {})], ids=["paper", "paper-switches", "jca"])
def test_compile_fullgraph(operator, options):
    compile_matches_eager(operator, "cpu", **options)


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_auto_picks_cpu_and_reasons(operator):
    for dtype in (torch.float32, torch.float64):
        assert resolve_backend(operator, "auto", torch.device("cpu"), dtype) == "cpu"
    assert "float16" in why_unavailable("cpu", torch.device("cpu"), torch.float16, operator)
    assert "CPU tensors only" in why_unavailable("cpu", torch.device("cuda"), torch.float32, operator)
    sizes = {"k": 2} if operator == JCA else {}
    inp = make_inputs(operator, 1, 2, 3, 3, 1, **sizes, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match="float16"):
        call_operator(operator, inp, 1, "cpu")


# ---- NaN gradients ----------------------------------------------------------------------------


def _all_masked(operator: str, out_relu: bool) -> dict:
    """Inputs whose ReLU masks are all zero: the paper form's G = (x w_c) C is 0 with w_c = 0 (and
    its U = H w_h is 0 with w_h = 0), the JCA form's Z = C w_c^T + x^T w_u^T is 0 with both zero."""
    sizes = {"k": 4} if operator == JCA else {}
    inp = make_inputs(operator, 2, 5, 9, 7, 2, **sizes, dtype=torch.float64)
    zero = ("w_ha", "w_hv") if out_relu else ("w_ca", "w_cv") if operator == PAPER else ("w_ca", "w_cv", "w_a", "w_v")
    for name in zero:
        inp[name] = torch.zeros_like(inp[name])
    return inp


@pytest.mark.parametrize(("operator", "out_relu"), [(PAPER, False), (PAPER, True), (JCA, False)],
                         ids=["paper-relu(G)", "paper-relu(U)", "jca-relu(Z)"])
def test_nan_gradient_propagates_through_relu_masks(operator, out_relu):
    """A NaN upstream gradient stays NaN through a ReLU mask that is 0, as in the reference (its
    masks multiply: NaN * 0 = NaN); a mask that selects would silently turn it into 0."""
    inp = _all_masked(operator, out_relu)
    options = {"out_relu": True} if out_relu else {}
    gen = torch.Generator().manual_seed(3)
    grad_out = [torch.randn(2, 5, dm, generator=gen, dtype=torch.float64) for dm in (9, 7)]
    grad_out[0][1, 2, 3] = float("nan")
    got = outputs_and_grads(operator, inp, 2, "cpu", grad_out=tuple(grad_out), **options)
    want = outputs_and_grads(operator, inp, 2, "reference", grad_out=tuple(grad_out), **options)
    nan_somewhere = False
    for name, g, w in zip(_names(operator), got, want):
        assert torch.equal(g.isnan(), w.isnan()), f"{name}: NaN at other positions than the reference's"
        nan_somewhere |= bool(w.isnan().any())
        torch.testing.assert_close(g.nan_to_num(0.0), w.nan_to_num(0.0), rtol=1e-10, atol=1e-12)
    assert nan_somewhere


# ---- the floating-point environment -------------------------------------------------------------

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def _subnormal_inputs(operator: str, b: int = 2, seq: int = 6, da: int = 20, dv: int = 12) -> dict:
    """float32 inputs whose audio features are subnormal (and so is everything computed from them)."""
    sizes = {"k": 5} if operator == JCA else {}
    inp = make_inputs(operator, b, seq, da, dv, 2, **sizes)
    inp["xa"] = (inp["xa"].double() * SUBNORMAL).float()
    assert (inp["xa"].abs() < torch.finfo(torch.float32).tiny).all() and inp["xa"].any()
    return inp


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_caller_floating_point_environment_unchanged(operator):
    """The kernels flush subnormals to zero (MXCSR FTZ and DAZ) in their own threads only: the
    caller's MXCSR is the same afterwards, and torch's own kernels, in the calling thread and in
    the intra-op pool the kernels used, still compute with subnormals."""
    def mxcsr():  # the control bits; bits 0-5 are sticky exception flags that torch's ops raise
        return torch.ops.rja.cpu_mxcsr() & ~0x3F

    before = mxcsr()
    assert before & 0x8040 == 0, "the test process itself runs with FTZ/DAZ"
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outputs_and_grads(operator, _subnormal_inputs(operator, b=8, da=128, dv=128), 2, "cpu")
            assert mxcsr() == before
    finally:
        torch.set_num_threads(threads)
    tiny = torch.full((1 << 20,), SUBNORMAL)  # large enough for torch to use its thread pool
    assert torch.equal(tiny * 1.0, tiny), "subnormals were flushed after the kernel ran"


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_subnormal_inputs_match_reference_up_to_flushing(operator):
    """With DAZ a subnormal input counts as zero: outputs and gradients are the reference's for the
    inputs with their subnormals flushed to zero, within the float32 tolerance rule, plus absolute
    errors the size of a subnormal. (Not the reference's for the subnormal inputs themselves: there
    G_v's audio columns are ~1e-39 instead of 0, and relu' at 1e-39 is 1, not 0.)"""
    inp = _subnormal_inputs(operator)
    flushed = {k: torch.where(v.abs() < torch.finfo(v.dtype).tiny, 0.0, v) for k, v in inp.items()}
    options = {"h_tanh": True, "out_relu": True} if operator == PAPER else {}
    exact = outputs_and_grads(operator, {k: v.double() for k, v in flushed.items()}, 2, "reference", **options)
    ref32 = outputs_and_grads(operator, flushed, 2, "reference", **options)
    got = outputs_and_grads(operator, inp, 2, "cpu", **options)
    for name, g, r, e in zip(_names(operator), got, ref32, exact):
        tol = low_precision_tolerance(r, e, factor=3.0) + 4 * torch.finfo(torch.float32).tiny
        err = (g.double() - e).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_subnormal_inputs_are_not_slow(operator):
    """Without FTZ/DAZ every multiply-add with a subnormal operand took a microcode assist: the
    forward ran ~16x slower on subnormal features. With them it runs at the normal speed (single
    thread, CPU time, best of 5 runs each, interleaved: robust to a loaded machine)."""
    sizes = {"k": 32} if operator == JCA else {}
    normal = make_inputs(operator, 8, 16, 128, 128, 2, **sizes)
    subnormal = {**normal, "xa": (normal["xa"] * SUBNORMAL).float(), "xv": (normal["xv"] * SUBNORMAL).float()}
    threads = torch.get_num_threads()
    best = {"normal": float("inf"), "subnormal": float("inf")}
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            for _ in range(5):
                for name, inp in (("normal", normal), ("subnormal", subnormal)):
                    start = time.process_time()
                    call_operator(operator, inp, 2, "cpu")
                    best[name] = min(best[name], time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    assert best["subnormal"] < 2.5 * best["normal"], best
