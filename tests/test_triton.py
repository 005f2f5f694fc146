"""The "triton" backend against the reference: on CUDA when there is a GPU, otherwise on CPU in
Triton's interpreter (TRITON_INTERPRET=1, set for the whole test process by tests/conftest.py).

Accuracy rule for every dtype, flash-attention style: the kernel's error against a float64
reference of the same (rounded) inputs may be at most twice (float32: four times, see FACTOR)
the error of the reference computed in that dtype, plus an absolute floor of twice the error of
rounding the exact result to that dtype (flash-attention's `fwd_atol`): outputs of a recursion
store each iteration's features in the dtype, so their error is at least about one unit in the
last place, and the reference's own max error can be lucky.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rja_kernels
from rja_kernels.backends import BackendUnavailableError, why_unavailable
from rja_kernels.testing import low_precision_tolerance, make_inputs

CUDA = torch.cuda.is_available()

DEVICE = "cuda" if CUDA else "cpu"
_reason = why_unavailable("triton", torch.device(DEVICE), torch.float32)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"triton backend unavailable: {_reason}")


# float32 gets a wider factor: on GPUs the kernels' tanh uses the hardware's approximate exp and
# reciprocal (a few ulps, against torch's correctly rounded tanh), which at float32's level of
# error is visible, while in float16/bfloat16 the rounding of intermediates dominates.
FACTOR = {torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0}
NAMES = ["xa_out", "xv_out", "grad_xa", "grad_xv", "grad_w_ja", "grad_w_jv", "grad_w_a", "grad_w_v",
         "grad_w_ca", "grad_w_cv", "grad_w_ha", "grad_w_hv"]


def _run(inp: dict, iterations: int, backend: str, grads_out: tuple[torch.Tensor, torch.Tensor]):
    """Outputs and the gradients of every input for the upstream gradients `grads_out`."""
    inp = {n: t.detach().clone().requires_grad_() for n, t in inp.items()}
    out = rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend=backend)
    grads = torch.autograd.grad(out, list(inp.values()), [g.to(out[0].dtype) for g in grads_out])
    return [*out, *grads]


def check_against_reference(shape: tuple[int, ...], iterations: int, shared: bool, dtype: torch.dtype,
                            seed: int = 0, scale: float = 1.0, names: tuple[str, ...] = tuple(NAMES)) -> None:
    b, seq, da, dv, k = shape
    low = make_inputs(b, seq, da, dv, k, iterations, tw=1 if shared else None, dtype=torch.float64,
                      device=DEVICE, seed=seed)
    low["xa"] = low["xa"] * scale
    low = {n: t.to(dtype) for n, t in low.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    grads_out = tuple(torch.randn(low[n].shape, generator=gen).to(DEVICE, dtype) for n in ("xa", "xv"))
    # As in flash-attention's tests, the exact result is that of the inputs as given (already
    # rounded to `dtype`), so only the computation's own rounding is measured.
    expect = _run({n: t.double() for n, t in low.items()}, iterations, "reference", grads_out)
    ref_low = _run(low, iterations, "reference", grads_out)
    got = _run(low, iterations, "triton", grads_out)
    for name, g, r, e in zip(NAMES, got, ref_low, expect):
        if name not in names:
            continue
        assert g.dtype == dtype and g.shape == e.shape and g.is_contiguous(), name
        tol = low_precision_tolerance(r, e, factor=FACTOR[dtype])
        err = (g.double() - e).abs().max().item()
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g} ({dtype}, T={iterations}, shared={shared})"


# (B, L, da, dv, k): odd sizes (nothing a power of two or a multiple of 16), B = 1, tiny dims,
# and k, L above 16 so the padding goes to 32.
ODD = (2, 5, 24, 40, 12)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
def test_float32_odd_shape(iterations, shared):
    check_against_reference(ODD, iterations, shared, torch.float32)


@pytest.mark.parametrize("shape", [(1, 4, 6, 5, 3), (1, 1, 3, 8, 2), (2, 17, 33, 70, 20)],
                         ids=["B1-tiny", "L1", "L17-k20-multi-tile"])
def test_float32_shapes(shape):
    check_against_reference(shape, 2, False, torch.float32)
    check_against_reference(shape, 3, True, torch.float32, seed=1)


def _relu_margin(inp: dict, iterations: int) -> float:
    """min |Z| over every pre-activation of every iteration, in float64 (SPEC.md's formulas)."""
    x = {n: t.detach().double() for n, t in inp.items()}
    xa, xv = x["xa"], x["xv"]
    margin = float("inf")
    for i in range(iterations):
        w = {n: x[n][i if x[n].shape[0] > 1 else 0] for n in x if n.startswith("w_")}
        j = torch.cat([xa, xv], dim=-1)
        za = torch.tanh(xa.mT @ w["w_ja"] @ j * j.shape[-1] ** -0.5) @ w["w_ca"].mT + xa.mT @ w["w_a"].mT
        zv = torch.tanh(xv.mT @ w["w_jv"] @ j * j.shape[-1] ** -0.5) @ w["w_cv"].mT + xv.mT @ w["w_v"].mT
        margin = min(margin, za.abs().min().item(), zv.abs().min().item())
        xa, xv = (za.relu() @ w["w_ha"].mT).mT + xa, (zv.relu() @ w["w_hv"].mT).mT + xv
    return margin


def _seed_with_relu_margin(shape: tuple[int, ...], iterations: int, shared: bool, dtype: torch.dtype,
                           margin: float) -> int:
    """The first seed whose pre-activations all keep `margin` away from relu's kink.

    relu's derivative jumps at 0: a pre-activation within a dtype's rounding error of 0 lands on
    either side in any implementation (the reference in that dtype included) and moves the
    gradient by O(1), which no error-ratio rule can absorb (flash-attention's softmax has no such
    kink). The forward is continuous and needs no such care."""
    for seed in range(500):
        inp = make_inputs(*shape, iterations, tw=1 if shared else None, dtype=torch.float64, seed=seed)
        if _relu_margin({n: t.to(dtype) for n, t in inp.items()}, iterations) >= margin:
            return seed
    raise AssertionError(f"no seed < 500 keeps every pre-activation {margin} away from 0")


LOW = [torch.float16, torch.bfloat16]
# About ten times each dtype's rounding error of a pre-activation Z = O(1).
RELU_MARGIN = {torch.float16: 0.01, torch.bfloat16: 0.05}


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("iterations,shared", [(2, False), (3, True)], ids=["T2-Tw=T", "T3-Tw=1"])
def test_low_precision_forward(dtype, iterations, shared):
    check_against_reference(ODD, iterations, shared, dtype, names=("xa_out", "xv_out"))


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("iterations,shared", [(1, False), (2, False), (3, True)],
                         ids=["T1", "T2-Tw=T", "T3-Tw=1"])
def test_low_precision_gradients(dtype, iterations, shared):
    shape = (1, 4, 6, 5, 3)
    seed = _seed_with_relu_margin(shape, iterations, shared, dtype, RELU_MARGIN[dtype])
    check_against_reference(shape, iterations, shared, dtype, seed=seed)


def test_saturated_tanh():
    # Features of size 100 push |S| to ~1e4, deep into tanh's flat tails, where a naive
    # (e^x - e^-x) / (e^x + e^-x) gives inf / inf = nan. There the float32 rounding of S itself
    # (~1e-3) dominates every implementation's error, so this checks finiteness and a relative
    # error instead of the error-ratio rule.
    inp = make_inputs(1, 4, 6, 5, 3, 2, device=DEVICE)
    inp["xa"] = inp["xa"] * 100
    grads_out = (torch.randn_like(inp["xa"]), torch.randn_like(inp["xv"]))
    got = _run(inp, 2, "triton", grads_out)
    expect = _run({n: t.double() for n, t in inp.items()}, 2, "reference", grads_out)
    for name, g, e in zip(NAMES, got, expect):
        assert torch.isfinite(g).all(), name
        assert (g.double() - e).abs().max() <= 1e-4 * e.abs().max(), name


def test_empty_batch():
    inp = make_inputs(0, 5, 6, 7, 3, 2, device=DEVICE, requires_grad=True)
    xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="triton")
    assert xa.shape == (0, 5, 6) and xv.shape == (0, 5, 7)
    grads = torch.autograd.grad((xa.sum() + xv.sum()), list(inp.values()))
    for g, t in zip(grads, inp.values()):
        assert g.shape == t.shape and not g.any()


