"""The CUDA kernels' vectorised staging (csrc/cuda/common.cuh: stage_tile, load_group, store_group;
compat.cuh: load_vector, store_vector) under the host emulator, which checks every 16-byte access
for alignment and bounds, as a GPU would fault on a misaligned one.

stage_tile is compared with the tile cut out by torch, element for element, and its count of vector
accesses with an independent model of which groups may take one: where the destination's rows take
16-byte stores (a group's elements fill whole vectors, the row stride and the start are aligned) a
group of 16 bytes of the source type loads as one vector where the whole group is inside the tile
and its address is 16-byte aligned, and stores as vectors where the whole group is inside the padded
tile; otherwise nothing is vectorised. The kernels must give the same bits on
buffers that are not aligned (the element-by-element path) as on aligned ones.
"""

import pytest
import torch

from rja_kernels import cuda
from rja_kernels.testing import make_inputs

emu = cuda.cuda_emulator()
SENTINEL = -7.0  # what stage_tile must leave alone outside the padded tile


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv(cuda.EMULATE_ENV, "1")


def _vector_accesses(run):
    before = emu.vector_access_count()
    run()
    return emu.vector_access_count() - before


def test_vector_load_needs_16_byte_alignment_and_bounds():
    buf = torch.arange(18, dtype=torch.float32)
    assert buf.data_ptr() % 16 == 0
    assert torch.equal(emu.vector_load(buf, 4), buf[4:8])
    for at in (1, 2, 3, 6):
        with pytest.raises(RuntimeError, match="not 16-byte aligned"):
            emu.vector_load(buf, at)
    with pytest.raises(RuntimeError, match="out-of-bounds access in\\[19\\]"):
        emu.vector_load(buf, 16)  # aligned, but 2 of its 4 elements lie past the buffer


def _expected_tile(src, src_at, lds, rows, cols, dst, dst_at, ldd, rows_pad, cols_pad):
    out = dst.clone()
    for r in range(rows_pad):
        for c in range(cols_pad):
            inside = r < rows and c < cols
            out[dst_at + r * ldd + c] = src[src_at + r * lds + c].float() if inside else 0.0
    return out


def _expected_vectors(src, src_at, lds, rows, cols, dst, dst_at, ldd, rows_pad, cols_pad):
    """Vector loads and stores stage_tile may issue (see the module's docstring)."""
    group = 16 // src.element_size()
    per_store = 16 // dst.element_size()
    dst_start = dst.data_ptr() + dst_at * dst.element_size()
    if group % per_store or ldd % per_store or dst_start % 16:
        return 0  # dst's rows take no whole vector stores: the tile goes element by element
    count = 0
    for r in range(rows_pad):
        for c in range(0, cols_pad, group):
            src_address = src.data_ptr() + (src_at + r * lds + c) * src.element_size()
            if r < rows and c + group <= cols and src_address % 16 == 0:
                count += 1
            if c + group <= cols_pad:
                count += group // per_store
    return count


STAGE_CASES = [
    # (src dtype, dst dtype, lds, rows, cols, ldd, rows_pad, cols_pad)
    (torch.float32, torch.float32, 20, 5, 13, 20, 8, 16),  # ragged columns, padded rows and columns
    (torch.float32, torch.float32, 17, 4, 16, 20, 4, 16),  # source rows at odd strides: some groups align
    (torch.float32, torch.float32, 24, 3, 10, 16, 4, 14),  # a padded row ending in a part of a group
    (torch.float16, torch.float32, 40, 6, 29, 36, 8, 32),  # 8 16-bit values, stored as two float vectors
    (torch.bfloat16, torch.float32, 40, 3, 24, 33, 4, 24),  # destination rows unaligned: by element
    (torch.bfloat16, torch.bfloat16, 48, 7, 40, 56, 16, 48),  # the tensor-core paths' 16-bit tiles
    (torch.float32, torch.float16, 16, 9, 16, 24, 16, 16),  # 4 floats fill no 16-bit vector: by element
]


@pytest.mark.parametrize("threads", [32, 96])
@pytest.mark.parametrize("dst_at", [0, 3])
@pytest.mark.parametrize("src_at", [0, 1, 8])
@pytest.mark.parametrize("case", STAGE_CASES, ids=[f"{a}-{b}-{c}" for a, b, *_, c in STAGE_CASES])
def test_stage_tile_copies_the_tile_and_vectorises_what_aligns(case, src_at, dst_at, threads):
    src_dtype, dst_dtype, lds, rows, cols, ldd, rows_pad, cols_pad = case
    gen = torch.Generator().manual_seed(lds + rows)
    src = torch.randn(src_at + rows * lds + 16, generator=gen).to(src_dtype)
    dst = torch.full((dst_at + rows_pad * ldd + 8,), SENTINEL, dtype=dst_dtype)
    args = (src, src_at, lds, rows, cols, dst, dst_at, ldd, rows_pad, cols_pad)
    expected = _expected_tile(*args)
    vectors = _expected_vectors(*args)
    assert _vector_accesses(lambda: emu.stage_tile(*args, threads)) == vectors
    assert torch.equal(dst, expected)
    per_store = 16 // dst.element_size()
    if dst_at == 0 and ldd % per_store == 0 and (16 // src.element_size()) % per_store == 0:
        assert vectors > 0  # destination rows that take vector stores do take the vector path


def _misaligned(t):
    """t's values in a buffer that starts one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    return buf[1:].view(t.shape).copy_(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("form", ["paper", "jca"])
def test_kernels_give_the_same_bits_on_unaligned_buffers(form, dtype, tf32_allowed):
    # With TF32 allowed float32 takes the tensor-core paths too, which stage in vectors.
    # da = 16, dv = 24: every row of x starts aligned; L = 6, k = 16. The aligned run stages in
    # vectors, the unaligned one (features, weights and output gradients one element off) falls back
    # to elements where its buffers are staged, and must not change a bit.
    operator = "recursive_joint_attention" if form == "paper" else "joint_cross_attention"
    inp = make_inputs(operator, 2, 6, 16, 24, 2, k=None if form == "paper" else 16, dtype=dtype, seed=3)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(inp[n].shape, generator=gen).to(dtype) for n in ("xa", "xv")]
    forward, backward = (cuda.paper_forward, cuda.paper_backward) if form == "paper" else (
        cuda.jca_forward, cuda.jca_backward)

    def run(xa, xv, ws, gs):
        results = []
        count = _vector_accesses(lambda: results.extend(forward(xa, xv, ws, 2)))
        count += _vector_accesses(lambda: results.extend(backward(*gs, results[2], results[3], ws)))
        return results, count

    aligned, aligned_count = run(inp["xa"], inp["xv"], weights, grads)
    unaligned, unaligned_count = run(_misaligned(inp["xa"]), _misaligned(inp["xv"]),
                                     tuple(_misaligned(w) for w in weights), [_misaligned(g) for g in grads])
    assert len(aligned) == len(unaligned)
    for a, u in zip(aligned, unaligned):
        assert torch.equal(a, u)
    # Every backward stages weight chunks for its 3xTF32 products; the workspace stays aligned, so
    # some vectors remain.
    assert aligned_count > unaligned_count > 0
