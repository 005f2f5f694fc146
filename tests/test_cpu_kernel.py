"""The fused C++ CPU backend ("cpu") against the reference: values, gradients, op contract."""

import pytest
import torch

import rja_kernels
from rja_kernels.backends import BackendUnavailableError, resolve_backend, why_unavailable
from rja_kernels.op import WEIGHT_NAMES
from rja_kernels.testing import compile_matches_eager, low_precision_tolerance, make_inputs, opcheck_backend

pytestmark = pytest.mark.skipif(
    why_unavailable("cpu", torch.device("cpu"), torch.float32) is not None,
    reason=f"cpu backend unavailable: {why_unavailable('cpu', torch.device('cpu'), torch.float32)}",
)

NAMES = ("xa", "xv", *WEIGHT_NAMES)
# (B, L, da, dv, k): the SPEC's odd shape, one sample, and row counts that are not multiples of the
# kernel's row block (16 float32 / 8 float64 rows) nor of its 6-column micro-tiles.
SHAPES = [(2, 5, 24, 40, 12), (1, 7, 16, 9, 5), (3, 16, 33, 17, 32)]


def outputs_and_grads(inp: dict, iterations: int, backend: str, seed: int = 1) -> list[torch.Tensor]:
    """(xa_T, xv_T) and the gradients of every input for fixed random upstream gradients."""
    inp = {k: v.detach().requires_grad_(True) for k, v in inp.items()}
    xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    ga = torch.randn(xa.shape, generator=gen, dtype=torch.float64).to(xa.dtype)
    gv = torch.randn(xv.shape, generator=gen, dtype=torch.float64).to(xv.dtype)
    grads = torch.autograd.grad((xa, xv), list(inp.values()), (ga, gv))
    return [xa.detach(), xv.detach(), *grads]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
