// The fused kernels of the paper's form, `recursive_joint_attention` (docs/SPEC.md section 1),
// compiled by nvcc for the GPU and by the host compiler against csrc/emu/emu.h for the CPU tests.
//
// The thread blocks of a sample own it for all T iterations, which run in one launch: iteration i
// writes its outputs to global memory (xa_iters/xv_iters[i + 1]) and the blocks synchronise before
// iteration i + 1 reads them as its joint features J. Forward and backward give each sample S
// blocks (Dims::split, chosen by host.h to fill the GPU; a barrier across them through a counter
// in global memory, Group in common.cuh): they share the column tiles below, block p taking tiles
// p, p + S, ... and summing them in that order into its own partial sum, and after a barrier the S
// partials are added in the order 0 .. S - 1. No float atomics: the same S gives the same bits
// run to run; another S differs from S = 1 by rounding only (the sums are associated differently).
// Per iteration and modality m (features x [L, dm], columns [off, off + dm) of J):
//   P = x^T w_j [dm, L] and Q = x w_c [L, dm]              fp32 per-sample workspace (L2-resident)
//   for each tile of E joint features (columns of C):       J tile staged in shared memory
//     for each tile of R rows of C:                         rows of P, columns of Q staged
//       C = tanh(P_rows J_tile / sqrt(d))     [R, E]        shared memory only, never global
//       G += Q[:, rows] C                     [L, E]        the whole contraction over dm
//     H = relu(G)  (relu(tanh(G)) with h_tanh)
//     U += H w_h[tile, :]                     [L, dm]       fp32 per-sample workspace
//   out = x + U  (x + relu(U) with out_relu)
// The backward runs the iterations in reverse in one launch, from the saved input features of each
// iteration. Per column tile and modality it recomputes the G tile (first pass over the row tiles:
// relu'(G) needs the whole contraction), then dG = (dU w_h[tile]^T) relu'(G), and in a second pass
// over the row tiles (C recomputed, or kept in shared memory when one row tile holds all of dm)
// dQ += dG C^T, dS = (Q^T dG) tanh'/sqrt(d), dP += dS J^T and dJ += P^T dS. With out_relu it
// first recomputes U for the mask. dx = dU + dQ w_c^T + w_j dP^T + dJ feeds the iteration before.
// The weight gradients are contractions over the batch: the kernel writes their per-sample
// factors (H, dU, dQ, dP of every iteration, O(B L d T)) and the host reduces them with one
// matrix product per weight (host.h): deterministic, and no per-block copy of the d x dm weights.
//
// Tensor cores. For float16 and bfloat16 (with tiles of multiples of 16 on an sm_80+ device: Dims::products,
// host.h) the forward's three large contractions, C = tanh(P_rows J_tile / sqrt(d)), G += Q[:, rows] C
// and U += H w_h[tile, :], run on WMMA (mma_tiles, common.cuh) with float32 accumulators. Their
// operand tiles P, J, Q, C, H, w_h are rounded to the element type, as the Triton kernel's tl.dot
// operands are and as the eager reference rounds its intermediates; the rest stays float32. The
// backward's must not round to 16 bits: its recomputed G and U select the gradient by their relu
// masks, which flip where G is near 0 if recomputed from 16-bit operands (each flip costs O(1) in the
// gradients; bfloat16's grad xa went 2.5x past the accuracy rule, tests/test_cuda_emulated.py sizes),
// and 16-bit gradient tiles broke the rule as well. So for the same inputs the backward runs its
// large contractions (the recomputed C, G and U, gG = gU w_h[tile]^T, Q^T gG, gG C^T, gS J^T and
// P^T gS) on float32 tiles by 3xTF32 (mma_tiles_f32: about float32 accuracy; J and w_h hold 16-bit
// values, exact in tf32, which saves a product), unmeasured on a GPU, and so does dx += dQ w_c^T +
// w_j dP^T (L dm^2: a tenth of the work at the paper size, which CUDA cores would make the larger
// part of the time). float32 stays on CUDA cores (exact float32 products) unless the user allowed
// TF32 (host.h): then it takes the same 3xTF32 path forward and backward, three products each (the
// forward's C, G and U are then the backward's recompute: Products::tf32x3, Dims).
#pragma once

#include "common.cuh"

