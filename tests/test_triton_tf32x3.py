"""3xTF32, the precision of the Triton paper-form backward's products with float32 gradient tiles for
16-bit inputs (`_triton_common.grad_precision`, `dot_f32`): the rounding to tf32 (`round_tf32`)
against known bit patterns, the split into two tf32 values (`split_tf32`), the three-product dot
(`dot_3xtf32` through `dot_f32`) against float64, and the backward it serves against the exact
float32 ("ieee") one. The kernels here run in the interpreter on CPU and compiled on a GPU: the
interpreter multiplies tf32 operands in float32, exactly as tensor cores multiply tf32 values."""

import math

import numpy as np
import pytest
import torch

from rja_kernels.backends import why_unavailable
from rja_kernels.testing import allow_tf32, call_operator, make_inputs

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402  (after the skip: triton is optional off Linux)

from rja_kernels import _triton_common as common  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAPER = "recursive_joint_attention"


@pytest.fixture(autouse=True)
def _triton_runs_here():
    reason = why_unavailable("triton", torch.device(DEVICE), torch.float32)
    if reason is not None:
        pytest.skip(reason)


@triton.jit
def _split_kernel(x, rounded, hi, lo, N: tl.constexpr):
    offs = tl.arange(0, N)
    v = tl.load(x + offs)
    tl.store(rounded + offs, common.round_tf32(v))
    h, low = common.split_tf32(v)
    tl.store(hi + offs, h)
    tl.store(lo + offs, low)


@triton.jit
def _dot_kernel(a, b, c, out, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr, PREC: tl.constexpr):
    rm = tl.arange(0, M)
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    at = tl.load(a + rm[:, None] * K + rk[None, :])  # kept in its dtype: a 16-bit tile is exact in tf32
    bt = tl.load(b + rk[:, None] * N + rn[None, :])
    acc = tl.load(c + rm[:, None] * N + rn[None, :])
    tl.store(out + rm[:, None] * N + rn[None, :], common.dot_f32(at, bt, acc, PREC))


def _bits(values: list[int]) -> torch.Tensor:
    """float32 tensor with these bit patterns (unsigned 32-bit ints)."""
    return torch.tensor(np.array(values, dtype=np.uint32).view(np.int32)).view(torch.float32).to(DEVICE)


def _as_uint(t: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in t.cpu().view(torch.int32).tolist()]


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`round_tf32`, and `split_tf32`'s hi and lo, of a 1-D float32 tensor (padded to a power of two)."""
    n = x.numel()
    size = max(16, triton.next_power_of_2(n))
    padded = torch.zeros(size, dtype=torch.float32, device=DEVICE)
    padded[:n] = x
    outs = [torch.empty_like(padded) for _ in range(3)]
    _split_kernel[(1,)](padded, *outs, N=size)
    return tuple(o[:n] for o in outs)


# (input bits, tf32 bits): round to nearest, ties away from zero (as cvt.rna.tf32.f32); the 13
# dropped bits are the low 13 of the 23-bit mantissa, unit 0x2000, half 0x1000.
ROUNDING = [
    (0x3F800000, 0x3F800000),  # 1.0: already tf32
    (0x3F800FFF, 0x3F800000),  # below halfway: down
    (0x3F801000, 0x3F802000),  # exactly halfway between 1 and 1 + 2^-10: away (to even would be down)
    (0x3F801001, 0x3F802000),  # above halfway: up
    (0x3F803000, 0x3F804000),  # halfway from an odd last bit: away (to even agrees here)
    (0xBF801000, 0xBF802000),  # negative halfway: away from zero, down
    (0xBF800FFF, 0xBF800000),  # negative below halfway: toward zero
    (0x3FFFF000, 0x40000000),  # 2 - 2^-11 halfway: the carry leaves the mantissa, the exponent steps to 2.0
    (0xBFFFF000, 0xC0000000),  # and negative, to -2.0
    (0x7F7FE000, 0x7F7FE000),  # the largest tf32
    (0x7F7FFFFF, 0x7F800000),  # the largest float32: past the largest tf32 by more than half, to inf
    (0x00000FFF, 0x00000000),  # subnormal below half of tf32's subnormal unit 2^-136: to zero
    (0x00001000, 0x00002000),  # subnormal halfway: away, to 2^-136
    (0x80001000, 0x80002000),  # negative subnormal halfway: to -2^-136
    (0x007FF000, 0x00800000),  # the largest subnormal's halfway: carries into the smallest normal
    (0x00000000, 0x00000000),  # +0
    (0x80000000, 0x80000000),  # -0 keeps its sign
    (0x7F800000, 0x7F800000),  # inf
    (0xFF800000, 0xFF800000),  # -inf
    (0x7FC00000, 0x7FC00000),  # quiet NaN, as it is
    (0x7FFFFFFF, 0x7FFFFFFF),  # NaN with every payload bit (the add would carry into the sign)
    (0xFFFFFFFF, 0xFFFFFFFF),  # negative NaN, all ones (the add would wrap to zero)
]


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # inf - inf
def test_round_tf32_bit_patterns():
    rounded, _, _ = _split(_bits([i for i, _ in ROUNDING]))
    got = _as_uint(rounded)
    for (x, want), have in zip(ROUNDING, got):
        assert have == want, f"round_tf32({x:#010x}) = {have:#010x}, expected {want:#010x}"


