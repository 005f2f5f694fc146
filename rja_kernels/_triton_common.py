"""What the Triton kernels of both forms share (`_triton_paper` for the paper's form, `_triton_jca`
for the JCA form): the interpreter switch, tanh, the dot and cast helpers, tile loads and copies,
and the autotuning configurations.

Imported lazily, at the first use of the Triton backend (`rja_kernels.triton_backend`), for two
reasons: importing triton is slow, and `@triton.jit` reads `TRITON_INTERPRET` when a kernel is
*defined*, so the choice between the CPU interpreter and GPU compilation is made here, at first use,
not at package import.

Programs per sample. An iteration's `J = concat(xa, xv)` couples every row of both modalities, so
no part of iteration `i + 1` can start before every row of iteration `i` is written. Each
iteration's updated features go to the `xa_iters`/`xv_iters` output buffers in global memory
(L2-resident: a sample is a few hundred KiB at most), the intermediates a whole iteration needs go
to per-sample workspace buffers, and barriers separate the passes: one launch for all `T`
iterations. With one program per sample (where the batch fills the SMs) the barrier is
`tl.debug_barrier`, a CTA-wide `__syncthreads` that also makes the CTA's global stores visible to
its other threads. Otherwise each sample gets `SPLIT` programs (`choose_split`) that share every
pass's tiles and meet at `sample_barrier`, an arrival counter in global memory:
they must all be resident at once, which the launch keeps to one program per SM, and the
interpreter, which runs programs one after another, runs them as threads
(`rja_kernels._triton_cooperative`).

Padding: `tl.dot` needs every dimension >= 16, so `L` is padded to `BL >= 16` and every load is
masked with `other=0`. Zero padding is exact: padded rows/columns give `S = 0`, `C = tanh(0) = 0`
and meet zero weights, so they add nothing; stores are masked.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)
# Two bfloat16 workarounds for the interpreter (numpy has no bfloat16): it keeps bf16 as raw
# uint16 bits, so its tl.dot would multiply the bits as integers, and its fp32 -> bf16 cast
# truncates. `_dot` upcasts bf16 operands to fp32 (exact: bf16 products fit in fp32, and tensor
# cores accumulate in fp32 too) and `_cast` rounds to nearest even first, as the GPU cast does.
_INTERPRETED = tl.constexpr(INTERPRETED)


def device_fn(fn):
    """`@triton.jit` for the kernels' device functions (the helpers the kernels call).

    Under the interpreter every call of a jitted device function patches `triton.language` anew
    (about a millisecond: most of the interpreter's time in these kernels' tile loops). The patch
    the kernel's launch made is still in place during the call, so here the interpreter's rewritten
    function is called directly. Compiled for the GPU it is plain `@triton.jit` (inlined)."""
    jitted = triton.jit(fn)
    rewrite = getattr(jitted, "rewrite", None)
    if not INTERPRETED or rewrite is None:
        return jitted

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return rewrite()(*args, **kwargs)

    return call


# Where L pads to 64 or more, the [BM, BL] and [BL, BD] tiles outgrow the register file. Compiled
# for sm_90 (benchmarks/triton_registers.py, no GPU needed), every float32 candidate of the
# "long" benchmark size (L = 64) kept 1-10 KB per thread on the stack, and the backward's bfloat16
# ones 3-4 KB; 16-row tiles over 8 warps keep 0-650 bytes. Those are added as candidates there.
LONG_L = 64


def tile_configs(interpreted: dict[str, int], gpu: list[tuple[dict[str, int], int, int]],
                 long_stages: int) -> list[triton.Config]:
    """Autotuning candidates: on the GPU `(tiles, num_warps, num_stages)` each, plus 16-row tiles
    on 8 warps (`long_stages` stages) that `prune_by_length` keeps for long sequences only; in the
    interpreter one config, since autotuning there would time Python, not the GPU.

    Few GPU configs: each is compiled per dtype and padding of `L` at the first use of a shape, and
    compiling dominates a first call (a GPU run of the tests spent most of its time there)."""
    if INTERPRETED:
        return [triton.Config(interpreted, num_warps=1)]
    configs = [triton.Config(tiles, num_warps=w, num_stages=s) for tiles, w, s in gpu]
    for bd in (32, 64):
        config = triton.Config({"BM": 16, "BD": bd}, num_warps=8, num_stages=long_stages)
        config.long_only = True
        configs.append(config)
    return configs


def prune_by_length(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotuners' `early_config_prune`: the long-sequence candidates only where `L` pads to
    `LONG_L` or more (elsewhere they would only add compile time)."""
    long = pad16(named_args["L"]) >= LONG_L
    return [c for c in configs if long or not getattr(c, "long_only", False)]