namespace rja {
namespace paper {

// Shared memory of one block, in floats; every buffer starts 32-byte aligned (WMMA tiles). On CUDA
// cores the row strides E + 1 keep the column walks of the J, C and dS tiles (dQ and dP loops) free
// of bank conflicts. The tensor-core paths pad L to Lp, a multiple of 16. The 16-bit one
// (Products::wmma_16_bit) has the 16-bit mma operands and a float tile for products in place of the
// float J, P, Q and C tiles; their row strides are 16 bytes more than a multiple of 16 elements, so
// the rows of a WMMA tile start in different banks. The 3xTF32 one (Products::tf32x3) keeps the float
// tiles, padded to Lp rows (and R, E columns) with zeros, at row strides of 4 floats past their width
// for the same reason, and adds the float tiles S (and in the backward Sq) for products before their
// epilogues and W for the chunks of w_h.
struct SmemLayout : SmemArena {
  int Lp, ld16, ldP16, ldQ16, ldS;       // tensor-core paths: padded L; the 16-bit path's row strides
  int ldE, ldG, ldP, ldQ;                // row strides: J, C, gS (and W, S for E columns); G, gG, gJ; P; Q
  Span G;                                // float
  Span Jt, Pt, Qt, C;                    // float, not on the 16-bit path
  Span gG, gJ, gS;                       // float, backward only
  Span W;                                // float, backward or the 3xTF32 path
  Span J16, P16, Q16, C16, H16, W16;     // the 16-bit path only
  Span S;                                // float, tensor-core paths only
  Span Sq;                               // float, the backward's 3xTF32 path only
  RJA_HOST_DEVICE SmemLayout(const Dims& s, bool backward) {
    const int L = s.L, R = s.R, E = s.E;
    const bool mma16 = s.products == Products::wmma_16_bit, mma_f32 = s.products == Products::tf32x3;
    const auto larger = [](int a, int b) { return a > b ? a : b; };
    Lp = s.padded() ? (L + 15) / 16 * 16 : L;
    ld16 = E + 8;
    ldP16 = Lp + 8;
    ldQ16 = R + 8;
    ldS = E + 4;
    ldE = mma_f32 ? E + 4 : E + 1;
    ldG = mma_f32 ? E + 4 : E;
    ldP = mma_f32 ? Lp + 4 : L;
    ldQ = mma_f32 ? R + 4 : R;
    G = take(Lp * ldG, 4);
    if (!mma16) {
      Jt = take(Lp * ldE, 4);
      Pt = take(R * ldP, 4);
      Qt = take(Lp * ldQ, 4);
      C = take(R * ldE, 4);
    }
    if (backward) {
      gG = take(Lp * ldG, 4);
      gJ = take(Lp * ldG, 4);
      gS = take(R * ldE, 4);
      // rows_times_transposed's chunks [R, E + 1]; on tensor cores also w_h's, [E, ldQ]
      W = take(mma_f32 ? larger(R * (E + 1), E * ldQ) : R * (E + 1), 4);
    } else if (mma_f32) {
      W = take(E * ldQ, 4);  // w_h's chunks
    }
    if (mma16) {
      J16 = take(Lp * ld16, 2);
      P16 = take(R * ldP16, 2);
      Q16 = take(Lp * ldQ16, 2);
      C16 = take(R * ld16, 2);
      H16 = take(Lp * ld16, 2);
      W16 = take(E * ld16, 2);
      S = take(larger(R, Lp) * ldS, 4);
    }
    if (mma_f32 && backward) {  // S: products [R, E], [R, Lp], [Lp, R] and gU's chunks [Lp, R]; Sq: gG C^T [Lp, R]
      S = take(larger(R * ldE, larger(R * ldP, Lp * ldQ)), 4);
      Sq = take(Lp * ldQ, 4);
    } else if (mma_f32) {  // S: H w_h's chunks [Lp, R]
      S = take(Lp * ldQ, 4);
    }
  }
};

template <class K>
struct Tiles {
  // Jt, Pt, Qt, C: not on the 16-bit path.
  Ptr<float> Jt;  // [Lp, ldE]  joint-feature tile J[:, col0 : col0 + cols]
  Ptr<float> Pt;  // [R, ldP]   rows [row0, row0 + rows) of P = x^T w_j
  Ptr<float> Qt;  // [Lp, ldQ]  the same columns of Q = x w_c
  Ptr<float> C;   // [R, ldE]   correlation tile
  Ptr<float> G;   // [Lp, ldG]  G tile; then H (forward) or the derivative of H w.r.t. G (backward)
  Ptr<float> gG;  // [Lp, ldG]  backward: gradient of the G tile
  Ptr<float> gJ;  // [Lp, ldG]  backward: J gradient of the column tile, both modalities
  Ptr<float> gS;  // [R, ldE]   backward: gradient of the pre-tanh tile
  Ptr<float> W;   // chunks of weights: the backward's rows_times_transposed's, transposed; w_h's by 3xTF32
  // The tensor-core paths: on 16-bit operands (mma; 16-bit forwards), or on the float tiles by 3xTF32
  // (mma_f32; the backwards, and float32 forwards where TF32 is allowed); either pads L to Lp, and
  // its tiles are zero past the ragged or padded edges.
  bool mma, mma_f32;  // this path is taken
  int Lp, ld16, ldP16, ldQ16, ldS, ldE, ldG, ldP, ldQ;
  Ptr<K> J16;     // [Lp, ld16]   J tile
  Ptr<K> P16;     // [R, ldP16]   P rows
  Ptr<K> Q16;     // [Lp, ldQ16]  Q columns
  Ptr<K> C16;     // [R, ld16]    C tile
  Ptr<K> H16;     // [Lp, ld16]   H tile
  Ptr<K> W16;     // [E, ld16]    a chunk of E columns of w_h[tile, :]
  Ptr<float> S;   // a product before its epilogue: P J (16-bit), a chunk of H w_h; backward Q^T gG, gS J^T
  Ptr<float> Sq;  // [Lp, ldQ]    backward: gG C^T before it is added to gQ

