"""Triton kernels of the JCA form, `joint_cross_attention` (SPEC section 2): torch ops
`rja::triton_jca_forward` and `rja::triton_jca_backward`. Imported lazily by
`rja_kernels.triton_backend`; the shared helpers and the design of programs per sample are in
`rja_kernels._triton_common`.

Inside a program, per modality `m` with features `x [L, dm]`, rows of `x^T` are processed in
blocks of `BM` and the joint dimension `d` is streamed in tiles of `BD`, attention style:
`P = x_blk^T @ w_j` ([BM, L], the queries), `S = P @ J_tile / sqrt(d)`, `C = tanh(S)` (registers
only), `Z += C @ w_c_tile^T`; then `H = relu(Z + x_blk^T @ w_u^T)`, `out = x + (H @ w_h^T)^T`.
The backward recomputes `C` tile by tile from the saved iteration inputs (two passes per row
block: one to rebuild `Z`, one for the gradients that need `dZ`); `Ca`/`Cv` never reach memory.
The hidden size `k` is padded to `BK >= 16` like `L` (zero padding is exact, see _triton_common).

Several programs per sample (`SPLIT`, `_triton_common.choose_split`) take its row blocks in turn:
each row block of the forward is independent of the others within an iteration, so one barrier
per iteration and the same bits as one program per sample. The backward's sums across row blocks,
`dJ` and the weight gradients, go to per-program float32 partials: `dJ`'s are added in program
order after a barrier, the weight gradients' with the batch's in `triton_jca_backward`.

Precision: the backward rounds its gradient tiles (`dx'`, `dZ`, `dS`, `dP`) to the input dtype
before the products they feed, so for 16-bit inputs every product has 16-bit operands, on tensor
cores like the forward's (the paper form's backward keeps float32 gradient tiles, multiplied as
3xTF32: `_triton_common.dot_f32`); float32 inputs follow `dot_precision`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from rja_kernels._triton_common import (
    acc_store,
    arange,
    arrival_counters,
    cast,
    co_resident,
    copy_cols,
    copy_rows,
    device_fn,
    dot,
    dot_precision,
    iteration_gradients,
    load_j_tile,
    pad16,
    prune_by_length,
    sample_barrier,
    split_for,
    sum_in_order,
    tanh,
    tanh_and_grad,
    tile_configs,
)

# In the interpreter: tiles large enough that the small test shapes take few (slow, interpreted)
# loop trips.
_FWD_CONFIGS = tile_configs({"BM": 32, "BD": 64}, [
    ({"BM": bm, "BD": bd}, w, 2) for bm, bd, w in ((64, 64, 4), (64, 128, 8), (128, 64, 8))], long_stages=2)
_BWD_CONFIGS = tile_configs({"BM": 32, "BD": 64}, [
    ({"BM": bm, "BD": bd}, w, 1) for bm, bd, w in ((32, 64, 4), (64, 64, 8))], long_stages=1)


@device_fn
def _fwd_modality(x, x_dst, ja, jv, w_j, w_u, w_c, w_h, L, DM, DA, D, K, scale, s, SPLIT: tl.constexpr,
                  BL: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
                  PREC: tl.constexpr):
    """One iteration of one modality of one sample: `x [L, DM]` -> `x_dst [L, DM]`; this program's
    share: row blocks `s, s + SPLIT, ...` (each independent of the others)."""
    dt = x.dtype.element_ty
    offs_l = arange(BL)
    offs_k = arange(BK)
    ml = offs_l < L
    mk = offs_k < K
    wj = tl.load(w_j + offs_l[:, None] * L + offs_l[None, :], mask=ml[:, None] & ml[None, :], other=0.0)
    wu_t = tl.load(w_u + offs_k[None, :] * L + offs_l[:, None], mask=ml[:, None] & mk[None, :], other=0.0)
    wh_t = tl.load(w_h + offs_l[None, :] * K + offs_k[:, None], mask=mk[:, None] & ml[None, :], other=0.0)
    for r0 in range(s * BM, DM, SPLIT * BM):
        rows = r0 + arange(BM)
        mxt = (rows[:, None] < DM) & ml[None, :]
        xt = tl.load(x + offs_l[None, :] * DM + rows[:, None], mask=mxt, other=0.0)  # x^T block [BM, BL]
        p = cast(dot(xt, wj, None, PREC), dt)  # queries [BM, BL]
        z = dot(xt, wu_t, None, PREC)  # [BM, BK], fp32
        for c0 in range(0, D, BD):
            cols = c0 + arange(BD)
            jt = load_j_tile(ja, jv, offs_l, cols, L, DA, D)
            c = tanh(dot(p, jt, None, PREC) * scale, dt)
            wc_t = tl.load(w_c + offs_k[None, :] * D + cols[:, None],
                           mask=(cols[:, None] < D) & mk[None, :], other=0.0)  # w_c^T tile [BD, BK]
            z = dot(cast(c, dt), wc_t, z, PREC)
        h = cast(tl.maximum(z, 0.0), dt)
        out = xt.to(tl.float32) + dot(h, wh_t, None, PREC)  # out^T block [BM, BL]
        tl.store(x_dst + offs_l[None, :] * DM + rows[:, None], cast(out, dt), mask=mxt)


@triton.autotune(configs=_FWD_CONFIGS, key=["L", "DA", "DV", "K", "T", "SPLIT"], reset_to_zero=["counter"],
                 prune_configs_by={"early_config_prune": prune_by_length})
@triton.jit(do_not_specialize=["B", "T", "W_PER_ITER"])
def _jca_fwd_kernel(xa, xv, w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv,
                    xa_out, xv_out, xa_it, xv_it, counter,
                    B, T, W_PER_ITER, L, DA, DV, K, scale,
                    BL: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
                    BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // SPLIT).to(tl.int64)  # the sample; its SPLIT programs share its row blocks
    s = pid % SPLIT
    D = DA + DV
    na = L * DA
    nv = L * DV
    # Iteration 0 reads the operator's input, which also goes to the saved-features buffer.
    copy_rows(xa + b * na, xa_it + b * na, L, DA, s, SPLIT, BL, BD)
    copy_rows(xv + b * nv, xv_it + b * nv, L, DV, s, SPLIT, BL, BD)
    for i in range(T):
        src_a = xa_it + (i * B + b) * na
        src_v = xv_it + (i * B + b) * nv
        if i == 0:
            src_a = xa + b * na
            src_v = xv + b * nv
        if i + 1 < T:
            dst_a = xa_it + ((i + 1) * B + b) * na
            dst_v = xv_it + ((i + 1) * B + b) * nv
        else:
            dst_a = xa_out + b * na
            dst_v = xv_out + b * nv
        wi = i * W_PER_ITER  # 0 when one weight set is shared by every iteration
        _fwd_modality(src_a, dst_a, src_a, src_v, w_ja + wi * L * L, w_a + wi * K * L, w_ca + wi * K * D,
                      w_ha + wi * L * K, L, DA, DA, D, K, scale, s, SPLIT, BL, BK, BM, BD, PREC)
        _fwd_modality(src_v, dst_v, src_a, src_v, w_jv + wi * L * L, w_v + wi * K * L, w_cv + wi * K * D,
                      w_hv + wi * L * K, L, DV, DA, D, K, scale, s, SPLIT, BL, BK, BM, BD, PREC)
        # Iteration i + 1 reads every row iteration i wrote (J couples all of them).
        sample_barrier(counter + b, (i + 1) * SPLIT, SPLIT)


@device_fn
def _bwd_modality(x, ja, jv, g_cur, g_next, g_join, COL0, w_j, w_u, w_c, w_h, gw_j, gw_u, gw_c, gw_h, acc_w,
                  L, DM, DA, D, K, scale, s, SPLIT: tl.constexpr,
                  BL: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
                  PREC: tl.constexpr):
    """Backward of one iteration of one modality of one sample (reference `_step_backward`).

    `g_cur [L, D]` (fp32) is the gradient of this iteration's output; this adds the modality's
    contributions to the gradient of its input: its rows' to `g_next [L, D]`, `dJ` to `g_join`
    (`g_next` itself for one program per sample, else this program's partial sum), and stores the
    weight gradients into this program's partial buffers (`+=` when `acc_w`, always when they
    start at zero for several programs per sample). This program's share: row blocks `s, s +
    SPLIT, ...`."""
    dt = x.dtype.element_ty
    offs_l = arange(BL)
    offs_k = arange(BK)
    ml = offs_l < L
    mk = offs_k < K
    mll = ml[:, None] & ml[None, :]
    mlk = ml[:, None] & mk[None, :]
    mkl = mk[:, None] & ml[None, :]
    wj = tl.load(w_j + offs_l[:, None] * L + offs_l[None, :], mask=mll, other=0.0)
    wu = tl.load(w_u + offs_k[:, None] * L + offs_l[None, :], mask=mkl, other=0.0)  # [BK, BL]
    wh = tl.load(w_h + offs_l[:, None] * K + offs_k[None, :], mask=mlk, other=0.0)  # [BL, BK]
    gwj = tl.zeros((BL, BL), tl.float32)
    gwu = tl.zeros((BK, BL), tl.float32)
    gwh = tl.zeros((BL, BK), tl.float32)
    for r0 in range(s * BM, DM, SPLIT * BM):
        rows = r0 + arange(BM)
        mxt = (rows[:, None] < DM) & ml[None, :]
        xt = tl.load(x + offs_l[None, :] * DM + rows[:, None], mask=mxt, other=0.0)  # [BM, BL]
        got = tl.load(g_cur + offs_l[None, :] * D + COL0 + rows[:, None], mask=mxt, other=0.0)
        p = cast(dot(xt, wj, None, PREC), dt)
        # Pass 1: rebuild Z of this row block.
        z = dot(xt, tl.trans(wu), None, PREC)
        for c0 in range(0, D, BD):
            cols = c0 + arange(BD)
            jt = load_j_tile(ja, jv, offs_l, cols, L, DA, D)
            c = tanh(dot(p, jt, None, PREC) * scale, dt)
            wc_t = tl.load(w_c + offs_k[None, :] * D + cols[:, None],
                           mask=(cols[:, None] < D) & mk[None, :], other=0.0)
            z = dot(cast(c, dt), wc_t, z, PREC)
        h = cast(tl.maximum(z, 0.0), dt)
        got_dt = cast(got, dt)
        gwh = dot(tl.trans(got_dt), h, gwh, PREC)  # dL/dw_h += g^T-block @ H
        gz = cast(tl.where(z > 0, dot(got_dt, wh, None, PREC), 0.0), dt)  # [BM, BK]
        gz_t = tl.trans(gz)
        gwu = dot(gz_t, xt, gwu, PREC)
        # Pass 2: recompute C tile by tile for the gradients that need dZ.
        gp = tl.zeros((BM, BL), tl.float32)
        for c0 in range(0, D, BD):
            cols = c0 + arange(BD)
            mcol = cols[None, :] < D
            jt = load_j_tile(ja, jv, offs_l, cols, L, DA, D)
            c, dc = tanh_and_grad(dot(p, jt, None, PREC) * scale)
            mkd = mk[:, None] & mcol
            wc = tl.load(w_c + offs_k[:, None] * D + cols[None, :], mask=mkd, other=0.0)  # [BK, BD]
            gwc = dot(gz_t, cast(c, dt), None, PREC)
            acc_store(gw_c + offs_k[:, None] * D + cols[None, :], gwc, mkd, acc_w | (r0 > 0))
            gs = cast(dot(gz, wc, None, PREC) * dc * scale, dt)  # dL/dS
            gp = dot(gs, tl.trans(jt), gp, PREC)
            gj = dot(tl.trans(p), gs, None, PREC)  # dL/dJ tile [BL, BD]
            acc_store(g_join + offs_l[:, None] * D + cols[None, :], gj, ml[:, None] & mcol, True)
            # The partial sums above are read back by the next row block: make them visible.
            tl.debug_barrier()
        gp_dt = cast(gp, dt)
        gwj = dot(tl.trans(xt), gp_dt, gwj, PREC)
        # dL/dx^T of the block: residual + unimodal term + through P = x^T w_j.
        gxt = got + dot(gz, wu, None, PREC) + dot(gp_dt, tl.trans(wj), None, PREC)
        acc_store(g_next + offs_l[None, :] * D + COL0 + rows[:, None], gxt, mxt, True)
        tl.debug_barrier()
    acc_store(gw_j + offs_l[:, None] * L + offs_l[None, :], gwj, mll, acc_w)
    acc_store(gw_u + offs_k[:, None] * L + offs_l[None, :], gwu, mkl, acc_w)
    acc_store(gw_h + offs_l[:, None] * K + offs_k[None, :], gwh, mlk, acc_w)


@device_fn
def _add_partials(dst, partials, L, D, s, SPLIT: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """`dst[:, tiles s, s + SPLIT, ...] += sum of partials[p]` over the `SPLIT` programs, in
    program order (fp32, `[L, D]` each)."""
    offs_l = arange(BL)
    for c0 in range(s * BD, D, SPLIT * BD):
        cols = c0 + arange(BD)
        m = (offs_l[:, None] < L) & (cols[None, :] < D)
        offs = offs_l[:, None] * D + cols[None, :]
        acc_store(dst + offs, sum_in_order(partials, offs, m, L * D, tl.zeros((BL, BD), tl.float32), SPLIT), m, True)


# Autotuning launches a kernel again on the same arguments: what a launch counts or adds up from
# zero is zeroed before each (the weight-gradient partials, accumulated with several programs).
@triton.autotune(configs=_BWD_CONFIGS, key=["L", "DA", "DV", "K", "T", "SPLIT"],
                 reset_to_zero=["counter", "p_ja", "p_jv", "p_a", "p_v", "p_ca", "p_cv", "p_ha", "p_hv"],
                 prune_configs_by={"early_config_prune": prune_by_length})
@triton.jit(do_not_specialize=["B", "T", "TW"])
def _jca_bwd_kernel(grad_xa, grad_xv, xa_it, xv_it, w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv,
                    gxa, gxv, g_scratch, counter, p_ja, p_jv, p_a, p_v, p_ca, p_cv, p_ha, p_hv,
                    B, T, TW, L, DA, DV, K, scale,
                    BL: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
                    BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // SPLIT).to(tl.int64)  # the sample; its SPLIT programs share its row blocks
    s = pid % SPLIT
    cnt = counter + b
    D = DA + DV
    na = L * DA
    nv = L * DV
    nd = L * D
    # fp32 per sample: two [L, D] gradient buffers ping-ponged across iterations, then with
    # SPLIT > 1 one dJ partial sum per program.
    scratch_per_sample = 2 * nd
    if SPLIT > 1:
        scratch_per_sample += SPLIT * nd
    g0 = g_scratch + b * scratch_per_sample
    partials = g0 + 2 * nd
    copy_cols(grad_xa + b * na, g0, L, DA, D, 0, 0, DA, s, SPLIT, BL, BD)
    copy_cols(grad_xv + b * nv, g0, L, DV, D, 0, DA, DV, s, SPLIT, BL, BD)
    # This program's slices of the [B * SPLIT, Tw, ...] weight-gradient partial buffers.
    n_ll = TW * L * L
    n_kl = TW * K * L
    n_kd = TW * K * D
    for t in range(T):
        i = T - 1 - t  # last iteration first
        g_cur, g_next, g_join = iteration_gradients(g0, partials, t, L, D, s, SPLIT, BL, BD)
        sample_barrier(cnt, (3 * t + 1) * SPLIT, SPLIT)
        src_a = xa_it + (i * B + b) * na
        src_v = xv_it + (i * B + b) * nv
        shared = TW == 1
        wi = tl.where(shared, 0, i)
        acc_w = (shared & (t > 0)) | (SPLIT > 1)  # shared weights sum their gradient over iterations
        _bwd_modality(src_a, src_a, src_v, g_cur, g_next, g_join, 0,
                      w_ja + wi * L * L, w_a + wi * K * L, w_ca + wi * K * D, w_ha + wi * L * K,
                      p_ja + pid * n_ll + wi * L * L, p_a + pid * n_kl + wi * K * L,
                      p_ca + pid * n_kd + wi * K * D, p_ha + pid * n_kl + wi * L * K, acc_w,
                      L, DA, DA, D, K, scale, s, SPLIT, BL, BK, BM, BD, PREC)
        _bwd_modality(src_v, src_a, src_v, g_cur, g_next, g_join, DA,
                      w_jv + wi * L * L, w_v + wi * K * L, w_cv + wi * K * D, w_hv + wi * L * K,
                      p_jv + pid * n_ll + wi * L * L, p_v + pid * n_kl + wi * K * L,
                      p_cv + pid * n_kd + wi * K * D, p_hv + pid * n_kl + wi * L * K, acc_w,
                      L, DV, DA, D, K, scale, s, SPLIT, BL, BK, BM, BD, PREC)
        sample_barrier(cnt, (3 * t + 2) * SPLIT, SPLIT)
        if SPLIT > 1:
            _add_partials(g_next, partials, L, D, s, SPLIT, BL, BD)
            sample_barrier(cnt, (3 * t + 3) * SPLIT, SPLIT)
    g_fin = g0 + (T % 2) * nd
    copy_cols(g_fin, gxa + b * na, L, D, DA, 0, 0, DA, s, SPLIT, BL, BD)
    copy_cols(g_fin, gxv + b * nv, L, D, DV, DA, 0, DV, s, SPLIT, BL, BD)


@triton_op("rja::triton_jca_forward", mutates_args=())
def triton_jca_forward(
    xa: Tensor, xv: Tensor, w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor, iterations: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the forward in one launch; returns outputs and iteration inputs."""
    xa, xv = xa.contiguous(), xv.contiguous()
    weights = [w.contiguous() for w in (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)]
    b, seq, da = xa.shape
    dv = xv.shape[2]
    tw, k = weights[2].shape[:2]
    xa_out, xv_out = torch.empty_like(xa), torch.empty_like(xv)
    xa_it = xa.new_empty((iterations, b, seq, da))
    xv_it = xv.new_empty((iterations, b, seq, dv))
    if b > 0:
        split = split_for(b, min(da, dv), xa.device)
        with co_resident(split):
            wrap_triton(_jca_fwd_kernel)[(b * split,)](
                xa, xv, *weights, xa_out, xv_out, xa_it, xv_it, arrival_counters(b, split, xa.device),
                b, iterations, int(tw > 1), seq, da, dv, k, 1.0 / math.sqrt(da + dv),
                BL=pad16(seq), BK=pad16(k), PREC=dot_precision(xa.dtype), SPLIT=split)
    return xa_out, xv_out, xa_it, xv_it


@triton_op("rja::triton_jca_backward", mutates_args=())
def triton_jca_backward(
    grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
) -> list[Tensor]:
    """The whole backward in one launch, then a deterministic sum of per-sample weight gradients."""
    grad_xa, grad_xv = grad_xa.contiguous(), grad_xv.contiguous()
    xa_iters, xv_iters = xa_iters.contiguous(), xv_iters.contiguous()
    weights = [w.contiguous() for w in (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)]
    t, b, seq, da = xa_iters.shape
    dv = xv_iters.shape[3]
    tw, k = weights[2].shape[:2]
    gxa, gxv = torch.empty_like(grad_xa), torch.empty_like(grad_xv)
    split = split_for(b, min(da, dv), grad_xa.device) if b > 0 else 1
    # Per-program fp32 partials of the weight gradients, reduced below with .sum(0): deterministic,
    # unlike fp32 atomics, and cheap next to the kernel (B * S * |weights| floats). Several programs
    # per sample add into theirs from zero: one may have no row block to store.
    new = torch.empty if split == 1 else torch.zeros
    partials = [new((b * split, *w.shape), device=w.device, dtype=torch.float32) for w in weights]
    if b > 0:
        scratch = torch.empty((b, 2 + (split if split > 1 else 0), seq, da + dv), device=grad_xa.device,
                              dtype=torch.float32)  # + the dJ partials
        with co_resident(split):
            wrap_triton(_jca_bwd_kernel)[(b * split,)](
                grad_xa, grad_xv, xa_iters, xv_iters, *weights, gxa, gxv, scratch,
                arrival_counters(b, split, grad_xa.device), *partials,
                b, t, tw, seq, da, dv, k, 1.0 / math.sqrt(da + dv),
                BL=pad16(seq), BK=pad16(k), PREC=dot_precision(grad_xa.dtype), SPLIT=split)
    return [gxa, gxv, *(p.sum(0).to(w.dtype) for p, w in zip(partials, weights))]