def test_non_contiguous_and_deterministic():
    inp = make_inputs(2, 5, 6, 7, 3, 2, device=DEVICE)
    strided = dict(inp, xa=inp["xa"].transpose(1, 2).contiguous().transpose(1, 2),
                   w_ca=inp["w_ca"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not strided["xa"].is_contiguous()
    grads_out = (torch.randn_like(inp["xa"]), torch.randn_like(inp["xv"]))
    first = _run(strided, 2, "triton", grads_out)
    second = _run(inp, 2, "triton", grads_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # same bits: no atomics anywhere


def test_float64_refused():
    inp = make_inputs(1, 2, 3, 4, 2, 1, dtype=torch.float64, device=DEVICE)
    with pytest.raises(BackendUnavailableError, match="float64"):
        rja_kernels.recursive_joint_attention(**inp, iterations=1, backend="triton")


def test_clear_error_without_interpreter():
    code = textwrap.dedent("""
        import torch, rja_kernels
        from rja_kernels.testing import make_inputs
        assert "triton" not in rja_kernels.available_backends("cpu")
        try:
            rja_kernels.recursive_joint_attention(**make_inputs(1, 2, 3, 4, 2, 1), iterations=1, backend="triton")
        except rja_kernels.BackendUnavailableError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "set TRITON_INTERPRET=1 to run the Triton kernels on CPU via the interpreter, or use a CUDA device" \
        in res.stdout


class Fusion(torch.nn.Module):
    def forward(self, inp: dict) -> torch.Tensor:
        xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="triton")
        return torch.cat([xa, xv], dim=-1).relu()


def test_compile_fullgraph():
    # The rja op is opaque to dynamo (custom op + fake kernel), so this works with interpreted
    # kernels on CPU too.
    inp = make_inputs(2, 5, 6, 7, 3, 2, device=DEVICE, requires_grad=True)
    eager = Fusion()(inp)
    torch._dynamo.reset()
    compiled = torch.compile(Fusion(), fullgraph=True)(inp)
    torch.testing.assert_close(compiled, eager)
    grads_eager = torch.autograd.grad(eager.square().sum(), list(inp.values()))
    grads_compiled = torch.autograd.grad(compiled.square().sum(), list(inp.values()))
    for g, e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g, e)


@pytest.mark.skipif(not CUDA, reason="inductor can only capture compiled (not interpreted) Triton kernels")
def test_compile_inner_triton_op():
    # rja::triton_forward/backward are torch.library.triton_ops: compiled, inductor sees the kernels.
    import rja_kernels._triton_kernels  # noqa: F401  (defines the ops)

    inp = make_inputs(2, 5, 6, 7, 3, 2, device=DEVICE)

    def f(*args):
        xa, xv, _, _ = torch.ops.rja.triton_forward(*args, 2)
        return xa * 2, xv * 2

    torch._dynamo.reset()
    for g, e in zip(torch.compile(f, fullgraph=True)(*inp.values()), f(*inp.values())):
        torch.testing.assert_close(g, e)
