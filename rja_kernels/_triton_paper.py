"""Triton kernels of the paper's form, `recursive_joint_attention` (SPEC section 1): torch ops
`rja::triton_paper_forward` and `rja::triton_paper_backward`. Imported lazily by
`rja_kernels.triton_backend`; the shared helpers and why one program owns one sample (all `T`
iterations in one launch) are in `rja_kernels._triton_common`.

Per iteration and modality `m` (features `x [L, dm]`), `C = tanh(P @ J / sqrt(d))` with
`P = x^T w_j` (`[dm, L]`, the queries) and `Q = x w_c` (`[L, dm]`). `G = Q @ C` contracts over
`dm`, the rows of `C`, so the program takes `d` in column tiles of `BD` and, for each, streams over
row tiles of `BM`: `S = P[rows] @ J[:, cols]`, `C = tanh(S)` (registers only), `G[:, cols] +=
Q[:, rows] @ C`; the finished `[L, BD]` tile of `G` gets its ReLU (of tanh with `h_tanh`) and goes
to the workspace as `H[:, cols]`. `C` is never written to memory. Then `U = H @ w_h` tile by tile
of `dm` and `x' = x + U` (`relu(U)` with `out_relu`).

Forward passes per iteration, separated by barriers: (1) `P`, `Q` of both modalities into the
workspace (computed once, not per tile of `C`); (2) `H` of both; (3) the update into the next
iteration's feature buffer.

Backward, per iteration, last first, from the saved features `xa_i, xv_i` only:
(1) `P`, `Q`; (2) rebuild `G` (first visit of every tile of `C`); (3) `dU = dx' * [U > 0]`
(rebuilding `U` with `out_relu`); (4) `dG = (dU @ w_h^T) * relu'(A) [* tanh'(G)]` with the full
`G` known; (5) second visit of every tile of `C`, now row tile outer and column tile inner:
`dQ[:, rows] += dG[:, cols] @ C^T`, `dS = (Q^T dG) * tanh'(S) / sqrt(d)`, `dP[rows] += dS @ J^T`,
`dJ[:, cols] += P^T dS` (into the fp32 gradient buffer of the iteration's input, shared by both
modalities, as `dJ` is); then `dx += dx' + w_j @ dP^T`; (6) `dx += dQ @ w_c^T`.
The weight gradients are sums over the batch of products the kernel already has (`dw_h = H^T dU`,
`dw_c = x^T dQ`, `dw_j = x dP`): the kernel writes `H`, `dU`, `dQ`, `dP^T` of every iteration to
`[T, B, L, *]` float32 buffers (the size of the features, `O(B·L·d·T)`) and one batched matmul per
weight reduces them over `B·L` (and `T` for shared weights) after the launch: deterministic (no
atomics), and far smaller than per-program partial weight gradients (`B·|w_h|` floats here).

Several programs per sample (`SPLIT`, `_triton_common.choose_split`: at the paper size B = 64 leaves half of an
H100's or H200's 132 SMs idle with one): a sample's programs share each pass's tiles (program `s`
takes tiles `s, s + SPLIT, ...`) and meet at `sample_barrier` between the passes. Every tile of
the forward is one program's, computed as with one program per sample: the same bits. In the
backward the only sum across programs is `dJ`'s over the row tiles of `C`: each program adds its
row tiles into its own `[L, D]` float32 partial, and `_grad_x_q`, past the barrier that ends that
pass, adds the `SPLIT` partials in program order (no atomics: the same bits on every run, one program per
sample's up to the order of that sum). `RJA_TRITON_SPLIT=S` forces `S` (0: the heuristic).

Workspaces: per sample, in the input dtype, `P`, `Q` and (forward) `H` of both modalities,
rounded there as a matmul in that dtype rounds them; in float32, the rebuilt `G` (then `dG` in its
place), two `[L, d]` gradient buffers ping-ponged across iterations and the `dJ` partials. Every
gradient tile stays in float32 into the products it feeds (`dot_f32`): rounded to float16 there,
`dG` and `dS` alone put `dw_j` at L = 1 four times past the rule. For 16-bit inputs those products
are 3xTF32 (`GRAD_PREC`, `_triton_common.grad_precision`): each float32 operand split into two tf32
values and three tf32 tensor-core products, about float32's accuracy, where exact products would
run as FMAs on CUDA cores and plain TF32 (float16's 11 bits) would miss the rule as well. The other
operand of six of the seven is loaded from a 16-bit tensor (`w_h`, `w_c`, `w_j`, `P`, `Q`, `J`),
exact in tf32: not split, two products; `dQ += dG C^T` (`C` in float32) takes three. float32
inputs keep exact products (TF32 where the user allowed it). Unmeasured on a GPU.
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
    dot_f32,
    dot_precision,
    grad_precision,
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

# In the interpreter: tiles smaller than the tests' odd sizes, so every loop takes several trips and
# a ragged last tile, yet few trips (each interpreted op is slow).
_FWD_CONFIGS = tile_configs({"BM": 16, "BD": 32}, [
    ({"BM": bm, "BD": bd}, w, 2) for bm, bd, w in ((32, 64, 4), (64, 64, 4), (64, 128, 8))], long_stages=2)
_BWD_CONFIGS = tile_configs({"BM": 16, "BD": 32}, [
    ({"BM": bm, "BD": bd}, w, 1) for bm, bd, w in ((32, 64, 4), (64, 64, 8))], long_stages=1)


@device_fn
def _act(g, H_TANH: tl.constexpr, dt: tl.constexpr):
    """The attention map's activation: relu(G), or relu(tanh(G))."""
    if H_TANH:
        g = tanh(g, dt)
    return tl.maximum(g, 0.0)