SPLIT_ENV = "RJA_TRITON_SPLIT"
# The interpreter's notional device: programs it lets one launch hold at once (its threads could
# hold any number; the bound keeps the capacity check tested).
INTERPRETER_RESIDENT_PROGRAMS = 8
# A program's share of a phase is whole tiles of at most this many features (BM, BD <= 128).
_SPLIT_TILE = 64


def choose_split(batch: int, resident: int, dm_min: int) -> int:
    """Programs per sample: as many as the `resident` programs hold for the whole batch at one
    program per SM (a launch whose programs wait on each other must have them all resident; Triton
    gives no occupancy query before the autotuner has compiled), and at most one per 64-feature
    tile of the smaller modality, the unit of the phases they share. 1 where B fills the device."""
    if batch <= 0:
        return 1
    return max(1, min(resident // batch, -(-dm_min // _SPLIT_TILE)))


def resident_programs(device: torch.device) -> int:
    """Programs of one launch that are sure to be resident together: one per SM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_RESIDENT_PROGRAMS


def split_for(batch: int, dm_min: int, device: torch.device) -> int:
    """Programs per sample for this launch: `RJA_TRITON_SPLIT` where set to S > 0 (to compare
    launch shapes on a device), else `choose_split`; refused where the grid would not be resident."""
    resident = resident_programs(device)
    forced = os.environ.get(SPLIT_ENV, "")
    if not forced.isdigit() or len(forced) > 7:
        if forced:
            raise ValueError(f"{SPLIT_ENV} must be a non-negative integer, got {forced!r}")
        forced = "0"
    split = int(forced) or choose_split(batch, resident, dm_min)
    if split > 1 and batch * split > resident:
        raise RuntimeError(f"{SPLIT_ENV}={split} needs B * split = {batch * split} co-resident programs; "
                           f"the device holds {resident}")
    return split


def arrival_counters(batch: int, split: int, device: torch.device) -> torch.Tensor:
    """`sample_barrier`'s counters, one per sample, zero (unused, one int, for one program per sample).
    The kernels' autotuners zero them again (`reset_to_zero`) before each launch they time."""
    if split == 1:
        return torch.empty(1, dtype=torch.int32, device=device)
    return torch.zeros(batch, dtype=torch.int32, device=device)


def co_resident(split: int):
    """The interpreter runs programs that wait on each other as threads (`_triton_cooperative`)."""
    if INTERPRETED and split > 1:
        from rja_kernels._triton_cooperative import cooperative_programs  # the interpreter's internals

        return cooperative_programs()
    return contextlib.nullcontext()


def dot_precision(dtype: torch.dtype) -> str:
    """float32 follows torch's matmul setting: exact IEEE products unless the user allowed TF32."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# `dot_f32`'s third precision, besides Triton's "ieee" and "tf32": 3xTF32 (`dot_3xtf32`).
TF32X3 = "3xtf32"
_TF32X3 = tl.constexpr(TF32X3)


def grad_precision(dtype: torch.dtype) -> str:
    """`PREC` of the backward's products with float32 gradient tiles (`dot_f32`): 3xTF32 for
    16-bit inputs (tensor cores at about float32's accuracy, which the accuracy rule needs there);
    float32 inputs keep their contract, `dot_precision` (IEEE, or TF32 where the user allowed it)."""
    if dtype in (torch.float16, torch.bfloat16):
        return TF32X3
    return dot_precision(dtype)


def pad16(n: int) -> int:
    """A block size for a dimension of size `n` that `tl.dot` accepts: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(n))


@device_fn
def arange(BLOCK: tl.constexpr):
    """`tl.arange(0, BLOCK)`: int32 on the GPU; int64 under the interpreter, which checks every int32
    operation for overflow (several interpreted ops each, most of the interpreter's time in the
    index arithmetic). Offsets within a sample are far below 2^31 (the sample's base is int64)."""
    r = tl.arange(0, BLOCK)
    if _INTERPRETED:
        r = r.to(tl.int64)
    return r


@device_fn
def _tanh_parts(x):
    # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow for large |x|.
    # On GPUs tl.exp and `/` are the approximate (~2^-22 relative) hardware versions, so the
    # absolute error is a few float32 ulps of 1 (not relative to tanh(x) near 0): fine for an
    # operand of a float32 dot product, and cheaper than a series branch on an element-bound loop.
    e = tl.exp(-2.0 * tl.abs(x))
    r = 1.0 / (1.0 + e)
    t = (1.0 - e) * r
    return tl.where(x < 0, -t, t), e, r


def use_approx_tanh(interpreted: bool, capability: tuple[int, int] | None) -> bool:
    """Whether `tanh` of 16-bit tiles uses the hardware `tanh.approx.f32` (sm_75+, compiled only;
    the interpreter runs no PTX and keeps the exact path)."""
    return not interpreted and capability is not None and capability >= (7, 5)


# Fixed for the process by the device current at first use (as the interpreter switch is).
_APPROX_TANH = tl.constexpr(use_approx_tanh(
    INTERPRETED, torch.cuda.get_device_capability() if torch.cuda.is_available() else None))


@device_fn
def tanh(x, dt: tl.constexpr):
    """tanh of fp32 `x` for tiles of element type `dt`. For 16-bit `dt` on sm_75+ the special
    function unit's tanh.approx.f32: one instruction instead of exp + reciprocal, max relative
    error 2^-10.987 (PTX ISA, "Floating Point Instructions: tanh"), below half an ulp of bfloat16
    and about one of float16, whose result is rounded to `dt` right after (low_precision_tolerance
    on the GPU: tests/test_approx_tanh.py). float32 keeps the exp form (within a few ulps)."""
    if _APPROX_TANH and dt.primitive_bitwidth == 16:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    t, _, _ = _tanh_parts(x)
    return t


@device_fn
def tanh_and_grad(x):
    """tanh(x) and its derivative 1 - tanh(x)^2 = 4e / (1 + e)^2, which unlike 1 - t * t keeps
    its relative accuracy where tanh saturates (t rounds to 1 while the derivative is not 0)."""
    t, e, r = _tanh_parts(x)
    return t, 4.0 * e * r * r


@device_fn
def dot(a, b, acc, PREC: tl.constexpr):
    """`tl.dot(a, b, acc)`, fp32 accumulation (also correct for bf16 under the interpreter)."""
    if _INTERPRETED and a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC)


@device_fn
def round_tf32(x):
    """fp32 `x` rounded to tf32 (10 explicit mantissa bits), to nearest with ties away from zero as
    `cvt.rna.tf32.f32` does; inf and NaN as they are. Sign and magnitude are apart in the bits, so
    adding half the unit of the 13 dropped bits to them and clearing those rounds the magnitude; a
    carry out of the mantissa steps the exponent, which is the right result (inf past the largest
    tf32). Bit arithmetic, not a `cvt`, so the interpreter computes it too."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x1000) & 0xFFFFE000
    special = (bits & 0x7F800000) == 0x7F800000  # inf or NaN: the add could turn inf into NaN
    return tl.where(special, bits, rounded).to(tl.float32, bitcast=True)


@device_fn
def split_tf32(x):
    """`(hi, lo)`, both tf32 values, `hi = tf32(x)`, `lo = tf32(x - hi)` (`x - hi` is exact):
    `hi + lo` is `x` within 2^-22 |x|. Subnormals round to multiples of 2^-136. For inf or NaN `x`,
    `lo` is NaN (`inf - inf`), so a non-finite operand makes NaN products where exact ones could
    give inf: not worth a select per element (compiled for sm_90 it cost one bfloat16 candidate
    of the paper-form backward 112 more bytes of stack)."""
    x = x.to(tl.float32)
    hi = round_tf32(x)
    return hi, round_tf32(x - hi)


@device_fn
def dot_3xtf32(a_hi, a_lo, b_hi, b_lo, acc, A_EXACT: tl.constexpr, B_EXACT: tl.constexpr):
    """`a @ b + acc` from the `split_tf32` parts: `a_hi b_lo + a_lo b_hi + a_hi b_hi`, three tf32
    tensor-core products, the small ones first; the dropped `a_lo b_lo` and the rounding of the lo
    parts are about 2^-22 |a||b| per term (tests/test_triton_tf32x3.py states the bound). Every
    operand is a tf32 value, so the GPU's tf32 products are exact, as the interpreter's fp32 ones
    are: both compute the same sums, up to their order. `A_EXACT` / `B_EXACT`: that operand is a
    tf32 value itself (a 16-bit tile, upcast), its lo part zero (not read) and its product skipped."""
    if not B_EXACT:
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
    if not A_EXACT:
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@device_fn
def dot_f32(a, b, acc, PREC: tl.constexpr):
    """`dot` with both operands in fp32 (exact upcasts): for products with a gradient tile that was
    accumulated in fp32. Rounding that tile to a 16-bit input dtype first put the Triton backward
    of float16 at L = 1 four times past the rule where the CUDA kernel, fp32 throughout, was not;
    plain TF32 keeps float16's 11 significant bits and would not meet it either. `PREC`: "ieee"
    (exact products; on a GPU FMAs on CUDA cores), "tf32", or `TF32X3`, which `grad_precision` takes
    for 16-bit inputs: each fp32 operand split into two tf32 values, three tf32 tensor-core
    products (`dot_3xtf32`), about float32's accuracy. An operand still in a 16-bit dtype here
    (a tile loaded from a 16-bit tensor) is exact in tf32: not split, one product fewer."""
    if PREC == _TF32X3:
        A_EXACT: tl.constexpr = a.dtype.primitive_bitwidth == 16
        B_EXACT: tl.constexpr = b.dtype.primitive_bitwidth == 16
        if A_EXACT:
            a_hi = a.to(tl.float32)
            a_lo = a_hi  # not read
        else:
            a_hi, a_lo = split_tf32(a)
        if B_EXACT:
            b_hi = b.to(tl.float32)
            b_lo = b_hi  # not read
        else:
            b_hi, b_lo = split_tf32(b)
        out = dot_3xtf32(a_hi, a_lo, b_hi, b_lo, acc, A_EXACT, B_EXACT)
    else:  # (not a return above: the compiler would still build this dot with PREC = TF32X3)
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    return out


@device_fn
def cast(x, dt: tl.constexpr):
    """`x.to(dt)` with round-to-nearest-even also under the interpreter (see `_INTERPRETED`)."""
    if _INTERPRETED and dt == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)  # exactly representable: the truncating cast is exact
    return x.to(dt)


@device_fn
def load_j_tile(ja, jv, offs_l, cols, L, DA, D):
    """`J[:, cols]` of one sample as [BL, BD]: columns < DA from xa, the rest from xv."""
    ml = offs_l[:, None] < L
    in_a = cols[None, :] < DA
    in_v = (cols[None, :] >= DA) & (cols[None, :] < D)
    ta = tl.load(ja + offs_l[:, None] * DA + cols[None, :], mask=ml & in_a, other=0.0)
    tv = tl.load(jv + offs_l[:, None] * (D - DA) + (cols[None, :] - DA), mask=ml & in_v, other=0.0)
    return tl.where(in_a, ta, tv)


@device_fn
def sample_barrier(counter, arrivals, SPLIT: tl.constexpr):
    """Waits until the `SPLIT` programs of a sample have together arrived `arrivals` times at their
    `counter` (int32, zero at launch): the `k`-th barrier of a launch passes `arrivals = k * SPLIT`,
    so the count never needs resetting. The CTA barrier first makes this program's stores visible to
    its thread 0, whose release add publishes them at GPU scope and whose acquire poll (Triton
    issues a scalar atomic from thread 0 alone and broadcasts its result through shared memory)
    makes the other programs' stores visible to this one. A no-op but the CTA barrier for one program
    per sample. The programs must be co-resident: `choose_split` keeps the grid within
    the SMs; in the interpreter, `_triton_cooperative` runs them as threads."""
    tl.debug_barrier()
    if SPLIT > 1:
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        while tl.atomic_add(counter, 0, sem="acquire", scope="gpu") < arrivals:
            pass


@device_fn
def sum_in_order(partials, offs, mask, n, acc, SPLIT: tl.constexpr):
    """`acc` plus the `SPLIT` programs' partial sums `partials [SPLIT, n]` at `offs`, added in program
    order whichever program reads them: the same bits for a given `SPLIT`, whatever the schedule."""
    for p in range(SPLIT):
        acc += tl.load(partials + p * n + offs, mask=mask, other=0.0)
    return acc


@device_fn
def acc_store(ptr, val, mask, accumulate):
    """`*ptr = val`, or `*ptr += val` when `accumulate`."""
    prev = tl.load(ptr, mask=mask & accumulate, other=0.0)
    tl.store(ptr, prev + val, mask=mask)


@device_fn
def zero_rows(dst, L, D, s, SPLIT: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """dst[:L, :D] = 0 (fp32, row-major with D columns); this program's share: column tiles s, s + SPLIT, ..."""
    offs_l = arange(BL)
    for c0 in range(s * BD, D, SPLIT * BD):
        cols = c0 + arange(BD)
        tl.store(dst + offs_l[:, None] * D + cols[None, :], tl.zeros((BL, BD), tl.float32),
                 mask=(offs_l[:, None] < L) & (cols[None, :] < D))


@device_fn
def copy_cols(src, dst, L, src_cols, dst_cols, col0_src, col0_dst, n, s, SPLIT: tl.constexpr,
              BL: tl.constexpr, BD: tl.constexpr):
    """dst[:, col0_dst + j] = src[:, col0_src + j] for j < n, converting to dst's dtype; this
    program's share: column tiles s, s + SPLIT, ..."""
    offs_l = arange(BL)
    for c0 in range(s * BD, n, SPLIT * BD):
        cols = c0 + arange(BD)
        m = (offs_l[:, None] < L) & (cols[None, :] < n)
        v = tl.load(src + offs_l[:, None] * src_cols + col0_src + cols[None, :], mask=m)
        tl.store(dst + offs_l[:, None] * dst_cols + col0_dst + cols[None, :], cast(v, dst.dtype.element_ty), mask=m)


@device_fn
def copy_rows(src, dst, L, DM, s, SPLIT: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """dst[:L, :DM] = src[:L, :DM] (both row-major with DM columns); this program's share as `copy_cols`."""
    copy_cols(src, dst, L, DM, DM, 0, 0, DM, s, SPLIT, BL, BD)


@device_fn
def iteration_gradients(g0, partials, t, L, D, s, SPLIT: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """The backward's fp32 `[L, D]` buffers at step `t`: `g_cur`, the gradient of the iteration's
    output, and `g_next`, of its input (the two ping-ponged from `g0`), zeroed (this program's
    share); and where `dJ` is added, `g_next` itself for one program per sample, else this
    program's own partial in `partials [SPLIT, L, D]`, zeroed whole."""
    nd = L * D
    g_cur = g0 + (t % 2) * nd
    g_next = g0 + ((t + 1) % 2) * nd
    zero_rows(g_next, L, D, s, SPLIT, BL, BD)
    if SPLIT > 1:
        g_join = partials + s * nd
        zero_rows(g_join, L, D, 0, 1, BL, BD)
    else:
        g_join = g_next
    return g_cur, g_next, g_join
