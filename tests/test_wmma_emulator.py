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