@device_fn
def _prep(x, w_j, w_c, p_dst, q_dst, L, DM, s, SPLIT: tl.constexpr,
          BL: tl.constexpr, BM: tl.constexpr, PREC: tl.constexpr):
    """`P = x^T w_j` `[DM, L]` and `Q = x w_c` `[L, DM]` of one modality into the workspace; this
    program's share: row tiles `s, s + SPLIT, ...` of `P` (columns of `Q`)."""
    dt = x.dtype.element_ty
    offs_l = arange(BL)
    ml = offs_l < L
    wj = tl.load(w_j + offs_l[:, None] * L + offs_l[None, :], mask=ml[:, None] & ml[None, :], other=0.0)
    for r0 in range(s * BM, DM, SPLIT * BM):
        rows = r0 + arange(BM)
        mr = rows < DM
        xt = tl.load(x + offs_l[None, :] * DM + rows[:, None], mask=mr[:, None] & ml[None, :], other=0.0)
        tl.store(p_dst + rows[:, None] * L + offs_l[None, :], cast(dot(xt, wj, None, PREC), dt),
                 mask=mr[:, None] & ml[None, :])
        q = tl.zeros((BL, BM), tl.float32)
        for k0 in range(0, DM, BM):
            ks = k0 + arange(BM)
            mk = ks < DM
            xk = tl.load(x + offs_l[:, None] * DM + ks[None, :], mask=ml[:, None] & mk[None, :], other=0.0)
            wc = tl.load(w_c + ks[:, None] * DM + rows[None, :], mask=mk[:, None] & mr[None, :], other=0.0)
            q = dot(xk, wc, q, PREC)
        tl.store(q_dst + offs_l[:, None] * DM + rows[None, :], cast(q, dt), mask=ml[:, None] & mr[None, :])


