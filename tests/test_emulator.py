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


# ---- cooperative launches: every block resident, barriers across blocks (rja::Group) ----

@pytest.mark.parametrize(("blocks", "threads", "rounds"), [(1, 32, 2), (2, 64, 3), (8, 40, 4)])
def test_blocks_of_a_cooperative_grid_exchange_data_through_a_counter_barrier(blocks, threads, rounds):
    # The counter is never reset: each barrier waits for its own generation's count (rounds x 2 uses).
    out = emu.ring_exchange(blocks, threads, rounds, 0, True)
    neighbour = (torch.arange(blocks) + 1) % blocks
    expected = 100.0 * neighbour[None, :] + torch.arange(rounds)[:, None]
    assert torch.equal(out, expected.float())


def test_a_block_that_never_arrives_is_a_deadlock_naming_the_stalled_blocks():
    with pytest.raises(RuntimeError, match=r"deadlock in a cooperative grid: no thread of any block can progress; "
                                           r"stalled blocks: block \(0,0,0\): 63 wait at __syncthreads\(\) .*; "
                                           r"1 spin on a volatile load.* block \(3,0,0\):") as err:
        emu.ring_exchange(5, 64, 2, 1, True)
    assert "(4,0,0)" not in str(err.value)  # the block that exited is not stalled


def test_the_schedule_exposes_a_missing_barrier():
    # Without the barrier each block runs to its end before the next starts: it reads slots that
    # its neighbour has not written yet (NaN), where a GPU might happen to see them written.
    out = emu.ring_exchange(4, 32, 2, 2, True)
    assert out[:, :3].isnan().all()


def test_a_barrier_across_blocks_needs_a_cooperative_launch():
    with pytest.raises(RuntimeError, match=r"deadlock \(a wait for another block needs a cooperative launch\)"):
        emu.ring_exchange(2, 32, 1, 0, False)


def test_a_grid_beyond_the_resident_capacity_is_refused():
    sms, per_sm = emu.set_device(3, 2)
    try:
        assert emu.blocks_per_sm(64, 0) == 2
        assert emu.blocks_per_sm(1024, 0) == 2 and emu.blocks_per_sm(2048 // 2 + 1, 0) == 1  # 2048 threads per SM
        assert emu.blocks_per_sm(64, 100 * 1024) == 2 and emu.blocks_per_sm(64, 120 * 1024) == 1  # 228 KiB
        assert torch.equal(emu.ring_exchange(6, 64, 1, 0, True)[0], torch.tensor([100.0, 200, 300, 400, 500, 0]))
        with pytest.raises(RuntimeError, match=r"cooperative launch of 7 blocks exceeds the resident capacity of the "
                                               r"emulated device: 3 SMs x 2 blocks of 64 threads .* = 6"):
            emu.ring_exchange(7, 64, 1, 0, True)
        emu.ring_exchange(7, 64, 1, 2, False)  # an ordinary launch has no such limit
    finally:
        emu.set_device(sms, per_sm)
