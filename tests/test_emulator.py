"""The host CUDA emulator (csrc/emu) itself: it must catch what a GPU would not report cleanly
(out-of-range accesses, barriers not reached by every thread) and run correct kernels correctly."""

import pytest
import torch

from rja_kernels.cuda import cuda_emulator

emu = cuda_emulator()


def test_out_of_bounds_write_is_caught():
    out = torch.zeros(63)
    with pytest.raises(RuntimeError, match=r"out-of-bounds access out\[63\]; out has 63 elements"):
        emu.write_per_thread(out, 64)


def test_in_bounds_writes_pass():
    out = torch.zeros(64)
    emu.write_per_thread(out, 64)
    assert torch.equal(out, torch.arange(64, dtype=torch.float32))


def test_barrier_skipped_by_half_the_block_is_caught():
    stall = r"barrier not reached by every thread.* 32 wait at __syncthreads\(\).* 32 have exited"
    with pytest.raises(RuntimeError, match=stall):
        emu.divergent_barrier(0)


def test_threads_at_different_barriers_are_caught():
    with pytest.raises(RuntimeError, match=r"divergent barrier: threads wait at different __syncthreads\(\) calls"):
        emu.divergent_barrier(1)


@pytest.mark.parametrize(("blocks", "threads"), [(1, 32), (3, 128), (2, 1024)])
def test_block_sum_with_warp_shuffles_shared_memory_and_atomics(blocks, threads):
    values = torch.arange(1000, dtype=torch.float32)  # integers: every summation order is exact
    per_block, total = emu.block_sum(values, blocks, threads)
    owner = torch.arange(1000) % (blocks * threads) // threads  # the grid-stride loop's block of each element
    expected = torch.stack([values[owner == b].sum() for b in range(blocks)])
    assert torch.equal(per_block, expected)
    assert total.item() == 1000 * 999 / 2


def test_partial_warp_shuffle_is_rejected():
    with pytest.raises(RuntimeError, match=r"only whole-warp shuffles"):
        emu.block_sum(torch.ones(10), 1, 48)


def test_zero_sized_launch_is_an_error():
    with pytest.raises(RuntimeError, match="invalid launch configuration"):
        emu.write_per_thread(torch.zeros(1), 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_conversions_match_torch(dtype):
    gen = torch.Generator().manual_seed(0)
    info = torch.finfo(dtype)
    values = torch.cat([
        torch.randn(2000, generator=gen) * 10.0 ** torch.randint(-8, 6, (2000,), generator=gen),
        torch.tensor([0.0, -0.0, info.max, -info.max, info.max * 1.5, info.tiny, info.tiny / 3, 65519.0, 65520.0,
                      float("inf"), float("-inf")]),
    ])
    expected = values.to(dtype).float()
    assert torch.equal(emu.round_trip(values, dtype), expected)
    assert emu.round_trip(torch.tensor([float("nan")]), dtype).isnan().all()