def _tf32_reference(x: torch.Tensor) -> torch.Tensor:
    """tf32(x) in float64 arithmetic (not bits): 11 significant bits, ties away from zero; normal x."""
    x64 = x.double().cpu()
    ulp = torch.exp2(torch.frexp(x64).exponent.double() - 11)  # |x| = m 2^e, 1/2 <= m < 1
    return (torch.sign(x64) * torch.floor(x64.abs() / ulp + 0.5) * ulp).float()


def test_split_tf32_parts_are_tf32_and_add_up():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4096, generator=gen) * torch.exp2(torch.randint(-60, 60, (4096,), generator=gen).float())
    rounded, hi, lo = _split(x.to(DEVICE))
    assert torch.equal(rounded.cpu(), _tf32_reference(x)), "round_tf32 differs from tf32 rounding in float64"
    assert torch.equal(hi, rounded)
    # Both parts exact tf32 values (13 low mantissa bits zero): what makes the GPU's tf32 products
    # exact, and equal to the interpreter's float32 ones.
    for name, part in (("hi", hi), ("lo", lo)):
        assert all(v & 0x1FFF == 0 for v in _as_uint(part)), f"{name} is not a tf32 value"
    # |x - hi| <= 2^-11 |x| and lo rounds that to 11 bits: |x - hi - lo| <= 2^-22 |x|.
    residual = (x.double() - hi.cpu().double() - lo.cpu().double()).abs()
    assert (residual <= 2.0 ** -22 * x.double().abs()).all()
    assert (lo.cpu().abs() <= 2.0 ** -11 * x.abs()).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # inf - inf
def test_split_tf32_of_inf_and_nan():
    # hi keeps them; lo is inf - inf or NaN - NaN: NaN, so their products are NaN, never finite.
    x = torch.tensor([math.inf, -math.inf, math.nan, 1.5], device=DEVICE)
    _, hi, lo = _split(x)
    assert hi[0] == math.inf and hi[1] == -math.inf and hi[2].isnan() and hi[3] == 1.5
    assert lo[:3].isnan().all() and lo[3] == 0


def _tf32_dot(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, prec: str) -> torch.Tensor:
    out = torch.empty_like(c)
    m, k = a.shape
    _dot_kernel[(1,)](a.to(DEVICE), b.to(DEVICE), c.to(DEVICE), out, M=m, K=k, N=b.shape[1], PREC=prec)
    return out.cpu()


# (M, K, N), a's dtype, b's dtype: a 16-bit operand is exact in tf32 (its product with the other's lo
# part only), float32 ones are split.
DOT_CASES = [
    ((16, 16, 16), torch.float32, torch.float32),
    ((32, 64, 16), torch.float32, torch.float32),
    ((16, 128, 32), torch.float32, torch.float32),
    ((16, 64, 32), torch.bfloat16, torch.float32),
    ((32, 64, 16), torch.float32, torch.float16),
    ((16, 32, 16), torch.float16, torch.bfloat16),
]


@pytest.mark.parametrize(("shape", "a_dtype", "b_dtype"), DOT_CASES,
                         ids=[f"{m}x{k}x{n}-{str(a)[6:]}-{str(b)[6:]}" for (m, k, n), a, b in DOT_CASES])
