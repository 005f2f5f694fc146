"""The CPU kernels' own float32 tanh (csrc/cpu/vec_math.h, applied elementwise by the test op
torch.ops.rja.cpu_tanh) against float64 tanh.

Its error bound, stated in vec_math.h, was measured by sweeping every float32 in [0, 9] (beyond 9
the kernel returns +-1, which tanh rounds to): at most 3.113e-7 absolute and 5.223 ulp, both at
x = 8.790288. The sweep takes minutes; the default test checks every 61st float32 plus every
float32 around the worst case, and RJA_FULL_TANH_SWEEP=1 runs the full sweep."""

from __future__ import annotations

import os

import pytest
import torch

from rja_kernels.backends import why_unavailable

_missing = why_unavailable("cpu", torch.device("cpu"), torch.float32, "recursive_joint_attention")
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"cpu backend unavailable: {_missing}")

# The bound stated in csrc/cpu/vec_math.h (rounded up in the last digit).
MAX_ABS = 3.12e-7
MAX_ULP = 5.23
WORST_X = 8.790288
NINE = torch.tensor(9.0).view(torch.int32).item()  # bit pattern of 9.0f


def errors(bits: torch.Tensor) -> tuple[float, float, float]:
    """(max absolute error, max error in ulp, x of the latter) of cpu_tanh on the float32 values
    with these bit patterns; an ulp is the float32 spacing at the exact value (the spacing below a
    power of two counts as the one above it: never an overestimate)."""
    x = bits.view(torch.float32)
    exact = torch.tanh(x.double())
    err = (torch.ops.rja.cpu_tanh(x).double() - exact).abs()
    _, exponent = torch.frexp(exact.float().abs())
    spacing = torch.ldexp(torch.ones_like(exact), (exponent - 24).clamp(min=-149).double())
    ulp = err / spacing
    worst = int(ulp.argmax())
    return err.max().item(), ulp[worst].item(), x[worst].item()


def sweep(step: int, chunk: int = 1 << 24) -> tuple[float, float, float]:
    worst_abs, worst_ulp, worst_x = 0.0, 0.0, 0.0
    for start in range(0, NINE + 1, chunk * step):
        bits = torch.arange(start, min(start + chunk * step, NINE + 1), step, dtype=torch.int32)
        a, u, x = errors(bits)
        worst_abs = max(worst_abs, a)
        if u > worst_ulp:
            worst_ulp, worst_x = u, x
    return worst_abs, worst_ulp, worst_x


def test_error_bound_sampled():
    worst_abs, worst_ulp, _ = sweep(step=61)
    assert worst_abs <= MAX_ABS and worst_ulp <= MAX_ULP, (worst_abs, worst_ulp)
    center = torch.tensor(WORST_X).view(torch.int32).item()
    worst_abs, worst_ulp, x = errors(torch.arange(center - (1 << 18), center + (1 << 18), dtype=torch.int32))
    assert worst_abs <= MAX_ABS and worst_ulp <= MAX_ULP, (worst_abs, worst_ulp)
    # The bound is tight: the worst case is where the comment says (for the vectorised tanh; a
    # build without AVX2 uses libm's, within an ulp).
    if worst_ulp > 1:
        assert worst_ulp > MAX_ULP - 0.01 and abs(x - WORST_X) < 1e-6, (worst_ulp, x)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RJA_FULL_TANH_SWEEP") != "1", reason="set RJA_FULL_TANH_SWEEP=1 (minutes)")
def test_error_bound_every_float32():
    worst_abs, worst_ulp, x = sweep(step=1)
    assert worst_abs <= MAX_ABS and worst_ulp <= MAX_ULP, (worst_abs, worst_ulp, x)


def test_odd_saturated_and_special_values():
    x = torch.cat([torch.linspace(0, 12, 100_001), torch.tensor([1e-45, 1e-40, 1e-30, 1e3, 1e30, float("inf")])])
    got = torch.ops.rja.cpu_tanh(x)
    assert torch.equal(torch.ops.rja.cpu_tanh(-x), -got)  # odd, -0 included
    assert got.abs().max().item() <= 1.0
    assert (1 - got[x >= 9] <= 6e-8).all()  # within an ulp of 1 (exactly 1 for the vectorised tanh)
    assert torch.equal(got[x >= 10], torch.ones_like(got[x >= 10]))
    tiny = x[(x > 0) & (x < 1e-4)]
    assert torch.equal(torch.ops.rja.cpu_tanh(tiny), tiny)  # tanh(x) = x to float32 precision (subnormals too)
    assert torch.ops.rja.cpu_tanh(torch.tensor([float("nan")] * 19)).isnan().all()
    # Lengths that are not a multiple of the vector width go through masked tail loads.
    for n in (1, 7, 17, 33):
        torch.testing.assert_close(torch.ops.rja.cpu_tanh(x[:n]), got[:n], rtol=0, atol=0)


def test_float64_is_libm():
    x = torch.linspace(-25, 25, 100_003, dtype=torch.float64)
    torch.testing.assert_close(torch.ops.rja.cpu_tanh(x), torch.tanh(x), rtol=5e-16, atol=0)  # 2 ulp
