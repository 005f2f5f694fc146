"""The emulated WMMA API (csrc/emu/wmma.h) against torch, and its checks of misuse that a GPU would
not report cleanly (lanes that diverge, bad leading dimensions or alignment, partial warps).

mma_sync's documented numerics: the products of the 16-bit operands are exact in float32 and are
added to the accumulator in float32 in order of k, so a sequential float32 sum matches bit for bit.
"""

import pytest
import torch

from rja_kernels.cuda import cuda_emulator

emu = cuda_emulator()
DTYPES = [torch.float16, torch.bfloat16]


def _operand(rows, cols, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen).to(dtype)


def _sequential(a, b, c=None):
    """c + a b in float32, adding the (exact) products in order of k."""
    acc = torch.zeros(a.shape[0], b.shape[1]) if c is None else c.clone()
    for k in range(a.shape[1]):
        acc = acc + a[:, k:k + 1].float() * b[k:k + 1, :].float()
    return acc


def _in_memory(m, col_major, ld):
    """A 16 x 16 tile in a buffer of 16 rows of ld elements, row- or column-major."""
    buf = torch.zeros(16, ld, dtype=m.dtype)
    buf[:, :16] = m.t() if col_major else m
    return buf.reshape(-1)


@pytest.mark.parametrize("ld", [16, 24])
@pytest.mark.parametrize("b_col_major", [False, True], ids=["b_row", "b_col"])
@pytest.mark.parametrize("a_col_major", [False, True], ids=["a_row", "a_col"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tile_matches_torch_matmul(dtype, a_col_major, b_col_major, ld):
    a, b = _operand(16, 16, dtype, 0), _operand(16, 16, dtype, 1)
    c = torch.randn(16, 16, generator=torch.Generator().manual_seed(2))
    out = emu.wmma_tile(_in_memory(a, a_col_major, ld), _in_memory(b, b_col_major, ld), c.t().contiguous(),
                        a_col_major, b_col_major, ld)
    assert torch.equal(out, _sequential(a, b, c))
    torch.testing.assert_close(out.double(), a.double() @ b.double() + c.double(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("threads", [32, 40, 96])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mma_tiles_helper_matches_torch_matmul(dtype, accumulate, threads):
    # The kernels' contraction helper: 2 x 3 output tiles over 4 steps of k, taken in turn by the
    # full warps (40 threads: a partial second warp sits out).
    a, b = _operand(32, 64, dtype, 3), _operand(64, 48, dtype, 4)
    c = torch.randn(32, 48, generator=torch.Generator().manual_seed(5))
    out = c.clone()
    emu.mma_tiles(a, b, out, accumulate, threads)
    assert torch.equal(out, _sequential(a, b, c if accumulate else None))
    torch.testing.assert_close(out.double(), a.double() @ b.double() + (c.double() if accumulate else 0),
                               rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_correct_use_passes(dtype):
    a = _operand(32, 16, dtype, 6)
    out = emu.wmma_misuse(a, 0, 32)
    assert torch.equal(out, _sequential(a[:16], a[:16]))


MISUSES = [
    (1, r"wmma::load_matrix_sync: divergent arguments: lane \d+ and lane \d+ pass different pointers"),
    (2, r"divergent warp collective: lane \d+ calls wmma::\w+, lane \d+ wmma::\w+"),
    (3, r"wmma::load_matrix_sync: ldm 12 is not a positive multiple of 8 elements"),
    (4, r"wmma::load_matrix_sync: pointer a\[4\] is not 256-bit aligned"),
    (6, r"wmma::store_matrix_sync: ldm 18 is not a positive multiple of 4 elements"),
    (7, r"barrier not reached by every thread.* 16 wait at a warp collective \(shuffle or WMMA\).* 16 have exited"),
]


@pytest.mark.parametrize(("mode", "error"), MISUSES, ids=["pointers", "calls", "ldm", "alignment", "float-ldm",
                                                          "exited-lanes"])
def test_misuse_is_caught(mode, error):
    with pytest.raises(RuntimeError, match=error):
        emu.wmma_misuse(_operand(32, 16, torch.float16, 7), mode, 32)


def test_partial_warp_is_rejected():
    with pytest.raises(RuntimeError, match=r"WMMA needs all 32 lanes of a warp; this warp has 16 threads"):
        emu.wmma_misuse(_operand(32, 16, torch.float16, 8), 0, 48)


def test_out_of_bounds_load_is_caught():
    with pytest.raises(RuntimeError, match=r"out-of-bounds access a\[\d+\]; a has 128 elements"):
        emu.wmma_misuse(_operand(8, 16, torch.bfloat16, 9), 0, 32)


def test_lanes_filling_different_values_get_a_mixed_tile():
    # fill_fragment is lane-local and the element mapping opaque: only a uniform value is a uniform tile.
    a = torch.zeros(32, 16, dtype=torch.float16)
    out = emu.wmma_misuse(a, 5, 32)
    assert len(out.unique()) == 32


# --- tf32 (m16n16k8) and the kernels' 3xTF32 helper, rja::mma_tiles_f32 ---

def _tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to tf32 as cvt.rna.tf32.f32 does: to nearest, ties away from zero, by the bits."""
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = ((bits + 0x1000) & 0xFFFFE000).to(torch.uint32).view(torch.int32).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


def _bits(*values):
    return torch.tensor(values, dtype=torch.int64).to(torch.uint32).view(torch.int32).view(torch.float32)


def test_float_to_tf32_rounds_to_nearest_ties_away():
    cases = {  # input bits -> tf32 bits
        0x3F800000: 0x3F800000,  # 1: exact
        0x3F800FFF: 0x3F800000,  # below half of the dropped unit: down
        0x3F801000: 0x3F802000,  # exactly half: away from zero
        0xBF801000: 0xBF802000,  # negative half: away from zero too
        0x3F803000: 0x3F804000,  # half above an odd last kept bit (ties-to-even would agree; see next)
        0x3F805000: 0x3F806000,  # half above an even one: away (ties-to-even would keep 0x3F804000)
        0x3FFFF000: 0x40000000,  # carries into the exponent: 2
        0x00001FFF: 0x00002000,  # subnormal
        0x7F7FFFFF: 0x7F800000,  # past tf32's largest: inf
        0x7F800000: 0x7F800000,  # inf
        0xFF800000: 0xFF800000,  # -inf
    }
    got = emu.float_to_tf32(_bits(*cases))
    assert got.view(torch.int32).tolist() == _bits(*cases.values()).view(torch.int32).tolist()
    nan = _bits(0x7F800001)  # a NaN whose payload sits in the dropped bits stays NaN (not inf)
    assert torch.isnan(emu.float_to_tf32(nan)).all()
    x = torch.randn(4096, generator=torch.Generator().manual_seed(20))
    assert torch.equal(emu.float_to_tf32(x), _tf32(x))


def test_tf32_tile_needs_converted_operands():
    gen = torch.Generator().manual_seed(21)
    a, b = torch.randn(16, 8, generator=gen), torch.randn(8, 16, generator=gen)
    out = emu.tf32_tile(a.reshape(-1), b.reshape(-1), True)
    assert torch.equal(out, _sequential(_tf32(a), _tf32(b)))
    with pytest.raises(RuntimeError, match=r"wmma::mma_sync: a tf32 operand holds a float32 value that is not"):
        emu.tf32_tile(a.reshape(-1), b.reshape(-1), False)


def _three_tf32(a, b, c, exact_a, exact_b):
    """mma_tiles_f32's documented sums: per step of 8 in k the products A_lo B_hi, A_hi B_lo, A_hi B_hi
    (each exact in float32), each added in order of k."""
    a_hi, b_hi = _tf32(a), _tf32(b)
    a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
    acc = torch.zeros(a.shape[0], b.shape[1]) if c is None else c.clone()
    for k0 in range(0, a.shape[1], 8):
        terms = ([] if exact_a else [(a_lo, b_hi)]) + ([] if exact_b else [(a_hi, b_lo)]) + [(a_hi, b_hi)]
        for x, y in terms:
            acc = _sequential(x[:, k0:k0 + 8], y[k0:k0 + 8], acc)
    return acc


@pytest.mark.parametrize("threads", [32, 96])
@pytest.mark.parametrize(("a_col_major", "b_col_major"), [(False, False), (True, False), (False, True), (True, True)],
                         ids=["rr", "cr", "rc", "cc"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_mma_tiles_f32_is_three_tf32_products(accumulate, a_col_major, b_col_major, threads):
    gen = torch.Generator().manual_seed(22)
    a, b = torch.randn(32, 40, generator=gen), torch.randn(40, 48, generator=gen)
    c = torch.randn(32, 48, generator=gen)
    out = c.clone()
    emu.mma_tiles_f32(a, b, out, accumulate, threads, a_col_major, b_col_major, False, False)
    assert torch.equal(out, _three_tf32(a, b, c if accumulate else None, False, False))


@pytest.mark.parametrize(("exact_a", "exact_b"), [(True, False), (False, True)], ids=["exact_a", "exact_b"])
def test_mma_tiles_f32_skips_the_lo_term_of_a_16_bit_operand(exact_a, exact_b):
    gen = torch.Generator().manual_seed(23)
    a, b = torch.randn(16, 64, generator=gen), torch.randn(64, 32, generator=gen)
    a = a.bfloat16().float() if exact_a else a
    b = b.bfloat16().float() if exact_b else b
    out = torch.zeros(16, 32)
    before = emu.wmma_mma_count()
    emu.mma_tiles_f32(a, b, out, False, 32, False, False, exact_a, exact_b)
    assert emu.wmma_mma_count() - before == 32 * 2 * 2 * (64 // 8)  # 32 lanes, 2 tiles, 2 products a step
    assert torch.equal(out, _three_tf32(a, b, None, exact_a, exact_b))
    assert _within_3xtf32_bound(out, a, b)


def _within_3xtf32_bound(out, a, b):
    # common.cuh: the split leaves <= 3 * 2^-22 sum_k |a b| beyond float32's rounding of the 3 Kd
    # additions (<= 3 Kd 2^-24 sum_k |a b|).
    magnitude = a.double().abs() @ b.double().abs()
    err = (out.double() - a.double() @ b.double()).abs()
    return bool((err <= (3 * 2.0**-22 + 3 * a.shape[1] * 2.0**-24) * magnitude).all())


def test_mma_tiles_f32_is_about_as_accurate_as_float32():
    # One TF32 product of the rounded operands leaves ~2^-11 of sum_k |a b|: the 3xTF32 error must
    # be far below that as well as within its bound.
    gen = torch.Generator().manual_seed(24)
    a, b = torch.randn(32, 256, generator=gen), torch.randn(256, 32, generator=gen)
    out = torch.zeros(32, 32)
    emu.mma_tiles_f32(a, b, out, False, 64, False, False, False, False)
    assert _within_3xtf32_bound(out, a, b)
    exact = a.double() @ b.double()
    err, one_tf32 = (out.double() - exact).abs(), (_tf32(a).double() @ _tf32(b).double() - exact).abs()
    assert err.max() * 100 < one_tf32.max()