@pytest.mark.parametrize("with_acc", [False, True], ids=["acc0", "acc"])
def test_dot_3xtf32_against_float64(shape, a_dtype, b_dtype, with_acc):
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * k + n)
    a = (torch.randn(m, k, generator=gen) * torch.exp2(torch.randint(-4, 5, (m, k), generator=gen).float())).to(a_dtype)
    b = torch.randn(k, n, generator=gen).to(b_dtype)
    c = torch.randn(m, n, generator=gen) * 4 if with_acc else torch.zeros(m, n)
    exact = a.double() @ b.double() + c.double()
    got = _tf32_dot(a, b, c, common.TF32X3).double()
    # The bound. x = hi + lo + r with |x - hi| <= 2^-11 |x|, |lo| <= 2^-11 |x|, |r| <= 2^-22 |x|
    # (`split_tf32`). Of the exact product ab the three kept terms leave al bl + ah br + ar bh + (terms
    # under 2^-32 |a||b|), at most 3.01 * 2^-22 |a||b| < 2^-20 |a||b|. The products of tf32 values are
    # exact in float32; the sums are not: the three dots' K-term sums and their three additions into
    # the accumulator, to first order (K + 2) eps (S (1 + 2^-10) + |acc|), with eps = 2^-24 for round
    # to nearest (the interpreter) and 2^-23 allowed for tensor cores, which may truncate. So, with
    # S = sum_k |a_ik| |b_kj|: |err| <= 2^-20 S + (K + 3) 2^-23 (S + |acc|) (for K < 1000), about
    # K 2^-23 S for large K, a quarter of K 2^-21 S, so that one dropped cross term does not hide
    # under it (measured here: 8 to 112 times past it; one tf32 product, 13 to 165 times).
    s = a.double().abs() @ b.double().abs()
    bound = 2.0 ** -20 * s + (k + 3) * 2.0 ** -23 * (s + c.double().abs())
    err = (got - exact).abs()
    assert (err <= bound).all(), f"3xTF32 error {(err / bound).max().item():.3g} times the bound"
    # And far better than one tf32 product of the rounded operands (error about 2^-11 per operand),
    # computed here in float64 from the split's own hi parts: a dropped term or an unsplit float32
    # operand makes it about as bad.
    hi_a = a if a_dtype != torch.float32 else _split(a.flatten().to(DEVICE))[1].cpu().view(m, k)
    hi_b = b if b_dtype != torch.float32 else _split(b.flatten().to(DEVICE))[1].cpu().view(k, n)
    single = (hi_a.double() @ hi_b.double() + c.double() - exact).abs().max().item()
    if torch.float32 in (a_dtype, b_dtype):  # (two 16-bit operands: one exact product is all there is)
        assert err.max().item() * 64 <= single, (err.max().item(), single)


def test_precision_by_dtype():
    # float32 inputs keep their contract: exact IEEE products, or TF32 where the user allowed it;
    # 16-bit inputs take 3xTF32 for the products with float32 gradient tiles.
    with allow_tf32(False):
        assert common.grad_precision(torch.float32) == common.dot_precision(torch.float32) == "ieee"
    with allow_tf32(True):
        assert common.grad_precision(torch.float32) == common.dot_precision(torch.float32) == "tf32"
    for dtype in (torch.float16, torch.bfloat16):
        assert common.grad_precision(dtype) == common.TF32X3
        assert common.dot_precision(dtype) == "ieee"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_paper_backward_is_the_float32_one(dtype, monkeypatch):
    # The 16-bit paper-form backward on 3xTF32 against the same kernel with exact float32 ("ieee")
    # gradient products: about 2^-21 apart inside, so the gradients, rounded to the 16-bit dtype,
    # differ in few elements, by a rounding there.
    from rja_kernels import _triton_paper

    inp = make_inputs(PAPER, 2, 5, 24, 40, 2, dtype=dtype, device=DEVICE)
    gen = torch.Generator().manual_seed(2)
    grads_out = tuple(torch.randn(inp[n].shape, generator=gen).to(DEVICE, dtype) for n in ("xa", "xv"))

    def grads() -> tuple[torch.Tensor, ...]:
        leaves = {n: t.detach().requires_grad_() for n, t in inp.items()}
        xa, xv = call_operator(PAPER, leaves, 2, "triton", h_tanh=True, out_relu=True)
        return torch.autograd.grad((xa, xv), list(leaves.values()), grads_out)

    tf32x3 = grads()
    monkeypatch.setattr(_triton_paper, "grad_precision", lambda _dtype: "ieee")
    ieee = grads()
    differ = total = 0
    for name, a, b in zip(inp, tf32x3, ieee):
        # At most a rounding of the output apart, measured at the tensor's scale (a sum that cancels
        # to a small element keeps the absolute error of its terms).
        gap = (a.double() - b.double()).abs().max().item()
        assert gap <= torch.finfo(dtype).eps * b.double().abs().max().item(), f"grad {name}: {gap} apart"
        differ += (a != b).sum().item()
        total += a.numel()
    # Measured: float16 12 of 13284, bfloat16 none.
    assert differ <= 0.01 * total, f"{differ} of {total} gradient elements differ from the float32 backward's"