@device_fn
def _attention_map(p_src, q_src, ja, jv, dst, L, DM, DA, D, scale, s,
                   H_TANH: tl.constexpr, STORE_G: tl.constexpr, SPLIT: tl.constexpr,
                   BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """`G = Q @ C` column tile by column tile, each streaming over row tiles of `C`, which are
    rebuilt from `P` and `J` and never stored. Writes `H = act(G)` (input dtype, forward) or `G`
    (float32, backward) to `dst [L, D]`; this program's share: column tiles `s, s + SPLIT, ...`."""
    dt = ja.dtype.element_ty
    offs_l = arange(BL)
    ml = offs_l < L
    for c0 in range(s * BD, D, SPLIT * BD):
        cols = c0 + arange(BD)
        jt = load_j_tile(ja, jv, offs_l, cols, L, DA, D)
        g = tl.zeros((BL, BD), tl.float32)
        for r0 in range(0, DM, BM):
            rows = r0 + arange(BM)
            mr = rows < DM
            p = tl.load(p_src + rows[:, None] * L + offs_l[None, :], mask=mr[:, None] & ml[None, :], other=0.0)
            c = tanh(dot(p, jt, None, PREC) * scale, dt)  # C[rows, cols], [BM, BD]
            q = tl.load(q_src + offs_l[:, None] * DM + rows[None, :], mask=ml[:, None] & mr[None, :], other=0.0)
            g = dot(q, cast(c, dt), g, PREC)
        m = ml[:, None] & (cols[None, :] < D)
        offs = offs_l[:, None] * D + cols[None, :]
        if STORE_G:
            tl.store(dst + offs, g, mask=m)
        else:
            tl.store(dst + offs, cast(_act(g, H_TANH, dt), dt), mask=m)


@device_fn
def _h_tile(src, offs_l, cols, L, D, dt: tl.constexpr, FROM_G: tl.constexpr, H_TANH: tl.constexpr):
    """`H[:, cols]` `[BL, BD]` in dtype `dt`, from the stored `H` or from the stored float32 `G`."""
    m = (offs_l[:, None] < L) & (cols[None, :] < D)
    h = tl.load(src + offs_l[:, None] * D + cols[None, :], mask=m, other=0.0)
    if FROM_G:
        h = cast(_act(h, H_TANH, dt), dt)
    return h


@device_fn
def _update_u(h_src, w_h, u0, L, DM, D, dt: tl.constexpr, FROM_G: tl.constexpr, H_TANH: tl.constexpr,
              BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """`U[:, u0:u0+BM] = H @ w_h[:, u0:u0+BM]` (float32, `[BL, BM]`)."""
    offs_l = arange(BL)
    ucols = u0 + arange(BM)
    mu = ucols < DM
    acc = tl.zeros((BL, BM), tl.float32)
    for c0 in range(0, D, BD):
        cols = c0 + arange(BD)
        h = _h_tile(h_src, offs_l, cols, L, D, dt, FROM_G, H_TANH)
        wh = tl.load(w_h + cols[:, None] * DM + ucols[None, :], mask=(cols[:, None] < D) & mu[None, :], other=0.0)
        acc = dot(h, wh, acc, PREC)
    return acc


@device_fn
def _residual(h_src, w_h, x, dst, L, DM, D, s, OUT_RELU: tl.constexpr, SPLIT: tl.constexpr,
              BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """`x' = x + U` (or `x + relu(U)`), `U = H @ w_h`, tile by tile of `DM`; this program's
    share: tiles `s, s + SPLIT, ...`."""
    dt = x.dtype.element_ty
    offs_l = arange(BL)
    for u0 in range(s * BM, DM, SPLIT * BM):
        ucols = u0 + arange(BM)
        m = (offs_l[:, None] < L) & (ucols[None, :] < DM)
        u = _update_u(h_src, w_h, u0, L, DM, D, dt, False, False, BL, BM, BD, PREC)
        if OUT_RELU:
            u = tl.maximum(u, 0.0)
        offs = offs_l[:, None] * DM + ucols[None, :]
        xm = tl.load(x + offs, mask=m, other=0.0)
        tl.store(dst + offs, cast(xm.to(tl.float32) + u, dt), mask=m)


@triton.autotune(configs=_FWD_CONFIGS, key=["L", "DA", "DV", "T", "SPLIT"], reset_to_zero=["counter"],
                 prune_configs_by={"early_config_prune": prune_by_length})
@triton.jit(do_not_specialize=["B", "T", "W_PER_ITER"])
def _paper_fwd_kernel(xa, xv, w_ja, w_jv, w_ca, w_cv, w_ha, w_hv, xa_out, xv_out, xa_it, xv_it, ws, counter,
                      B, T, W_PER_ITER, L, DA, DV, scale,
                      H_TANH: tl.constexpr, OUT_RELU: tl.constexpr, BL: tl.constexpr, PREC: tl.constexpr,
                      SPLIT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // SPLIT).to(tl.int64)  # the sample; its SPLIT programs share its workspace
    s = pid % SPLIT
    cnt = counter + b
    D = DA + DV
    na = L * DA
    nv = L * DV
    # The sample's workspace (input dtype): P_a, Q_a, P_v, Q_v, H_a, H_v.
    p_a = ws + b * 4 * L * D
    q_a = p_a + na
    p_v = q_a + na
    q_v = p_v + nv
    h_a = q_v + nv
    h_v = h_a + L * D
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
        _prep(src_a, w_ja + wi * L * L, w_ca + wi * DA * DA, p_a, q_a, L, DA, s, SPLIT, BL, BM, PREC)
        _prep(src_v, w_jv + wi * L * L, w_cv + wi * DV * DV, p_v, q_v, L, DV, s, SPLIT, BL, BM, PREC)
        sample_barrier(cnt, (3 * i + 1) * SPLIT, SPLIT)
        _attention_map(p_a, q_a, src_a, src_v, h_a, L, DA, DA, D, scale, s, H_TANH, False, SPLIT, BL, BM, BD, PREC)
        _attention_map(p_v, q_v, src_a, src_v, h_v, L, DV, DA, D, scale, s, H_TANH, False, SPLIT, BL, BM, BD, PREC)
        sample_barrier(cnt, (3 * i + 2) * SPLIT, SPLIT)
        _residual(h_a, w_ha + wi * D * DA, src_a, dst_a, L, DA, D, s, OUT_RELU, SPLIT, BL, BM, BD, PREC)
        _residual(h_v, w_hv + wi * D * DV, src_v, dst_v, L, DV, D, s, OUT_RELU, SPLIT, BL, BM, BD, PREC)
        # Iteration i + 1 reads every row iteration i wrote (J couples all of them).
        sample_barrier(cnt, (3 * i + 3) * SPLIT, SPLIT)


@device_fn
def _grad_u(g_src, w_h, g_cur, COL0, gu_dst, L, DM, D, s, H_TANH: tl.constexpr, OUT_RELU: tl.constexpr,
            SPLIT: tl.constexpr, BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """`dU = dx'` (or `dx' * [U > 0]` with `out_relu`, rebuilding `U` from `G`) into `gu_dst [L, DM]`;
    this program's share: tiles `s, s + SPLIT, ...` of `DM`."""
    dt = w_h.dtype.element_ty
    offs_l = arange(BL)
    for u0 in range(s * BM, DM, SPLIT * BM):
        ucols = u0 + arange(BM)
        m = (offs_l[:, None] < L) & (ucols[None, :] < DM)
        gu = tl.load(g_cur + offs_l[:, None] * D + COL0 + ucols[None, :], mask=m, other=0.0)
        if OUT_RELU:
            u = _update_u(g_src, w_h, u0, L, DM, D, dt, True, H_TANH, BL, BM, BD, PREC)
            gu = gu * (u > 0).to(tl.float32)  # masks multiply: a NaN gradient stays NaN
        tl.store(gu_dst + offs_l[:, None] * DM + ucols[None, :], gu, mask=m)


@device_fn
def _grad_g(g_buf, w_h, gu_src, h_save, L, DM, D, s, H_TANH: tl.constexpr, SPLIT: tl.constexpr,
            BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, GRAD_PREC: tl.constexpr):
    """`dG = (dU @ w_h^T) * relu'(A)` (times `tanh'(G)` with `h_tanh`, `A = tanh(G)`) over `G` in
    `g_buf` (each element is stored from its own load), and `H = relu(A)` into `h_save` for the
    weight gradient `H^T dU`, both float32; this program's share: column tiles `s, s + SPLIT, ...`."""
    offs_l = arange(BL)
    ml = offs_l < L
    for c0 in range(s * BD, D, SPLIT * BD):
        cols = c0 + arange(BD)
        mc = cols < D
        gh = tl.zeros((BL, BD), tl.float32)
        for u0 in range(0, DM, BM):
            ucols = u0 + arange(BM)
            mu = ucols < DM
            gu = tl.load(gu_src + offs_l[:, None] * DM + ucols[None, :], mask=ml[:, None] & mu[None, :], other=0.0)
            wh_t = tl.load(w_h + cols[None, :] * DM + ucols[:, None], mask=mu[:, None] & mc[None, :], other=0.0)
            gh = dot_f32(gu, wh_t, gh, GRAD_PREC)  # dH[:, cols]
        m = ml[:, None] & mc[None, :]
        offs = offs_l[:, None] * D + cols[None, :]
        g = tl.load(g_buf + offs, mask=m, other=0.0)
        if H_TANH:
            a, da = tanh_and_grad(g)
            gg = gh * (a > 0).to(tl.float32) * da
        else:
            a = g
            gg = gh * (a > 0).to(tl.float32)
        tl.store(h_save + offs, tl.maximum(a, 0.0), mask=m)
        tl.store(g_buf + offs, gg, mask=m)


@device_fn
def _grad_c(p_src, q_src, gg_src, ja, jv, w_j, g_cur, g_next, g_join, COL0, gq_save, gp_save, L, DM, DA, D,
            scale, s, SPLIT: tl.constexpr, BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
            GRAD_PREC: tl.constexpr):
    """Second visit of every tile of `C` (row tile outer): `dQ`, `dP^T` (saved, float32), `dJ` into
    `g_join [L, D]` (`g_next` itself for one program per sample, else this program's partial sum,
    which `_grad_x_q` adds), and the residual plus `w_j @ dP^T` part of `dx` into `g_next`; this
    program's share: row tiles `s, s + SPLIT, ...`."""
    offs_l = arange(BL)
    ml = offs_l < L
    wj = tl.load(w_j + offs_l[:, None] * L + offs_l[None, :], mask=ml[:, None] & ml[None, :], other=0.0)
    for r0 in range(s * BM, DM, SPLIT * BM):
        rows = r0 + arange(BM)
        mr = rows < DM
        p = tl.load(p_src + rows[:, None] * L + offs_l[None, :], mask=mr[:, None] & ml[None, :], other=0.0)
        q_t = tl.load(q_src + offs_l[None, :] * DM + rows[:, None], mask=mr[:, None] & ml[None, :], other=0.0)
        gq = tl.zeros((BL, BM), tl.float32)
        gp = tl.zeros((BM, BL), tl.float32)
        for c0 in range(0, D, BD):
            cols = c0 + arange(BD)
            m = ml[:, None] & (cols[None, :] < D)
            jt = load_j_tile(ja, jv, offs_l, cols, L, DA, D)
            c, dc = tanh_and_grad(dot(p, jt, None, PREC) * scale)
            gg = tl.load(gg_src + offs_l[:, None] * D + cols[None, :], mask=m, other=0.0)
            gq = dot_f32(gg, tl.trans(c), gq, GRAD_PREC)
            gs = dot_f32(q_t, gg, None, GRAD_PREC) * dc * scale  # dS [BM, BD]
            gp = dot_f32(gs, tl.trans(jt), gp, GRAD_PREC)
            acc_store(g_join + offs_l[:, None] * D + cols[None, :], dot_f32(tl.trans(p), gs, None, GRAD_PREC), m,
                      True)
            # The partial sums above are read back by the next row tile: make them visible.
            tl.debug_barrier()
        m = ml[:, None] & mr[None, :]
        offs = offs_l[:, None] * DM + rows[None, :]
        tl.store(gq_save + offs, gq, mask=m)
        gp_t = tl.trans(gp)
        tl.store(gp_save + offs, gp_t, mask=m)
        gx = tl.load(g_cur + offs_l[:, None] * D + COL0 + rows[None, :], mask=m, other=0.0)
        gx += dot_f32(wj, gp_t, None, GRAD_PREC)
        acc_store(g_next + offs_l[:, None] * D + COL0 + rows[None, :], gx, m, True)
        tl.debug_barrier()


@device_fn
def _grad_x_q(gq_src, w_c, g_next, partials, COL0, L, DM, D, s, SPLIT: tl.constexpr,
              BL: tl.constexpr, BM: tl.constexpr, GRAD_PREC: tl.constexpr):
    """`dx += dQ @ w_c^T` into `g_next[:, COL0:COL0+DM]`, for several programs per sample plus the
    sum of their `dJ` partials (`partials [SPLIT, L, D]`, added in program order) over the same
    columns; this program's share: tiles `s, s + SPLIT, ...` of `DM`."""
    offs_l = arange(BL)
    ml = offs_l < L
    for r0 in range(s * BM, DM, SPLIT * BM):
        rows = r0 + arange(BM)
        mr = rows < DM
        acc = tl.zeros((BL, BM), tl.float32)
        if SPLIT > 1:
            acc = sum_in_order(partials, offs_l[:, None] * D + COL0 + rows[None, :], ml[:, None] & mr[None, :],
                               L * D, acc, SPLIT)
        for k0 in range(0, DM, BM):
            ks = k0 + arange(BM)
            mk = ks < DM
            gq = tl.load(gq_src + offs_l[:, None] * DM + ks[None, :], mask=ml[:, None] & mk[None, :], other=0.0)
            wc_t = tl.load(w_c + rows[None, :] * DM + ks[:, None], mask=mk[:, None] & mr[None, :], other=0.0)
            acc = dot_f32(gq, wc_t, acc, GRAD_PREC)
        acc_store(g_next + offs_l[:, None] * D + COL0 + rows[None, :], acc, ml[:, None] & mr[None, :], True)


@triton.autotune(configs=_BWD_CONFIGS, key=["L", "DA", "DV", "T", "SPLIT"], reset_to_zero=["counter"],
                 prune_configs_by={"early_config_prune": prune_by_length})
@triton.jit(do_not_specialize=["B", "T", "TW"])
def _paper_bwd_kernel(grad_xa, grad_xv, xa_it, xv_it, w_ja, w_jv, w_ca, w_cv, w_ha, w_hv, gxa, gxv, ws, fs, counter,
                      h_sa, h_sv, gu_sa, gu_sv, gq_sa, gq_sv, gp_sa, gp_sv,
                      B, T, TW, L, DA, DV, scale,
                      H_TANH: tl.constexpr, OUT_RELU: tl.constexpr, BL: tl.constexpr, PREC: tl.constexpr,
                      GRAD_PREC: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    # PREC: products of input-dtype tiles (as the forward's); GRAD_PREC: those with a float32
    # gradient tile (`dot_f32`, `_triton_common.grad_precision`).
    pid = tl.program_id(0)
    b = (pid // SPLIT).to(tl.int64)  # the sample; its SPLIT programs share its workspaces
    s = pid % SPLIT
    cnt = counter + b
    D = DA + DV
    na = L * DA
    nv = L * DV
    nd = L * D
    # Workspaces of the sample. Input dtype: P_a, Q_a, P_v, Q_v.
    p_a = ws + b * 2 * nd
    q_a = p_a + na
    p_v = q_a + na
    q_v = p_v + nv
    # float32: two [L, D] gradient buffers ping-ponged across iterations, then G_a, G_v (each
    # overwritten by its dG, as G is not read after), then with SPLIT > 1 one dJ partial sum per
    # program.
    fs_per_sample = 4 * nd
    if SPLIT > 1:
        fs_per_sample += SPLIT * nd
    g0 = fs + b * fs_per_sample
    g_a = g0 + 2 * nd
    g_v = g_a + nd
    partials = g_v + nd
    copy_cols(grad_xa + b * na, g0, L, DA, D, 0, 0, DA, s, SPLIT, BL, BD)
    copy_cols(grad_xv + b * nv, g0, L, DV, D, 0, DA, DV, s, SPLIT, BL, BD)
    for t in range(T):
        i = T - 1 - t  # last iteration first
        g_cur, g_next, g_join = iteration_gradients(g0, partials, t, L, D, s, SPLIT, BL, BD)
        src_a = xa_it + (i * B + b) * na
        src_v = xv_it + (i * B + b) * nv
        wi = tl.where(TW == 1, 0, i)
        wja = w_ja + wi * L * L
        wjv = w_jv + wi * L * L
        wca = w_ca + wi * DA * DA
        wcv = w_cv + wi * DV * DV
        wha = w_ha + wi * D * DA
        whv = w_hv + wi * D * DV
        # This iteration's slots of the saved products for the weight gradients.
        s_d = (i * B + b) * nd
        s_a = (i * B + b) * na
        s_v = (i * B + b) * nv
        _prep(src_a, wja, wca, p_a, q_a, L, DA, s, SPLIT, BL, BM, PREC)
        _prep(src_v, wjv, wcv, p_v, q_v, L, DV, s, SPLIT, BL, BM, PREC)
        sample_barrier(cnt, (6 * t + 1) * SPLIT, SPLIT)
        _attention_map(p_a, q_a, src_a, src_v, g_a, L, DA, DA, D, scale, s, H_TANH, True, SPLIT, BL, BM, BD, PREC)
        _attention_map(p_v, q_v, src_a, src_v, g_v, L, DV, DA, D, scale, s, H_TANH, True, SPLIT, BL, BM, BD, PREC)
        sample_barrier(cnt, (6 * t + 2) * SPLIT, SPLIT)
        _grad_u(g_a, wha, g_cur, 0, gu_sa + s_a, L, DA, D, s, H_TANH, OUT_RELU, SPLIT, BL, BM, BD, PREC)
        _grad_u(g_v, whv, g_cur, DA, gu_sv + s_v, L, DV, D, s, H_TANH, OUT_RELU, SPLIT, BL, BM, BD, PREC)
        sample_barrier(cnt, (6 * t + 3) * SPLIT, SPLIT)
        _grad_g(g_a, wha, gu_sa + s_a, h_sa + s_d, L, DA, D, s, H_TANH, SPLIT, BL, BM, BD, GRAD_PREC)
        _grad_g(g_v, whv, gu_sv + s_v, h_sv + s_d, L, DV, D, s, H_TANH, SPLIT, BL, BM, BD, GRAD_PREC)
        sample_barrier(cnt, (6 * t + 4) * SPLIT, SPLIT)
        _grad_c(p_a, q_a, g_a, src_a, src_v, wja, g_cur, g_next, g_join, 0, gq_sa + s_a, gp_sa + s_a,
                L, DA, DA, D, scale, s, SPLIT, BL, BM, BD, PREC, GRAD_PREC)
        _grad_c(p_v, q_v, g_v, src_a, src_v, wjv, g_cur, g_next, g_join, DA, gq_sv + s_v, gp_sv + s_v,
                L, DV, DA, D, scale, s, SPLIT, BL, BM, BD, PREC, GRAD_PREC)
        sample_barrier(cnt, (6 * t + 5) * SPLIT, SPLIT)
        _grad_x_q(gq_sa + s_a, wca, g_next, partials, 0, L, DA, D, s, SPLIT, BL, BM, GRAD_PREC)
        _grad_x_q(gq_sv + s_v, wcv, g_next, partials, DA, L, DV, D, s, SPLIT, BL, BM, GRAD_PREC)
        sample_barrier(cnt, (6 * t + 6) * SPLIT, SPLIT)
    g_fin = g0 + (T % 2) * nd
    copy_cols(g_fin, gxa + b * na, L, D, DA, 0, 0, DA, s, SPLIT, BL, BD)
    copy_cols(g_fin, gxv + b * nv, L, D, DV, DA, 0, DV, s, SPLIT, BL, BD)


@triton_op("rja::triton_paper_forward", mutates_args=())
def triton_paper_forward(
    xa: Tensor, xv: Tensor, w_ja: Tensor, w_jv: Tensor, w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int, h_tanh: bool, out_relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `iterations` of the paper's form in one launch; returns outputs and iteration inputs."""
    xa, xv = xa.contiguous(), xv.contiguous()
    weights = [w.contiguous() for w in (w_ja, w_jv, w_ca, w_cv, w_ha, w_hv)]
    b, seq, da = xa.shape
    dv = xv.shape[2]
    tw = weights[0].shape[0]
    xa_out, xv_out = torch.empty_like(xa), torch.empty_like(xv)
    xa_it = xa.new_empty((iterations, b, seq, da))
    xv_it = xv.new_empty((iterations, b, seq, dv))
    if b > 0:
        split = split_for(b, min(da, dv), xa.device)
        ws = xa.new_empty((b, 4 * seq * (da + dv)))
        with co_resident(split):
            wrap_triton(_paper_fwd_kernel)[(b * split,)](
                xa, xv, *weights, xa_out, xv_out, xa_it, xv_it, ws, arrival_counters(b, split, xa.device),
                b, iterations, int(tw > 1), seq, da, dv, 1.0 / math.sqrt(da + dv),
                H_TANH=h_tanh, OUT_RELU=out_relu, BL=pad16(seq), PREC=dot_precision(xa.dtype), SPLIT=split)
    return xa_out, xv_out, xa_it, xv_it


def _weight_grads(x: Tensor, grad_p_t: Tensor, grad_q: Tensor, h: Tensor, grad_u: Tensor, tw: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """`dw_j = x dP`, `dw_c = x^T dQ`, `dw_h = H^T dU` of one modality, summed over the batch (and
    over iterations when `tw == 1`), from the kernel's `[T, B, L, *]` float32 products."""
    t, b, seq, dm = x.shape
    x = x.float()
    n = 1 if tw == 1 else t  # weight sets: iterations fold into the batch for shared weights
    rows = t * b * seq // n  # explicit (not -1): B may be 0
    gw_j = (x.reshape(t * b, seq, dm) @ grad_p_t.reshape(t * b, seq, dm).mT).reshape(n, t * b // n, seq, seq).sum(1)
    gw_c = x.reshape(n, rows, dm).mT @ grad_q.reshape(n, rows, dm)
    gw_h = h.reshape(n, rows, h.shape[-1]).mT @ grad_u.reshape(n, rows, dm)
    return gw_j, gw_c, gw_h


@triton_op("rja::triton_paper_backward", mutates_args=())
def triton_paper_backward(
    grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    h_tanh: bool, out_relu: bool,
) -> list[Tensor]:
    """The whole backward in one launch, then one batched matmul per weight for its gradient."""
    grad_xa, grad_xv = grad_xa.contiguous(), grad_xv.contiguous()
    xa_iters, xv_iters = xa_iters.contiguous(), xv_iters.contiguous()
    weights = [w.contiguous() for w in (w_ja, w_jv, w_ca, w_cv, w_ha, w_hv)]
    t, b, seq, da = xa_iters.shape
    dv = xv_iters.shape[3]
    d = da + dv
    tw = weights[0].shape[0]
    gxa, gxv = torch.empty_like(grad_xa), torch.empty_like(grad_xv)
    f32 = {"device": grad_xa.device, "dtype": torch.float32}
    # H, dU, dQ, dP^T of every iteration, per modality (float32, [T, B, L, *]).
    h_a, h_v = torch.empty((t, b, seq, d), **f32), torch.empty((t, b, seq, d), **f32)
    saved_a = [torch.empty((t, b, seq, da), **f32) for _ in range(3)]  # dU, dQ, dP^T
    saved_v = [torch.empty((t, b, seq, dv), **f32) for _ in range(3)]
    if b > 0:
        split = split_for(b, min(da, dv), grad_xa.device)
        ws = grad_xa.new_empty((b, 2 * seq * d))
        fs = torch.empty((b, (4 + (split if split > 1 else 0)) * seq * d), **f32)  # + the dJ partials
        with co_resident(split):
            wrap_triton(_paper_bwd_kernel)[(b * split,)](
                grad_xa, grad_xv, xa_iters, xv_iters, *weights, gxa, gxv, ws, fs,
                arrival_counters(b, split, grad_xa.device), h_a, h_v,
                saved_a[0], saved_v[0], saved_a[1], saved_v[1], saved_a[2], saved_v[2],
                b, t, tw, seq, da, dv, 1.0 / math.sqrt(d),
                H_TANH=h_tanh, OUT_RELU=out_relu, BL=pad16(seq), PREC=dot_precision(grad_xa.dtype),
                GRAD_PREC=grad_precision(grad_xa.dtype), SPLIT=split)
    gw_ja, gw_ca, gw_ha = _weight_grads(xa_iters, saved_a[2], saved_a[1], h_a, saved_a[0], tw)
    gw_jv, gw_cv, gw_hv = _weight_grads(xv_iters, saved_v[2], saved_v[1], h_v, saved_v[0], tw)
    grads = (gw_ja, gw_jv, gw_ca, gw_cv, gw_ha, gw_hv)
    return [gxa, gxv, *(g.to(w.dtype) for g, w in zip(grads, weights))]