def test_float64_matches_reference(shape, iterations, shared):
    inp = make_inputs(*shape, iterations, tw=1 if shared else None, dtype=torch.float64, seed=iterations)
    got = outputs_and_grads(inp, iterations, "cpu")
    want = outputs_and_grads(inp, iterations, "reference")
    for name, g, w in zip(("xa_T", "xv_T", *(f"grad {n}" for n in NAMES)), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("shape", [*SHAPES, (4, 16, 128, 96, 32)], ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
def test_float32_within_reference_error(shape, shared):
    """The float32 kernel may be off from the exact (float64) result by at most 3x the error the
    float32 reference itself makes (rja_kernels.testing.low_precision_tolerance; flash-attention
    uses 2x). 3x because the kernel's errors are independent of the reference's rather than the
    same ones: it sums in row blocks and d-chunks in another order than MKL, recomputes Ca in the
    backward, and its tanh is within 5 ulp; over 20 seeds and shapes up to d = 512 the measured
    ratio stays below 2.5 (before chunked summation it reached 5)."""
    iterations = 2
    inp = make_inputs(*shape, iterations, tw=1 if shared else None, dtype=torch.float64)
    exact = outputs_and_grads(inp, iterations, "reference")
    inp32 = {k: v.float() for k, v in inp.items()}
    ref32 = outputs_and_grads(inp32, iterations, "reference")
    got = outputs_and_grads(inp32, iterations, "cpu")
    for name, g, r, e in zip(("xa_T", "xv_T", *(f"grad {n}" for n in NAMES)), got, ref32, exact):
        assert g.dtype == torch.float32
        tol = low_precision_tolerance(r, e, factor=3.0)
        err = (g.double() - e).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"


def test_saturated_tanh():
    """Large features drive |S| far past tanh's saturation (the kernel's tanh clamps at 9)."""
    inp = make_inputs(2, 6, 20, 12, 5, 2, dtype=torch.float64)
    inp["xa"] = inp["xa"] * 30
    got = outputs_and_grads(inp, 2, "cpu")
    want = outputs_and_grads(inp, 2, "reference")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    inp32 = {k: v.float() for k, v in inp.items()}
    for g, w in zip(outputs_and_grads(inp32, 2, "cpu"), want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * w.abs().max().item())


@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
def test_gradcheck(shared):
    inp = make_inputs(2, 3, 5, 4, 3, 2, tw=1 if shared else None, dtype=torch.float64, requires_grad=True)

    def fn(*tensors):
        return rja_kernels.recursive_joint_attention(*tensors, iterations=2, backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(inp.values()))


def test_vectorised_tanh_accuracy():
    """The kernel's own tanh (torch.ops.rja.cpu_tanh applies it) against float64 tanh, in units
    of float32 spacing at the exact value: large |x|, tiny and subnormal x, +-inf and NaN."""
    x = torch.cat([torch.linspace(-12, 12, 2_000_001, dtype=torch.float64),
                   torch.logspace(-45, 2, 10_000, dtype=torch.float64),
                   torch.tensor([0.0, 1e3, 1e30, float("inf")], dtype=torch.float64)])
    x = torch.cat([x, -x]).float()
    exact = torch.tanh(x.double())
    got = torch.ops.rja.cpu_tanh(x)
    rounded = exact.float().abs()
    spacing = (rounded.nextafter(torch.tensor(2.0)) - rounded).double()  # float32 ulp, > 0
    ulp = ((got.double() - exact).abs() / spacing).max().item()
    assert ulp <= 6, f"float32 tanh off by {ulp:.2f} ulp"
    assert got.abs().max().item() <= 1.0
    assert torch.ops.rja.cpu_tanh(torch.tensor([float("nan")] * 9)).isnan().all()
    xd = torch.linspace(-25, 25, 100_003, dtype=torch.float64)
    torch.testing.assert_close(torch.ops.rja.cpu_tanh(xd), torch.tanh(xd), rtol=5e-16, atol=0)  # 2 ulp


def test_empty_batch():
    inp = make_inputs(0, 4, 6, 5, 3, 2, requires_grad=True)
    xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="cpu")
    assert xa.shape == (0, 4, 6) and xv.shape == (0, 4, 5)
    grads = torch.autograd.grad((xa.sum() + xv.sum()), list(inp.values()))
    for g, t in zip(grads, inp.values()):
        assert g.shape == t.shape and not g.any()


def test_non_contiguous_inputs():
    inp = make_inputs(3, 5, 24, 40, 12, 2, dtype=torch.float64)
    # Same values through transposed, sliced and expanded views.
    strided = {}
    for name, t in inp.items():
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        strided[name] = wide[..., ::2] if name != "xa" else t.mT.contiguous().mT
    assert not any(t.is_contiguous() for t in strided.values())
    got = outputs_and_grads(strided, 2, "cpu")
    want = outputs_and_grads(inp, 2, "reference")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# Large enough that the kernel splits the work between 2 threads; B=1 also splits the sample.
@pytest.mark.parametrize("shape", [(8, 16, 128, 128, 32), (1, 16, 256, 256, 32)], ids=str)
def test_thread_count_and_determinism(shape):
    """Forward rows are independent, and the backward's partial sums are cut by shape, not by
    thread: any thread count, and any run, gives the same bits."""
    inp = make_inputs(*shape, 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(inp, 2, "cpu")
        torch.set_num_threads(2)
        two = outputs_and_grads(inp, 2, "cpu")
        again = outputs_and_grads(inp, 2, "cpu")
    finally:
        torch.set_num_threads(threads)
    for name, a, b, c in zip(("xa_T", "xv_T", *(f"grad {n}" for n in NAMES)), one, two, again):
        assert torch.equal(a, b), f"{name} differs between 1 and 2 threads"
        assert torch.equal(b, c), f"{name} differs between runs"


def test_opcheck():
    opcheck_backend("cpu")


def test_compile_fullgraph():
    compile_matches_eager("cpu")


def test_auto_picks_cpu_and_reasons():
    for dtype in (torch.float32, torch.float64):
        assert resolve_backend("auto", torch.device("cpu"), dtype) == "cpu"
    assert "float16" in why_unavailable("cpu", torch.device("cpu"), torch.float16)
    assert "CPU tensors only" in why_unavailable("cpu", torch.device("cuda"), torch.float32)
    inp = make_inputs(1, 2, 3, 3, 2, 1, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match="float16"):
        rja_kernels.recursive_joint_attention(**inp, iterations=1, backend="cpu")