  RJA_DEVICE Tiles(Ptr<float> smem, const Dims& dims, bool backward) {
    const Dims s = with_products_taken<K>(dims, backward);
    const SmemLayout at(s, backward);
    const auto f32_slice = [&](SmemLayout::Span span, const char* name) {
      return smem_buffer<float>(smem, span, name);
    };
    const auto k_slice = [&](SmemLayout::Span span, const char* name) { return smem_buffer<K>(smem, span, name); };
    mma = s.products == Products::wmma_16_bit;
    mma_f32 = s.products == Products::tf32x3;
    G = f32_slice(at.G, "smem.G");
    if (!mma) {
      Jt = f32_slice(at.Jt, "smem.Jt");
      Pt = f32_slice(at.Pt, "smem.Pt");
      Qt = f32_slice(at.Qt, "smem.Qt");
      C = f32_slice(at.C, "smem.C");
    }
    if (backward) {
      gG = f32_slice(at.gG, "smem.gG");
      gJ = f32_slice(at.gJ, "smem.gJ");
      gS = f32_slice(at.gS, "smem.gS");
    }
    if (backward || mma_f32) W = f32_slice(at.W, "smem.W");
    Lp = at.Lp;
    ld16 = at.ld16;
    ldP16 = at.ldP16;
    ldQ16 = at.ldQ16;
    ldS = at.ldS;
    ldE = at.ldE;
    ldG = at.ldG;
    ldP = at.ldP;
    ldQ = at.ldQ;
    if (mma) {
      J16 = k_slice(at.J16, "smem.J16");
      P16 = k_slice(at.P16, "smem.P16");
      Q16 = k_slice(at.Q16, "smem.Q16");
      C16 = k_slice(at.C16, "smem.C16");
      H16 = k_slice(at.H16, "smem.H16");
      W16 = k_slice(at.W16, "smem.W16");
    }
    if (mma || mma_f32) S = f32_slice(at.S, "smem.S");
    if (mma_f32 && backward) Sq = f32_slice(at.Sq, "smem.Sq");
  }
};

// The fp32 per-sample workspace: P [d, L] (rows [off, off + dm) are modality m's) and Q [L, d]
// (columns [off, off + dm)); the forward adds U [L, d], the backward the running gradient g [L, d].
struct Work {
  Ptr<float> P, Q, third;
  RJA_HOST_DEVICE static std::int64_t floats(const Dims& s) { return 3 * std::int64_t(s.L) * s.d(); }
  RJA_DEVICE Work(Ptr<float> all, std::int64_t b, const Dims& s) {
    const std::int64_t ld = std::int64_t(s.L) * s.d();
    const Ptr<float> mine = slice(all, b * floats(s), floats(s), "work[b]");
    P = slice(mine, 0, ld, "work.P");
    Q = slice(mine, ld, ld, "work.Q");
    third = slice(mine, 2 * ld, ld, "work.U|g");
  }
};

// One modality at one iteration: its features x [L, dm], columns [off, off + dm) of J, and this
// iteration's weights.
template <class K>
struct Modality {
  Ptr<const K> x;
  int dm, off;
  Ptr<const K> wj, wc, wh;  // [L, L], [dm, dm], [d, dm]
};

// m = 0 audio, 1 visual; w = {w_ja, w_jv, w_ca, w_cv, w_ha, w_hv}, each [Tw, ...].
template <class K>
RJA_DEVICE Modality<K> modality(Ptr<const K> x, int m, const Ptr<const K>* w, int set, const Dims& s) {
  const int dm = m == 0 ? s.da : s.dv;
  return {x, dm, m == 0 ? 0 : s.da, weight_slice(w[m], set, std::int64_t(s.L) * s.L, "w_j[i]"),
          weight_slice(w[2 + m], set, std::int64_t(dm) * dm, "w_c[i]"),
          weight_slice(w[4 + m], set, std::int64_t(s.d()) * dm, "w_h[i]")};
}

// relu that keeps NaN, as torch.relu does.
RJA_DEVICE float relu(float v) { return v > 0.f || v != v ? v : 0.f; }

// P rows [off + r0, off + r1) and Q columns [off + r0, off + r1) of modality m (all of them for
// r0 = 0, r1 = dm). Each element is computed the same way whatever the range. No barrier.
template <class K>
RJA_DEVICE void projections(const Modality<K>& m, Ptr<float> P, Ptr<float> Q, const Dims& s, int r0, int r1) {
  const int L = s.L, d = s.d(), dm = m.dm, off = m.off + r0;
  const Ptr<const K> x = m.x;
  rows_times(r1 - r0, L, L, [&](int r, int lp) { return to_float(x[lp * dm + r0 + r]); }, m.wj, L,
             [&](int r, int l, float v) { P[(off + r) * L + l] = v; });
  rows_times(L, r1 - r0, dm, [&](int l, int r) { return to_float(x[l * dm + r]); }, m.wc + r0, dm,
             [&](int l, int c, float v) { Q[l * d + off + c] = v; });
}

// The rows of P (columns of Q) of modality m that block g of its sample computes: its share of d.
template <class K>
RJA_DEVICE void group_projections(const Modality<K>& m, Ptr<float> P, Ptr<float> Q, const Dims& s, const Group& g) {
  projections(m, P, Q, s, clamp_to(g.first(s.d()) - m.off, m.dm), clamp_to(g.last(s.d()) - m.off, m.dm));
}

// Stages the J tile [col0, col0 + cols).
template <class K>
RJA_DEVICE void stage_joint(const Joint<K>& J, const Tiles<K>& t, const Dims& s, int col0, int cols) {
  const int L = s.L, E = s.E;
  if (t.mma) {
    stage_joint_tile(J, t.J16, t.ld16, L, col0, cols, t.Lp, E);
  } else {
    stage_joint_tile(J, t.Jt, t.ldE, L, col0, cols, t.Lp, t.mma_f32 ? E : cols);
  }
}

// Stages rows [row0, row0 + rows) of modality m's P and the same columns of its Q.
template <class K>
RJA_DEVICE void stage_rows(const Modality<K>& m, Ptr<const float> P, Ptr<const float> Q, const Tiles<K>& t,
                           const Dims& s, int row0, int rows) {
  const int L = s.L, R = s.R, d = s.d(), base = m.off + row0;
  const Ptr<const float> P_rows = P + base * L, Q_cols = Q + base;
  if (t.mma) {
    stage_tile(P_rows, L, rows, L, t.P16, t.ldP16, R, t.Lp);
    stage_tile(Q_cols, d, L, rows, t.Q16, t.ldQ16, t.Lp, R);
  } else {  // on the 3xTF32 path zero on to [R, Lp] and [Lp, R]
    const int Rp = t.mma_f32 ? R : rows;
    stage_tile(P_rows, L, rows, L, t.Pt, t.ldP, Rp, t.Lp);
    stage_tile(Q_cols, d, L, rows, t.Qt, t.ldQ, t.Lp, Rp);
  }
}

// C of the staged row tile into t.C (with kDerivative, the backward's, also tanh' of its elements
// into t.gS), no barrier; on the 16-bit path into t.C16, in 16 bits, and on the 3xTF32 path into
// the padded t.C, each with a barrier inside. C is complete for every thread after the next barrier.
template <class K, bool kDerivative>
RJA_DEVICE void correlation(const Tiles<K>& t, const Dims& s, int rows, int cols) {
  const int R = s.R, E = s.E;
  if constexpr (tensor_cores<K>()) {
    if (t.mma) {
      correlation_tile_mma<K>(R, E, t.Lp, t.P16, t.ldP16, t.J16, t.ld16, t.S, t.ldS, t.C16, t.ld16, s.scale);
      return;
    }
  }
  if constexpr (tf32_tensor_cores()) {
    if (t.mma_f32) {
      correlation_tile_f32<K, kDerivative>(R, E, t.Lp, t.Pt, t.ldP, t.Jt, t.ldE, t.C, t.ldE, t.C, t.ldE, rows, cols,
                                           s.scale, t.gS);
      return;
    }
  }
  correlation_tile<K, kDerivative>(t.Pt, t.Jt, t.ldE, t.C, t.ldE, rows, cols, s.L, s.scale, t.gS);
}

// The [L, cols] tile of G = (x w_c) C for the staged J tile, over all row tiles of m, with C
// recomputed tile by tile. Barriers inside (the first orders the J tile, P and Q before their use);
// at return the G tile is complete for the threads of the (l, e) loop over L * cols (for all threads
// on the tensor-core paths, where its [Lp, E] padding is 0), and the last row tile's P rows, Q
// columns and C (with kDerivative also tanh' of C's elements, in gS) are still staged.
template <class K, bool kDerivative = false>
RJA_DEVICE void attention_tile(const Modality<K>& m, Ptr<const float> P, Ptr<const float> Q, const Tiles<K>& t,
                               const Dims& s, int cols) {
  const int L = s.L, R = s.R, E = s.E;
  if (t.mma || t.mma_f32) {
    RJA_BLOCK_LOOP(i, t.Lp * E) t.G[(i / E) * t.ldG + i % E] = 0.f;
  } else {
    RJA_BLOCK_LOOP(i, L * cols) t.G[(i / cols) * t.ldG + i % cols] = 0.f;
  }
  for (int row0 = 0; row0 < m.dm; row0 += R) {
    const int rows = tile_size(m.dm, row0, R);
    __syncthreads();  // the previous row tile's readers are done
    stage_rows(m, P, Q, t, s, row0, rows);
    __syncthreads();
    correlation<K, kDerivative>(t, s, rows, cols);
    __syncthreads();
    if constexpr (tensor_cores<K>()) {
      if (t.mma) {
        mma_tiles<K>(t.Lp, E, R, t.Q16, t.ldQ16, t.C16, t.ld16, t.G, t.ldG, true);
        continue;
      }
    }
    if constexpr (tf32_tensor_cores()) {
      if (t.mma_f32) {
        mma_tiles_f32<nvcuda::wmma::row_major, nvcuda::wmma::row_major>(t.Lp, E, R, t.Qt, t.ldQ, t.C, t.ldE, t.G,
                                                                        t.ldG, true);
        continue;
      }
    }
    RJA_BLOCK_LOOP(i, L * cols) {  // same (l, e) ownership as the zeroing above
      const int l = i / cols, e = i % cols;
      float acc = 0.f;
      for (int r = 0; r < rows; ++r) acc += t.Qt[l * t.ldQ + r] * t.C[r * t.ldE + e];
      t.G[l * t.ldG + e] += acc;
    }
  }
  if (t.mma || t.mma_f32) __syncthreads();  // the warps' G tiles are complete
}

// U[:, off : off + dm] += H w_h[col0 : col0 + cols, :] of modality m for the H tile (t.H16 on the
// 16-bit path, else t.G), complete before the call. On the tensor-core paths in chunks of columns
// of w_h, staged: E in 16 bits, or on the 3xTF32 path R in float (in less shared memory), with
// barriers inside; no barrier on the CUDA-core path.
template <class K>
RJA_DEVICE void add_update(const Modality<K>& m, const Tiles<K>& t, const Dims& s, Ptr<float> U, int col0, int cols) {
  const int L = s.L, E = s.E, d = s.d(), dm = m.dm, off = m.off;
  const Ptr<const K> wh = slice(m.wh, std::int64_t(col0) * dm, std::int64_t(cols) * dm, "w_h[tile]");
  if constexpr (tf32_tensor_cores()) {  // the mma path only for 16-bit K (Tiles)
    if (t.mma || t.mma_f32) {
      const int nc = t.mma ? E : s.R, lds = t.mma ? t.ldS : t.ldQ;  // W16 [E, ld16], W [E, ldQ]
      for (int c0 = 0; c0 < dm; c0 += nc) {
        const int n = tile_size(dm, c0, nc);
        if (c0 > 0) __syncthreads();  // the previous chunk's readers of W16 (W) and S are done
        // zero past the tile's rows: H's padding times it must be 0
        if (t.mma) {
          stage_tile(wh + c0, dm, cols, n, t.W16, t.ld16, E, nc);
        } else {
          stage_tile(wh + c0, dm, cols, n, t.W, t.ldQ, E, nc);
        }
        __syncthreads();
        if (!t.mma) {
          mma_tiles_f32<nvcuda::wmma::row_major, nvcuda::wmma::row_major, false, exact_in_tf32<K>()>(
              t.Lp, nc, E, t.G, t.ldG, t.W, t.ldQ, t.S, lds, false);
        } else if constexpr (tensor_cores<K>()) {
          mma_tiles<K>(t.Lp, nc, E, t.H16, t.ld16, t.W16, t.ld16, t.S, lds, false);
        }
        __syncthreads();
        RJA_BLOCK_LOOP(i, L * n) {
          const int l = i / n, c = i % n;
          U[l * d + off + c0 + c] += t.S[l * lds + c];
        }
      }
      return;
    }
  }
  rows_times(L, dm, cols, [&](int l, int e) { return t.G[l * t.ldG + e]; }, wh, dm,
             [&](int l, int c, float v) { U[l * d + off + c] += v; });
}

// U [L, d] of one iteration (columns [off, off + dm) are modality m's), from P and Q, a sum over
// the column tiles. Alone (g.parts == 1) the block sums them into U; in a group of S blocks block
// g.part sums its tiles g.part, g.part + S, ..., in that order, into its partial U (the caller
// passes its slice of the [S, L, d] partials; all zero for a block without tiles), and the S
// partials are added once all are written (Group::sum_in_order). Barriers inside; ends with one where
// the block has a tile (the lone block always has), so its U is complete.
template <class K>
RJA_DEVICE void update_pass(const Modality<K>* mods, const Joint<K>& J, Ptr<const float> P, Ptr<const float> Q,
                            Ptr<float> U, const Tiles<K>& t, const Dims& s, const Group& g) {
  const int L = s.L, d = s.d(), E = s.E, tiles = (d + E - 1) / E;
  RJA_BLOCK_LOOP(i, L * d) U[i] = 0.f;
  for (int tile = g.part; tile < tiles; tile += g.parts) {
    const int col0 = tile * E, cols = tile_size(d, col0, E);
    __syncthreads();  // P, Q and U are complete; the previous tile's readers of J are done
    stage_joint(J, t, s, col0, cols);
    for (int mi = 0; mi < 2; ++mi) {
      const Modality<K>& m = mods[mi];
      attention_tile(m, P, Q, t, s, cols);
      if (t.mma) {
        RJA_BLOCK_LOOP(i, t.Lp * E) {  // H in 16 bits, 0 where G's padding is
          const float g = t.G[(i / E) * t.ldG + i % E];
          t.H16[(i / E) * t.ld16 + i % E] = from_float<K>(relu(s.h_tanh ? tanh_of<K>(g) : g));
        }
      } else {
        RJA_BLOCK_LOOP(i, L * cols) {  // H, in place of G
          const int l = i / cols, e = i % cols;
          const float g = t.G[l * t.ldG + e];
          t.G[l * t.ldG + e] = relu(s.h_tanh ? tanh_of<K>(g) : g);
        }
      }
      __syncthreads();
      add_update(m, t, s, U, col0, cols);
      __syncthreads();  // H's readers are done before the next G tile
    }
  }
}

template <class K>
struct ForwardArgs {
  Ptr<const K> xa, xv;        // [B, L, da], [B, L, dv]
  Ptr<const K> w[6];          // w_ja, w_jv, w_ca, w_cv, w_ha, w_hv, each [Tw, ...]
  Ptr<K> xa_iters, xv_iters;  // [T, B, L, da|dv]: the input features of every iteration
  Ptr<K> xa_out, xv_out;      // [B, L, da|dv]
  Ptr<float> work;            // [B, Work::floats]
  Ptr<float> partials;        // split > 1: [B, S, L, d], each block's partial sum of U (host.h)
  Ptr<unsigned> counters;     // split > 1: [B], zero: the samples' barrier counters (Group)
  Dims s;
};

// Element `at` of the sum of a sample's S partial sums [S, L * d], added in the order 0 .. S - 1
// whichever block reads it: the same bits for a given S, whatever the schedule.
// Element i of U[:, off : off + dm] (alone: U itself, [L, d]; else the sum of the partials [S, L, d]).
RJA_DEVICE float reduced_update(Ptr<const float> U, int i, int dm, int off, const Dims& s, const Group& g,
                                bool alone) {
  const int at = i / dm * s.d() + off + i % dm;
  return alone ? U[at] : g.sum_in_order(U, at, std::int64_t(s.L) * s.d());
}

// With s.split = S > 1 the S blocks b*S .. b*S + S - 1 share sample b (host.h launches them
// cooperatively, all resident): each computes a share of P and Q, the column tiles g.part,
// g.part + S, ... of U summed into its own partial, and a share of the outputs from the sum of the
// S partials, with barriers across the S blocks (Group) between these phases. Deterministic for a
// given S; S = 1 (no partials, an ordinary launch) sums all tiles in order into U.
template <class K>
__global__ void forward_kernel(ForwardArgs<K> a) {
  RJA_DYNAMIC_SHARED(float, smem);
  const Dims s = a.s;
  const Tiles<K> t(smem, s, false);
  const int L = s.L, d = s.d(), S = s.split;
  const std::int64_t b = blockIdx.x / S, B = s.B, na = std::int64_t(L) * s.da, nv = std::int64_t(L) * s.dv;
  const bool alone = S == 1;
  Group g{int(blockIdx.x % S), S, alone ? Ptr<unsigned>() : slice(a.counters, b, 1, "counters[b]")};
  const Work work(a.work, b, s);
  const std::int64_t ld = std::int64_t(L) * d;
  const Ptr<float> U = alone ? work.third : slice(a.partials, b * S * ld, S * ld, "partials[b]");
  const Ptr<float> U_mine = alone ? U : slice(U, g.part * ld, ld, "partials[b][part]");
  RJA_RANGE_LOOP(i, g.first(int(na)), g.last(int(na))) a.xa_iters[b * na + i] = a.xa[b * na + i];
  RJA_RANGE_LOOP(i, g.first(int(nv)), g.last(int(nv))) a.xv_iters[b * nv + i] = a.xv[b * nv + i];
  g.barrier();
  for (int it = 0; it < s.T; ++it) {
    const int set = s.weight_set(it);
    const Ptr<const K> xa = slice(a.xa_iters, (it * B + b) * na, na, "xa_iters[i][b]");
    const Ptr<const K> xv = slice(a.xv_iters, (it * B + b) * nv, nv, "xv_iters[i][b]");
    const bool last = it + 1 == s.T;
    const Ptr<K> outs[2] = {
        last ? slice(a.xa_out, b * na, na, "xa_out[b]") : slice(a.xa_iters, ((it + 1) * B + b) * na, na, "xa_iters[i+1][b]"),
        last ? slice(a.xv_out, b * nv, nv, "xv_out[b]") : slice(a.xv_iters, ((it + 1) * B + b) * nv, nv, "xv_iters[i+1][b]")};
    const Joint<K> J{xa, xv, s.da, s.dv};
    const Modality<K> mods[2] = {modality(xa, 0, a.w, set, s), modality(xv, 1, a.w, set, s)};
    for (int mi = 0; mi < 2; ++mi) group_projections(mods[mi], work.P, work.Q, s, g);
    g.barrier();  // P and Q are complete
    update_pass(mods, J, work.P, work.Q, U_mine, t, s, g);
    g.barrier();  // every block's partial U is written
    for (int mi = 0; mi < 2; ++mi) {  // out = x + U (x + relu(U)), coalesced along the features
      const Modality<K>& m = mods[mi];
      RJA_RANGE_LOOP(i, g.first(L * m.dm), g.last(L * m.dm)) {
        const float u = reduced_update(U, i, m.dm, m.off, s, g, alone);
        outs[mi][i] = from_float<K>(to_float(m.x[i]) + (s.out_relu ? relu(u) : u));
      }
    }
    g.barrier();  // iteration it + 1 reads what this one wrote; P, Q and U are free again
  }
}

template <class K>
struct BackwardArgs {
  Ptr<const K> grad_xa, grad_xv;    // [B, L, da|dv]: gradients of the outputs
  Ptr<const K> xa_iters, xv_iters;  // [T, B, L, da|dv]
  Ptr<const K> w[6];                // [Tw, ...]
  Ptr<K> grad_xa_in, grad_xv_in;    // [B, L, da|dv]
  // Per-sample factors of the weight gradients, fp32, for every iteration:
  Ptr<float> H;   // [2, T, B, L, d]  H of both modalities
  Ptr<float> gU;  // [T, B, L, d]     gradient of U (columns [off, off + dm) are modality m's)
  Ptr<float> gQ;  // [T, B, L, d]     gradient of Q
  Ptr<float> gP;  // [T, B, d, L]     gradient of P (rows [off, off + dm))
  Ptr<float> work;  // [B, Work::floats]: P, Q and the running gradient g
  Ptr<float> partials;     // split > 1: [B, 2, S, L * d], each block's partial sums: U, then gQ; gP
  Ptr<unsigned> counters;  // split > 1: [B], zero: the samples' barrier counters (Group)
  Dims s;
};

// One column tile [col0, col0 + cols) of modality m: the H tile and every gradient it feeds; the
// tile's terms of gQ and gP are added to them. Each product is either a scalar loop or, on the
// tensor-core path, an mma into its shared tile (gG, gJ) or into S, Sq, read by the same epilogue.
// Barriers inside; ends with one.
template <class K>
RJA_DEVICE void backward_column_tile(const Modality<K>& m, Ptr<const float> P, Ptr<const float> Q, Ptr<float> H,
                                     Ptr<const float> gU, Ptr<float> gQ, Ptr<float> gP, const Tiles<K>& t,
                                     const Dims& s, int col0, int cols) {
  const int L = s.L, R = s.R, E = s.E, d = s.d(), dm = m.dm, off = m.off;
  attention_tile<K, true>(m, P, Q, t, s, cols);
  RJA_BLOCK_LOOP(i, L * cols) {  // H, and dH/dG in place of G (same (l, e) ownership)
    const int l = i / cols, e = i % cols;
    const float g = t.G[l * t.ldG + e];
    const float act = s.h_tanh ? tanh_of<K>(g) : g;
    H[l * d + col0 + e] = relu(act);
    // Masks multiply, so a NaN stays NaN as in the reference.
    t.G[l * t.ldG + e] = (act > 0.f ? 1.f : 0.f) * (s.h_tanh ? tanh_derivative(g) : 1.f);
    if (!t.mma_f32) t.gG[l * t.ldG + e] = 0.f;  // rows_times_transposed adds to it
  }
  // gG = gU_m w_h[tile]^T, then times dH/dG (0 on G's padding)
  const auto gU_m = [&](int l, int c) { return gU[l * d + off + c]; };
  const Ptr<const K> wh = slice(m.wh, std::int64_t(col0) * dm, std::int64_t(cols) * dm, "w_h[tile]");
  if (t.mma_f32) {
    if constexpr (tf32_tensor_cores()) {
      rows_times_transposed_f32<false>(L, t.Lp, cols, E, dm, gU_m, wh, dm, t.S, t.ldQ, t.W, t.ldQ, R, t.gG, t.ldG);
    }
  } else {
    rows_times_transposed(L, cols, dm, gU_m, wh, dm, t.W, R, E, [&](int l, int e, float v) { t.gG[l * t.ldG + e] += v; });
  }
  RJA_BLOCK_LOOP(i, L * cols) {
    const int l = i / cols, e = i % cols;
    t.gG[l * t.ldG + e] *= t.G[l * t.ldG + e];
  }
  for (int row0 = 0; row0 < dm; row0 += R) {
    const int rows = tile_size(dm, row0, R), base = off + row0;
    if (dm > R) {  // several row tiles: recompute this one's C and tanh' (one row tile is still staged)
      __syncthreads();  // the previous row tile's readers of P, Q, C, gS, S and Sq are done
      stage_rows(m, P, Q, t, s, row0, rows);
      __syncthreads();
      correlation<K, true>(t, s, rows, cols);
    }
    __syncthreads();  // C, tanh' (in gS) and gG are complete
    if constexpr (tf32_tensor_cores()) {
      if (t.mma_f32) {  // S = Q^T gG, Sq = gG C^T
        namespace wmma = nvcuda::wmma;
        mma_tiles_f32<wmma::col_major, wmma::row_major>(R, E, t.Lp, t.Qt, t.ldQ, t.gG, t.ldG, t.S, t.ldE, false);
        mma_tiles_f32<wmma::row_major, wmma::col_major>(t.Lp, R, E, t.gG, t.ldG, t.C, t.ldE, t.Sq, t.ldQ, false);
        __syncthreads();
      }
    }
    RJA_BLOCK_LOOP(i, rows * cols) {  // gS = (Q^T gG) tanh' / sqrt(d)
      const int r = i / cols, e = i % cols;
      float acc = 0.f;
      if (t.mma_f32) {
        acc = t.S[r * t.ldE + e];
      } else {
        for (int l = 0; l < L; ++l) acc += t.Qt[l * t.ldQ + r] * t.gG[l * t.ldG + e];
      }
      t.gS[r * t.ldE + e] *= acc * s.scale;
    }
    RJA_BLOCK_LOOP(i, L * rows) {  // gQ += gG C^T
      const int l = i / rows, r = i % rows;
      float acc = 0.f;
      if (t.mma_f32) {
        acc = t.Sq[l * t.ldQ + r];
      } else {
        for (int e = 0; e < cols; ++e) acc += t.gG[l * t.ldG + e] * t.C[r * t.ldE + e];
      }
      gQ[l * d + base + r] += acc;
    }
    __syncthreads();
    if constexpr (tf32_tensor_cores()) {
      if (t.mma_f32) {  // S = gS J^T, gJ += P^T gS
        namespace wmma = nvcuda::wmma;
        mma_tiles_f32<wmma::row_major, wmma::col_major, false, exact_in_tf32<K>()>(R, t.Lp, E, t.gS, t.ldE, t.Jt, t.ldE,
                                                                                   t.S, t.ldP, false);
        mma_tiles_f32<wmma::col_major, wmma::row_major>(t.Lp, E, R, t.Pt, t.ldP, t.gS, t.ldE, t.gJ, t.ldG, true);
        __syncthreads();
      }
    }
    RJA_BLOCK_LOOP(i, rows * L) {  // gP += gS J^T
      const int r = i / L, l = i % L;
      float acc = 0.f;
      if (t.mma_f32) {
        acc = t.S[r * t.ldP + l];
      } else {
        for (int e = 0; e < cols; ++e) acc += t.gS[r * t.ldE + e] * t.Jt[l * t.ldE + e];
      }
      gP[(base + r) * L + l] += acc;
    }
    if (!t.mma_f32) {
      RJA_BLOCK_LOOP(i, L * cols) {  // gJ += P^T gS
        const int l = i / cols, e = i % cols;
        float acc = 0.f;
        for (int r = 0; r < rows; ++r) acc += t.Pt[r * t.ldP + l] * t.gS[r * t.ldE + e];
        t.gJ[l * t.ldG + e] += acc;
      }
    }
  }
  __syncthreads();
}

// With s.split = S > 1 the S blocks b*S .. b*S + S - 1 share sample b as in the forward: shares
// of P, Q and of the element-wise passes, the column tiles g.part, g.part + S, ... (summed in that
// order into the block's partial sums of U, gQ and gP; after a barrier the S partials are added in
// the order 0 .. S - 1), and shares of the columns of dx += dQ w_c^T + w_j dP^T. U's partials are
// read (into gU) before the tile loop writes gQ's, so these share one slice: 2 S L d floats a
// sample. Deterministic for a given S; S = 1 accumulates straight into gQ and gP.
template <class K>
__global__ void backward_kernel(BackwardArgs<K> a) {
  RJA_DYNAMIC_SHARED(float, smem);
  const Dims s = a.s;
  const Tiles<K> t(smem, s, true);
  const int L = s.L, d = s.d(), E = s.E, S = s.split, tiles = (d + E - 1) / E;
  const std::int64_t b = blockIdx.x / S, B = s.B, na = std::int64_t(L) * s.da, nv = std::int64_t(L) * s.dv;
  const std::int64_t ld = std::int64_t(L) * d, nparts = S * ld;
  const bool alone = S == 1;
  Group group{int(blockIdx.x % S), S, alone ? Ptr<unsigned>() : slice(a.counters, b, 1, "counters[b]")};
  const int first = group.first(int(ld)), last = group.last(int(ld));  // this block's share of [L, d]
  const Ptr<float> parts = alone ? Ptr<float>() : slice(a.partials, b * 2 * nparts, 2 * nparts, "partials[b]");
  const Ptr<float> U_parts = alone ? parts : slice(parts, 0, nparts, "partials[b].U|gQ");  // U, then gQ
  const Ptr<float> gQ_parts = U_parts;
  const Ptr<float> gP_parts = alone ? parts : slice(parts, nparts, nparts, "partials[b].gP");
  const auto mine = [&](Ptr<float> all, const char* name) { return slice(all, group.part * ld, ld, name); };
  const Work work(a.work, b, s);
  const Ptr<float> g = work.third;  // gradient w.r.t. the current iteration's output, then input
  RJA_RANGE_LOOP(i, first, last) {
    const int l = i / d, c = i % d;
    g[i] = c < s.da ? to_float(a.grad_xa[b * na + l * s.da + c]) : to_float(a.grad_xv[b * nv + l * s.dv + c - s.da]);
  }
  for (int it = s.T - 1; it >= 0; --it) {
    const int set = s.weight_set(it);
    const std::int64_t slot = it * B + b;
    const Ptr<const K> xa = slice(a.xa_iters, slot * na, na, "xa_iters[i][b]");
    const Ptr<const K> xv = slice(a.xv_iters, slot * nv, nv, "xv_iters[i][b]");
    const Joint<K> J{xa, xv, s.da, s.dv};
    const Modality<K> mods[2] = {modality(xa, 0, a.w, set, s), modality(xv, 1, a.w, set, s)};
    const Ptr<float> H[2] = {slice(a.H, slot * ld, ld, "H[a][i][b]"), slice(a.H, (s.T * B + slot) * ld, ld, "H[v][i][b]")};
    const Ptr<float> gU = slice(a.gU, slot * ld, ld, "gU[i][b]");
    const Ptr<float> gQ = slice(a.gQ, slot * ld, ld, "gQ[i][b]");
    const Ptr<float> gP = slice(a.gP, slot * ld, ld, "gP[i][b]");
    group.barrier();  // g is complete; the previous iteration's readers of P and Q are done
    for (int mi = 0; mi < 2; ++mi) group_projections(mods[mi], work.P, work.Q, s, group);
    if (alone) {
      RJA_BLOCK_LOOP(i, int(ld)) {
        gQ[i] = 0.f;
        gP[i] = 0.f;
      }
    }
    if (s.out_relu) {  // gU = g relu'(U): recompute this iteration's U first
      group.barrier();  // P and Q are complete
      update_pass(mods, J, work.P, work.Q, alone ? gU : mine(U_parts, "partials[b].U[part]"), t, s, group);
      group.barrier();  // every block's partial U is written
      RJA_RANGE_LOOP(i, first, last) {
        const float u = alone ? gU[i] : group.sum_in_order(U_parts, i, ld);
        gU[i] = g[i] * (u > 0.f ? 1.f : 0.f);
      }
    } else {
      RJA_RANGE_LOOP(i, first, last) gU[i] = g[i];
    }
    group.barrier();  // P, Q and gU are complete; U's partials are read
    const Ptr<float> gQ_out = alone ? gQ : mine(gQ_parts, "partials[b].gQ[part]");
    const Ptr<float> gP_out = alone ? gP : mine(gP_parts, "partials[b].gP[part]");
    if (!alone) {
      RJA_BLOCK_LOOP(i, int(ld)) {
        gQ_out[i] = 0.f;
        gP_out[i] = 0.f;
      }
    }
    for (int tile = group.part; tile < tiles; tile += S) {
      const int col0 = tile * E, cols = tile_size(d, col0, E);
      __syncthreads();  // P, Q, gU, gQ, gP are complete; the previous tile's readers of J are done
      stage_joint(J, t, s, col0, cols);
      const int Ez = t.mma_f32 ? E : cols;  // the tensor-core path accumulates all of [Lp, E]
      RJA_BLOCK_LOOP(i, t.Lp * Ez) t.gJ[(i / Ez) * t.ldG + i % Ez] = 0.f;
      for (int mi = 0; mi < 2; ++mi) {
        backward_column_tile(mods[mi], work.P, work.Q, H[mi], gU, gQ_out, gP_out, t, s, col0, cols);
      }
      RJA_BLOCK_LOOP(i, L * cols) {  // dx += dJ
        const int l = i / cols, e = i % cols;
        g[l * d + col0 + e] += t.gJ[l * t.ldG + e];
      }
    }
    if (!alone) {
      group.barrier();  // every block's partial gQ and gP are written
      RJA_RANGE_LOOP(i, first, last) {
        gQ[i] = group.sum_in_order(gQ_parts, i, ld);
        gP[i] = group.sum_in_order(gP_parts, i, ld);
      }
    }
    group.barrier();  // gQ and gP are complete
    for (int mi = 0; mi < 2; ++mi) {  // dx += dQ w_c^T + w_j dP^T, on this block's share of the columns
      const Modality<K>& m = mods[mi];
      const int dm = m.dm, off = m.off, c0 = group.first(dm), n = group.last(dm) - c0;
      const auto gQ_m = [&](int l, int r) { return gQ[l * d + off + r]; };
      const auto wj = [&](int l, int lp) { return to_float(m.wj[l * L + lp]); };
      const Ptr<const K> wc = m.wc + std::int64_t(c0) * dm;
      const Ptr<const float> gP_m = slice(gP, std::int64_t(off) * L, std::int64_t(dm) * L, "gP[m]") + c0 * L;
      if (t.mma_f32) {
        if constexpr (tf32_tensor_cores()) {  // in chunks of E columns, each product through gG (free here)
          for (int c1 = 0; c1 < n; c1 += E) {
            const int nc = tile_size(n, c1, E);
            const auto add_product_to_g = [&] {
              RJA_BLOCK_LOOP(i, L * nc) {
                const int l = i / nc, c = i % nc;
                g[l * d + off + c0 + c1 + c] += t.gG[l * t.ldG + c];
              }
            };
            rows_times_transposed_f32<false>(L, t.Lp, nc, E, dm, gQ_m, wc + c1 * dm, dm, t.S, t.ldQ, t.W, t.ldQ, s.R,
                                             t.gG, t.ldG);
            add_product_to_g();
            rows_times_transposed_f32<exact_in_tf32<K>()>(L, t.Lp, nc, E, L, wj, gP_m + c1 * L, L, t.S, t.ldQ, t.W,
                                                          t.ldQ, s.R, t.gG, t.ldG);  // w_j holds K values
            add_product_to_g();
          }
        }
      } else {
        const auto add_to_g = [&](int l, int c, float v) { g[l * d + off + c0 + c] += v; };
        rows_times_transposed(L, n, dm, gQ_m, wc, dm, t.W, s.R, E, add_to_g);
        rows_times_transposed(L, n, L, wj, gP_m, L, t.W, s.R, E, add_to_g);
      }
    }
  }
  group.barrier();  // g is complete
  RJA_RANGE_LOOP(i, first, last) {
    const int l = i / d, c = i % d;
    if (c < s.da) {
      a.grad_xa_in[b * na + l * s.da + c] = from_float<K>(g[i]);
    } else {
      a.grad_xv_in[b * nv + l * s.dv + c - s.da] = from_float<K>(g[i]);
    }
  }
}

}  // namespace paper
}  // namespace rja
