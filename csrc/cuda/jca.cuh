// The fused kernels of the JCA form, `joint_cross_attention` (docs/SPEC.md section 2), compiled by
// nvcc for the GPU and by the host compiler against csrc/emu/emu.h for the CPU tests.
//
// The thread blocks of a sample own it for all T iterations, which run in one launch: iteration i
// writes its outputs to global memory (xa_iters/xv_iters[i + 1]) and the blocks synchronise before
// iteration i + 1 reads them as its joint features J. Per modality m (rows r of x_m^T, dm of them)
// a block takes R rows at a time:
//   P = x^T w_j                                  [R, L]   in shared memory
//   for each tile of E joint features:           (J and w_c tiles staged in shared memory)
//     C = tanh(P J_tile / sqrt(d))               [R, E]   in shared memory, never global
//     Z += C w_c_tile^T                          [R, k]
//   Z += x^T w_u^T;  out = x + (relu(Z) w_h^T)^T
// The backward pass runs the iterations in reverse in one launch and recomputes the C tiles.
//
// Tensor cores. For float16 and bfloat16 (with tiles of multiples of 16 on an sm_80+ device:
// Dims::products, host.h) the large contractions run on WMMA with float32 accumulators. The forward's
// two, C = tanh(P J_tile / sqrt(d)) (R x E over L) and Z += C w_c_tile^T (R x k over E: at L = 16,
// k = 32 these are all but a few percent of the work), take 16-bit operands (mma_tiles,
// common.cuh), Z accumulating in place: P, J, C and w_c are rounded to the element type, as the
// eager reference rounds its intermediates. The backward's, the recomputed C and Z and the gradient
// products gZ w_c, grad w_c += gZ^T C, gJ += P^T gS and gS J^T, take float operands at about
// float32 accuracy by 3xTF32 (mma_tiles_f32; J and w_c hold 16-bit values, so theirs need two
// products, not three): with 16-bit operands the relu mask of a Z from them would enter the
// gradients (as in paper.cuh), and 16-bit gradient tiles break the accuracy rule. Unmeasured on a
// GPU. The small products (P, x^T w_u^T, the output's relu(Z) w_h^T and the backward's other terms:
// O(L) or O(k) per element of x against the big ones' O(d)) stay float32 on CUDA cores. float32
// stays on CUDA cores unless the user allowed TF32 (host.h): then it takes the same 3xTF32 path
// forward and backward, three products each (its forward's C and Z are the backward's recompute).
//
// Forward and backward give each sample S blocks (Dims::split, chosen by host.h to fill the GPU:
// S = 1 is an ordinary launch, S > 1 a cooperative one with a barrier across the S blocks through
// a counter in global memory, Group in common.cuh). They share the row tiles of both modalities,
// numbered audio's first and dealt in turn, tile n to block n % S (for_own_row_tiles). A row
// tile's outputs need no other row tile's, so the forward has one barrier per iteration (the next
// reads all rows as J) and gives S = 1's bits for every S. In the backward a row's state (its
// column of the gradient g, its P, gZ and gP) stays with the block that owns it, which needs no
// barrier; the sums over rows go to per-block partials instead: dJ [L, d] (the J gradient, the
// terms of all rows; one buffer per iteration parity, so a block may write the next iteration's
// while slower ones still read these), added in the order 0 .. S - 1 by each column's owner after
// the iteration's one barrier, and the weight gradients (one partial per block, summed over the
// blocks and the batch by host.h). No float atomics: the same S gives the same bits run to run;
// another S differs from S = 1 by the order of those sums only.
#pragma once

#include "common.cuh"

namespace rja {
namespace jca {

// Shared memory of one block, in floats; every buffer starts 32-byte aligned (WMMA tiles). Strides
// k + 1 and E + 1 keep the column walks of the Z and w_c tiles free of bank conflicts. The
// tensor-core paths (Dims::padded) pad L to Lp and k to kp, multiples of 16, and add a float tile S
// for products bound elsewhere. The 16-bit one (16-bit forwards) has the 16-bit mma operands in
// place of the float P, J, w_c and C tiles; the 3xTF32 one (the backwards, and float32 forwards
// where TF32 is allowed) keeps those, padded. Their row strides are 16 bytes more than a multiple
// of 16 elements, so the rows of a WMMA tile start in different banks.
struct SmemLayout : SmemArena {
  int Lp, kp, ldZ, ldP, ldE, ldW, ldP16, ld16, ldS;  // padded L and k, and row strides
  Span wj, wu, wh, Z;                                // float
  Span P, Jt, Wct, C;                                // float, but on the 16-bit path
  Span G, gZ, gS, gWc, gJ;                           // float, backward only
  Span P16, J16, Wc16, C16;                          // the 16-bit path only
  Span S;                                            // the tensor-core paths only
  RJA_HOST_DEVICE SmemLayout(const Dims& s, bool backward) {
    const int L = s.L, k = s.k, R = s.R, E = s.E;
    const bool mma16 = s.products == Products::wmma_16_bit, padded = s.padded();
    Lp = padded ? (L + 15) / 16 * 16 : L;
    kp = padded ? (k + 15) / 16 * 16 : k;
    ldZ = padded ? kp + 4 : k + 1;  // Z and gZ
    ldP = padded ? Lp + 4 : L;
    ldE = padded ? E + 4 : E;  // Jt, C, gS, gWc, gJ
    ldW = padded ? E + 4 : E + 1;
    ldP16 = Lp + 8;
    ld16 = E + 8;
    ldS = (E > Lp ? E : Lp) + 4;
    wj = take(L * L, 4);
    wu = take(k * L, 4);
    wh = take(L * k, 4);
    Z = take(R * ldZ, 4);
    if (!mma16) {
      P = take(R * ldP, 4);
      Jt = take(Lp * ldE, 4);
      Wct = take(kp * ldW, 4);
      C = take(R * ldE, 4);
    }
    if (backward) {
      G = take(L * R, 4);
      gZ = take(R * ldZ, 4);
      gS = take(R * ldE, 4);
      gWc = take(kp * ldE, 4);
      gJ = take(Lp * ldE, 4);
    }
    if (mma16) {
      P16 = take(R * ldP16, 2);
      J16 = take(Lp * ld16, 2);
      Wc16 = take(kp * ld16, 2);
      C16 = take(R * ld16, 2);
    }
    if (padded) S = take(R * ldS, 4);
  }
};

template <class K>
struct Tiles {
  Ptr<float> wj, wu, wh;  // this modality's w_j [L, L], w_u [k, L], w_h [L, k]
  Ptr<float> Z;           // [R, ldZ] pre-activation of the attention map
  // P, Jt, Wct, C: all but the 16-bit path.
  Ptr<float> P;           // [R, ldP]
  Ptr<float> Jt;          // [Lp, ldE] joint-feature tile
  Ptr<float> Wct;         // [kp, ldW] w_c tile, rows c: the col-major B operand of C w_c^T
  Ptr<float> C;           // [R, ldE]  tanh tile
  Ptr<float> G;           // [L, R]    backward: incoming gradient of the rows
  Ptr<float> gZ;          // [R, ldZ]  backward: gradient of Z
  Ptr<float> gS;          // [R, ldE]  backward: gradient of the pre-tanh tile
  Ptr<float> gWc;         // [kp, ldE] backward: w_c gradient of the column tile
  Ptr<float> gJ;          // [Lp, ldE] backward: J gradient of the column tile
  // The tensor-core paths, whose mma operands are zero past the ragged or padded edges: with 16-bit
  // operands (16-bit forwards), or with float ones by 3xTF32 (mma_tiles_f32: the backwards, and
  // float32 forwards where TF32 is allowed).
  bool mma;      // the 16-bit one is taken
  bool mma_f32;  // the 3xTF32 one is taken
  int Lp, kp, ldZ, ldP, ldE, ldW, ldP16, ld16, ldS;
  Ptr<K> P16;    // [R, ldP16]  P rows
  Ptr<K> J16;    // [Lp, ld16]  J tile
  Ptr<K> Wc16;   // [kp, ld16]  w_c tile, rows c: the col-major B operand of C w_c^T
  Ptr<K> C16;    // [R, ld16]   tanh tile
  Ptr<float> S;  // [R, ldS]    P J before its tanh; in the backward also gZ w_c and gS J^T

  // The extent of a tile dimension of n elements (padded to `padded`) that its staging and zeroing
  // loops cover: the padding too on a tensor-core path.
  RJA_DEVICE int extent(int n, int padded) const { return mma || mma_f32 ? padded : n; }

  RJA_DEVICE Tiles(Ptr<float> smem, const Dims& dims, bool backward) {
    const Dims s = with_products_taken<K>(dims, backward);
    const SmemLayout at(s, backward);
    const auto f32 = [&](SmemLayout::Span span, const char* name) { return smem_buffer<float>(smem, span, name); };
    const auto k16 = [&](SmemLayout::Span span, const char* name) { return smem_buffer<K>(smem, span, name); };
    wj = f32(at.wj, "smem.wj");
    wu = f32(at.wu, "smem.wu");
    wh = f32(at.wh, "smem.wh");
    Z = f32(at.Z, "smem.Z");
    mma = s.products == Products::wmma_16_bit;
    mma_f32 = s.products == Products::tf32x3;
    if (!mma) {
      P = f32(at.P, "smem.P");
      Jt = f32(at.Jt, "smem.Jt");
      Wct = f32(at.Wct, "smem.Wct");
      C = f32(at.C, "smem.C");
    }
    if (backward) {
      G = f32(at.G, "smem.G");
      gZ = f32(at.gZ, "smem.gZ");
      gS = f32(at.gS, "smem.gS");
      gWc = f32(at.gWc, "smem.gWc");
      gJ = f32(at.gJ, "smem.gJ");
    }
    Lp = at.Lp;
    kp = at.kp;
    ldZ = at.ldZ;
    ldP = at.ldP;
    ldE = at.ldE;
    ldW = at.ldW;
    ldP16 = at.ldP16;
    ld16 = at.ld16;
    ldS = at.ldS;
    if (mma) {
      P16 = k16(at.P16, "smem.P16");
      J16 = k16(at.J16, "smem.J16");
      Wc16 = k16(at.Wc16, "smem.Wc16");
      C16 = k16(at.C16, "smem.C16");
    }
    if (mma || mma_f32) S = f32(at.S, "smem.S");
  }
};

// Row tiles of x^T over both modalities: the units of work the S blocks of a sample share.
RJA_HOST_DEVICE int row_tiles(const Dims& s) { return (s.da + s.R - 1) / s.R + (s.dv + s.R - 1) / s.R; }

// f(row0, rows) for each row tile [row0, row0 + rows) of the modality with dm rows at offset off
// (audio 0, visual da) that block g.part of its sample owns, in increasing order: all of them for
// S = 1. The row tiles are numbered across both modalities, audio's first, and tile n belongs to
// block n % S. Barriers in f are block-uniform: the block's tiles are.
template <class F>
RJA_DEVICE void for_own_row_tiles(int dm, int off, const Group& g, const Dims& s, const F& f) {
  const int before = (off + s.R - 1) / s.R;  // the row tiles of the modalities before this one
  for (int row0 = (g.part - before % g.parts + g.parts) % g.parts * s.R; row0 < dm; row0 += g.parts * s.R) {
    f(row0, tile_size(dm, row0, s.R));
  }
}

// One modality at one iteration: its features x [L, dm], which are columns [off, off + dm) of J
// (and rows [off, off + dm) of the backward workspaces), and this iteration's weights.
template <class K>
struct Modality {
  Ptr<const K> x;
  int dm, off;
  Ptr<const K> wj, wu, wc, wh;  // [L, L], [k, L], [k, d], [L, k]
};

template <class K>
RJA_DEVICE Modality<K> modality(Ptr<const K> x, int dm, int off, const Ptr<const K>* w, int first, int wi,
                                const Dims& s) {
  const int L = s.L, k = s.k;
  // w = {w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv}; first = 0 for audio, 1 for visual.
  return {x, dm, off,
          weight_slice(w[first], wi, L * L, "w_j[i]"),
          weight_slice(w[2 + first], wi, std::int64_t(k) * L, "w_u[i]"),
          weight_slice(w[4 + first], wi, std::int64_t(k) * s.d(), "w_c[i]"),
          weight_slice(w[6 + first], wi, std::int64_t(L) * k, "w_h[i]")};
}

template <class K>
RJA_DEVICE void load_small_weights(const Modality<K>& m, const Tiles<K>& t, const Dims& s) {
  RJA_BLOCK_LOOP(i, s.L * s.L) t.wj[i] = to_float(m.wj[i]);
  RJA_BLOCK_LOOP(i, s.k * s.L) t.wu[i] = to_float(m.wu[i]);
  RJA_BLOCK_LOOP(i, s.L * s.k) t.wh[i] = to_float(m.wh[i]);
}

// The float w_c tile of the columns [col0, col0 + cols), zero on to [kp, E) on the 3xTF32 path.
template <class K>
RJA_DEVICE void load_wc_tile(const Modality<K>& m, const Tiles<K>& t, const Dims& s, int col0, int cols) {
  const int rows = t.extent(s.k, t.kp), n = t.extent(cols, s.E);
  stage_tile(m.wc + col0, s.d(), s.k, cols, t.Wct, t.ldW, rows, n);
}

// The float J tile of the columns [col0, col0 + cols), zero on to [Lp, E) on the 3xTF32 path.
template <class K>
RJA_DEVICE void load_joint_tile(const Joint<K>& J, const Tiles<K>& t, const Dims& s, int col0, int cols) {
  stage_joint_tile(J, t.Jt, t.ldE, s.L, col0, cols, t.extent(s.L, t.Lp), t.extent(cols, s.E));
}

// Stages the J and w_c tiles of the columns [col0, col0 + cols): float, or in 16 bits on the
// 16-bit path; on the tensor-core paths zero past the columns and L (J) or k (w_c),
// so their products add nothing there.
template <class K>
RJA_DEVICE void stage_column_tile(const Modality<K>& m, const Joint<K>& J, const Tiles<K>& t, const Dims& s, int col0,
                                  int cols) {
  const int L = s.L, k = s.k, E = s.E, d = s.d();
  if (t.mma) {
    stage_joint_tile(J, t.J16, t.ld16, L, col0, cols, t.Lp, E);
    stage_tile(m.wc + col0, d, k, cols, t.Wc16, t.ld16, t.kp, E);
  } else {
    load_joint_tile(J, t, s, col0, cols);
    load_wc_tile(m, t, s, col0, cols);
  }
}

// C = tanh(P J_tile * scale) for the staged P rows and J tile; in the backward also tanh' into gS.
// On the tensor-core paths all [R, E] of C16 (16-bit) or C and gS (3xTF32), with a barrier inside.
template <class K, bool kDerivative = false>
RJA_DEVICE void tanh_tile(const Tiles<K>& t, const Dims& s, int rows, int cols) {
  if constexpr (tensor_cores<K>()) {
    if (t.mma) {  // a forward's: no derivative
      correlation_tile_mma<K>(s.R, s.E, t.Lp, t.P16, t.ldP16, t.J16, t.ld16, t.S, t.ldS, t.C16, t.ld16, s.scale);
      return;
    }
  }
  if constexpr (tf32_tensor_cores()) {
    if (t.mma_f32) {
      correlation_tile_f32<K, kDerivative>(s.R, s.E, t.Lp, t.P, t.ldP, t.Jt, t.ldE, t.S, t.ldS, t.C, t.ldE, rows,
                                           cols, s.scale, t.gS);
      return;
    }
  }
  correlation_tile<K, kDerivative>(t.P, t.Jt, t.ldE, t.C, t.ldE, rows, cols, s.L, s.scale, t.gS);
}

// Z of rows [row0, row0 + rows) of modality m, streaming over the joint features in tiles of E;
// leaves P (P16 on the 16-bit path) and Z in shared memory. Expects the small weights staged and
// synchronised. On the tensor-core paths P J and Z += C w_c^T run on WMMA over all [R, kp] of Z,
// zero past the rows and k: mma_tiles with 16-bit operands in a 16-bit forward, else mma_tiles_f32
// (the backward's relu mask of Z must be float32's).
template <class K>
RJA_DEVICE void attention_rows(const Modality<K>& m, const Joint<K>& J, const Tiles<K>& t, const Dims& s, int row0,
                               int rows) {
  const int L = s.L, k = s.k, d = s.d(), R = s.R;
  const int prows = t.extent(rows, R), pcols = t.extent(L, t.Lp);
  RJA_BLOCK_LOOP(i, prows * pcols) {
    const int r = i / pcols, l = i % pcols;
    float acc = 0.f;
    if (r < rows && l < L) {
      for (int lp = 0; lp < L; ++lp) acc += to_float(m.x[lp * m.dm + row0 + r]) * t.wj[lp * L + l];
    }
    if (t.mma) {
      t.P16[r * t.ldP16 + l] = from_float<K>(acc);
    } else {
      t.P[r * t.ldP + l] = acc;
    }
  }
  const int zrows = t.extent(rows, R), zcols = t.extent(k, t.kp);
  RJA_BLOCK_LOOP(i, zrows * zcols) {  // the unimodal term x^T w_u^T
    const int r = i / zcols, c = i % zcols;
    float acc = 0.f;
    if (r < rows && c < k) {
      for (int l = 0; l < L; ++l) acc += to_float(m.x[l * m.dm + row0 + r]) * t.wu[c * L + l];
    }
    t.Z[r * t.ldZ + c] = acc;
  }
  for (int col0 = 0; col0 < d; col0 += s.E) {
    const int cols = d - col0 < s.E ? d - col0 : s.E;
    __syncthreads();  // P is complete; the previous tile's readers are done
    stage_column_tile(m, J, t, s, col0, cols);
    __syncthreads();
    tanh_tile<K>(t, s, rows, cols);
    __syncthreads();
    if constexpr (tensor_cores<K>()) {
      if (t.mma) {
        mma_tiles<K, nvcuda::wmma::col_major>(R, t.kp, s.E, t.C16, t.ld16, t.Wc16, t.ld16, t.Z, t.ldZ, true);
        continue;
      }
    }
    if constexpr (tf32_tensor_cores()) {
      if (t.mma_f32) {
        mma_tiles_f32<nvcuda::wmma::row_major, nvcuda::wmma::col_major, false, exact_in_tf32<K>()>(
            R, t.kp, s.E, t.C, t.ldE, t.Wct, t.ldW, t.Z, t.ldZ, true);
        continue;
      }
    }
    RJA_BLOCK_LOOP(i, rows * k) {  // same (r, c) ownership as the initialisation above
      const int r = i / k, c = i % k;
      float acc = 0.f;
      for (int e = 0; e < cols; ++e) acc += t.C[r * t.ldE + e] * t.Wct[c * t.ldW + e];
      t.Z[r * t.ldZ + c] += acc;
    }
  }
  __syncthreads();
}

template <class K>
struct ForwardArgs {
  Ptr<const K> xa, xv;  // [B, L, da], [B, L, dv]
  Ptr<const K> w[8];    // w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv, each [Tw, ...]
  Ptr<K> xa_iters, xv_iters;  // [T, B, L, da|dv]: the input features of every iteration
  Ptr<K> xa_out, xv_out;      // [B, L, da|dv]
  Ptr<unsigned> counters;     // split > 1: [B], zero: the samples' barrier counters (Group)
  Dims s;
};

// The block's row tiles of modality m at one iteration.
template <class K>
RJA_DEVICE void forward_modality(const Modality<K>& m, const Joint<K>& J, Ptr<K> out, const Tiles<K>& t, const Dims& s,
                                 const Group& g) {
  load_small_weights(m, t, s);
  __syncthreads();
  for_own_row_tiles(m.dm, m.off, g, s, [&](int row0, int rows) {
    attention_rows(m, J, t, s, row0, rows);
    RJA_BLOCK_LOOP(i, s.L * rows) {  // out = x + (relu(Z) w_h^T)^T, coalesced along the rows
      const int l = i / rows, r = i % rows;
      float acc = to_float(m.x[l * m.dm + row0 + r]);
      for (int c = 0; c < s.k; ++c) acc += t.wh[l * s.k + c] * fmaxf(t.Z[r * t.ldZ + c], 0.f);
      out[l * m.dm + row0 + r] = from_float<K>(acc);
    }
    __syncthreads();  // before the next rows (or modality) overwrite P, Z and the weights
  });
}

// With s.split = S > 1 the S blocks b*S .. b*S + S - 1 share sample b (host.h launches them
// cooperatively, all resident); S = 1 is an ordinary launch, one block per sample.
template <class K>
__global__ void forward_kernel(ForwardArgs<K> a) {
  RJA_DYNAMIC_SHARED(float, smem);
  const Dims s = a.s;
  const Tiles<K> t(smem, s, false);
  const int S = s.split;
  const std::int64_t b = blockIdx.x / S, na = std::int64_t(s.L) * s.da, nv = std::int64_t(s.L) * s.dv;
  const std::int64_t B = s.B;
  Group g{int(blockIdx.x % S), S, S == 1 ? Ptr<unsigned>() : slice(a.counters, b, 1, "counters[b]")};
  // Iteration 0 reads the input itself, so its copy into the saved features needs no barrier.
  RJA_RANGE_LOOP(i, g.first(int(na)), g.last(int(na))) a.xa_iters[b * na + i] = a.xa[b * na + i];
  RJA_RANGE_LOOP(i, g.first(int(nv)), g.last(int(nv))) a.xv_iters[b * nv + i] = a.xv[b * nv + i];
  for (int it = 0; it < s.T; ++it) {
    const int wi = s.weight_set(it);
    const Ptr<const K> xa = it == 0 ? slice(a.xa, b * na, na, "xa[b]")
                                    : slice(a.xa_iters, (it * B + b) * na, na, "xa_iters[i][b]");
    const Ptr<const K> xv = it == 0 ? slice(a.xv, b * nv, nv, "xv[b]")
                                    : slice(a.xv_iters, (it * B + b) * nv, nv, "xv_iters[i][b]");
    const bool last = it + 1 == s.T;
    const Ptr<K> out_a = last ? slice(a.xa_out, b * na, na, "xa_out[b]")
                              : slice(a.xa_iters, ((it + 1) * B + b) * na, na, "xa_iters[i+1][b]");
    const Ptr<K> out_v = last ? slice(a.xv_out, b * nv, nv, "xv_out[b]")
                              : slice(a.xv_iters, ((it + 1) * B + b) * nv, nv, "xv_iters[i+1][b]");
    const Joint<K> J{xa, xv, s.da, s.dv};
    forward_modality(modality(xa, s.da, 0, a.w, 0, wi, s), J, out_a, t, s, g);
    forward_modality(modality(xv, s.dv, s.da, a.w, 1, wi, s), J, out_v, t, s, g);
    if (!last) g.barrier();  // iteration it + 1 reads every row this one wrote, all blocks'
  }
}

// Per-sample fp32 workspace of the backward pass, in floats (BackwardState).
struct Workspace {
  RJA_HOST_DEVICE static std::int64_t floats(const Dims& s) {
    const std::int64_t L = s.L, d = s.d();
    return L * d + d * L + d * s.k + d * L;
  }
};

template <class K>
struct BackwardArgs {
  Ptr<const K> grad_xa, grad_xv;      // [B, L, da|dv]: gradients of the outputs
  Ptr<const K> xa_iters, xv_iters;    // [T, B, L, da|dv]
  Ptr<const K> w[8];                  // [Tw, ...]
  Ptr<K> grad_xa_in, grad_xv_in;      // [B, L, da|dv]
  Ptr<float> grad_w[8];               // [B * S, Tw, ...]: per-block partial weight gradients
  Ptr<float> work;                    // [B, Workspace::floats]
  Ptr<float> partials;                // split > 1: [B, 2, S, L, d], each block's dJ per iteration parity
  Ptr<unsigned> counters;             // split > 1: [B], zero: the samples' barrier counters (Group)
  Dims s;
};

// The gradient buffers of one sample, fp32, rows of x^T indexed across both modalities [0, d); a
// block reads and writes the rows (columns of g) of its own row tiles only.
struct BackwardState {
  Ptr<float> g;     // [L, d]: gradient w.r.t. the current iteration's output, updated in place
  Ptr<float> P;     // [d, L]: x^T w_j of the iteration, kept from phase A for phase B
  Ptr<float> gZ;    // [d, k]
  Ptr<float> gP;    // [d, L]
  Ptr<float> gw[8]; // this block's partial weight gradients of the current weight set
};

// Phase A, rows [row0, row0 + rows) of m: recompute Z, then the gradients that need only Z:
// gZ, w_h, w_u and the x terms grad_out + w_u^T gZ^T.
template <class K>
RJA_DEVICE void backward_rows(const Modality<K>& m, const Joint<K>& J, const BackwardState& st, int first,
                              const Tiles<K>& t, const Dims& s, int row0, int rows) {
  const int L = s.L, k = s.k, d = s.d(), R = s.R, base = m.off + row0;
  attention_rows(m, J, t, s, row0, rows);
  RJA_BLOCK_LOOP(i, L * rows) {
    const int l = i / rows, r = i % rows;
    t.G[l * R + r] = st.g[l * d + base + r];
  }
  RJA_BLOCK_LOOP(i, rows * L) {
    const int r = i / L, l = i % L;
    st.P[(base + r) * L + l] = t.P[r * t.ldP + l];
    st.gP[(base + r) * L + l] = 0.f;
  }
  __syncthreads();
  RJA_BLOCK_LOOP(i, rows * k) {  // gZ = (grad_out^T w_h) * (Z > 0)
    const int r = i / k, c = i % k;
    float acc = 0.f;
    for (int l = 0; l < L; ++l) acc += t.G[l * R + r] * t.wh[l * k + c];
    const float gz = t.Z[r * t.ldZ + c] > 0.f ? acc : 0.f;
    t.gZ[r * t.ldZ + c] = gz;
    st.gZ[(base + r) * k + c] = gz;
  }
  __syncthreads();
  RJA_BLOCK_LOOP(i, L * k) {  // grad w_h += grad_out relu(Z)
    const int l = i / k, c = i % k;
    float acc = 0.f;
    for (int r = 0; r < rows; ++r) acc += t.G[l * R + r] * fmaxf(t.Z[r * t.ldZ + c], 0.f);
    st.gw[6 + first][l * k + c] += acc;
  }
  RJA_BLOCK_LOOP(i, k * L) {  // grad w_u += gZ^T x^T
    const int c = i / L, l = i % L;
    float acc = 0.f;
    for (int r = 0; r < rows; ++r) acc += t.gZ[r * t.ldZ + c] * to_float(m.x[l * m.dm + row0 + r]);
    st.gw[2 + first][c * L + l] += acc;
  }
  RJA_BLOCK_LOOP(i, L * rows) {  // g = grad_out + w_u^T gZ^T (this thread alone reads g here)
    const int l = i / rows, r = i % rows;
    float acc = t.G[l * R + r];
    for (int c = 0; c < k; ++c) acc += t.wu[c * L + l] * t.gZ[r * t.ldZ + c];
    st.g[l * d + base + r] = acc;
  }
  __syncthreads();
}

// gS = (gZ w_c) tanh' scale for the staged gZ rows and w_c tile, tanh' staged in gS. On the
// 3xTF32 path all [R, E] (zero past the rows and columns), with a barrier inside.
template <class K>
RJA_DEVICE void pre_tanh_gradient(const Tiles<K>& t, const Dims& s, int rows, int cols) {
  if constexpr (tf32_tensor_cores()) {
    if (t.mma_f32) {
      mma_tiles_f32<nvcuda::wmma::row_major, nvcuda::wmma::row_major, false, exact_in_tf32<K>()>(
          s.R, s.E, t.kp, t.gZ, t.ldZ, t.Wct, t.ldW, t.S, t.ldS, false);
      __syncthreads();
      RJA_BLOCK_LOOP(i, s.R * s.E) {
        const int r = i / s.E, e = i % s.E;
        t.gS[r * t.ldE + e] *= t.S[r * t.ldS + e] * s.scale;
      }
      return;
    }
  }
  RJA_BLOCK_LOOP(i, rows * cols) {  // same (r, e) owner as tanh'
    const int r = i / cols, e = i % cols;
    float acc = 0.f;
    for (int c = 0; c < s.k; ++c) acc += t.gZ[r * t.ldZ + c] * t.Wct[c * t.ldW + e];
    t.gS[r * t.ldE + e] *= acc * s.scale;
  }
}

// The products of gS and C with the row tile's gZ, P and the J tile: gWc += gZ^T C, gJ += P^T gS
// (shared tiles) and gP += gS J^T (the rows [base, base + rows) of st.gP). On the backward's
// tensor-core path over all [kp, E] and [Lp, E], gS J^T through S, with a barrier inside.
template <class K>
RJA_DEVICE void column_tile_products(const BackwardState& st, const Tiles<K>& t, const Dims& s, int base, int rows,
                                     int cols) {
  const int L = s.L, k = s.k;
  if constexpr (tf32_tensor_cores()) {
    if (t.mma_f32) {
      namespace wmma = nvcuda::wmma;
      mma_tiles_f32<wmma::col_major, wmma::row_major>(t.kp, s.E, s.R, t.gZ, t.ldZ, t.C, t.ldE, t.gWc, t.ldE, true);
      mma_tiles_f32<wmma::col_major, wmma::row_major>(t.Lp, s.E, s.R, t.P, t.ldP, t.gS, t.ldE, t.gJ, t.ldE, true);
      mma_tiles_f32<wmma::row_major, wmma::col_major, false, exact_in_tf32<K>()>(s.R, t.Lp, s.E, t.gS, t.ldE, t.Jt,
                                                                                 t.ldE, t.S, t.ldS, false);
      __syncthreads();
      RJA_BLOCK_LOOP(i, rows * L) {
        const int r = i / L, l = i % L;
        st.gP[(base + r) * L + l] += t.S[r * t.ldS + l];
      }
      return;
    }
  }
  RJA_BLOCK_LOOP(i, k * cols) {
    const int c = i / cols, e = i % cols;
    float acc = 0.f;
    for (int r = 0; r < rows; ++r) acc += t.gZ[r * t.ldZ + c] * t.C[r * t.ldE + e];
    t.gWc[c * t.ldE + e] += acc;
  }
  RJA_BLOCK_LOOP(i, L * cols) {
    const int l = i / cols, e = i % cols;
    float acc = 0.f;
    for (int r = 0; r < rows; ++r) acc += t.P[r * t.ldP + l] * t.gS[r * t.ldE + e];
    t.gJ[l * t.ldE + e] += acc;
  }
  RJA_BLOCK_LOOP(i, rows * L) {
    const int r = i / L, l = i % L;
    float acc = 0.f;
    for (int e = 0; e < cols; ++e) acc += t.gS[r * t.ldE + e] * t.Jt[l * t.ldE + e];
    st.gP[(base + r) * L + l] += acc;
  }
}

// Phase B, one column tile [col0, col0 + cols) and the block's rows of m: recompute C, then
// gS = (gZ w_c) (1 - C^2) scale, grad w_c += gZ^T C, gJ += P^T gS, gP += gS J^T. On the backward's
// tensor-core path P, gZ and the tiles are zero past the rows, L, k and the columns.
template <class K>
RJA_DEVICE void backward_column_tile(const Modality<K>& m, const BackwardState& st, int first, const Tiles<K>& t,
                                     const Dims& s, int col0, int cols, const Group& g) {
  const int L = s.L, k = s.k;
  const int wrows = t.extent(k, t.kp), wcols = t.extent(cols, s.E);
  load_wc_tile(m, t, s, col0, cols);
  RJA_BLOCK_LOOP(i, wrows * wcols) t.gWc[(i / wcols) * t.ldE + i % wcols] = 0.f;
  for_own_row_tiles(m.dm, m.off, g, s, [&](int row0, int rows) {
    const int base = m.off + row0, prows = t.extent(rows, s.R), pcols = t.extent(L, t.Lp), zcols = t.extent(k, t.kp);
    RJA_BLOCK_LOOP(i, prows * pcols) {
      const int r = i / pcols, l = i % pcols;
      t.P[r * t.ldP + l] = r < rows && l < L ? st.P[(base + r) * L + l] : 0.f;
    }
    RJA_BLOCK_LOOP(i, prows * zcols) {
      const int r = i / zcols, c = i % zcols;
      t.gZ[r * t.ldZ + c] = r < rows && c < k ? st.gZ[(base + r) * k + c] : 0.f;
    }
    __syncthreads();
    tanh_tile<K, true>(t, s, rows, cols);
    __syncthreads();
    pre_tanh_gradient(t, s, rows, cols);
    __syncthreads();
    column_tile_products(st, t, s, base, rows, cols);
    __syncthreads();
  });
  RJA_BLOCK_LOOP(i, wrows * wcols) {  // same (c, e) ownership as the zeroing above
    const int c = i / wcols, e = i % wcols;
    if (c < k && e < cols) st.gw[4 + first][c * s.d() + col0 + e] += t.gWc[c * t.ldE + e];
  }
}

// Phase C for the block's rows of m: grad w_j += x gP and g += w_j gP^T, the last terms of the x
// gradient.
template <class K>
RJA_DEVICE void backward_joint_terms(const Modality<K>& m, const BackwardState& st, int first, const Tiles<K>& t,
                                     const Dims& s, const Group& g) {
  const int L = s.L, d = s.d();
  RJA_BLOCK_LOOP(i, L * L) t.wj[i] = to_float(m.wj[i]);
  __syncthreads();
  RJA_BLOCK_LOOP(i, L * L) {
    const int lp = i / L, l = i % L;
    float acc = 0.f;
    for_own_row_tiles(m.dm, m.off, g, s, [&](int row0, int rows) {
      for (int r = row0; r < row0 + rows; ++r) acc += to_float(m.x[lp * m.dm + r]) * st.gP[(m.off + r) * L + l];
    });
    st.gw[first][lp * L + l] += acc;
  }
  for_own_row_tiles(m.dm, m.off, g, s, [&](int row0, int rows) {
    RJA_BLOCK_LOOP(i, L * rows) {
      const int l = i / rows, r = row0 + i % rows;
      float acc = 0.f;
      for (int lp = 0; lp < L; ++lp) acc += t.wj[l * L + lp] * st.gP[(m.off + r) * L + lp];
      st.g[l * d + m.off + r] += acc;
    }
  });
  __syncthreads();
}

// f(l, c) for the elements [l, c] of an [L, d] buffer whose columns c (rows of x^T, both
// modalities) are in the block's row tiles. No barrier.
template <class F>
RJA_DEVICE void for_own_columns(const Group& g, const Dims& s, const F& f) {
  for (int m = 0; m < 2; ++m) {
    const int dm = m == 0 ? s.da : s.dv, off = m == 0 ? 0 : s.da;
    for_own_row_tiles(dm, off, g, s, [&](int row0, int rows) {
      RJA_BLOCK_LOOP(i, s.L * rows) f(i / rows, off + row0 + i % rows);
    });
  }
}

// With s.split = S > 1 the S blocks b*S .. b*S + S - 1 share sample b as in the forward, each
// with its own partial weight gradients; per iteration one barrier, before the owners of the
// columns of g add the S partial dJ. S = 1 (an ordinary launch) adds its dJ straight into g.
template <class K>
__global__ void backward_kernel(BackwardArgs<K> a) {
  RJA_DYNAMIC_SHARED(float, smem);
  const Dims s = a.s;
  const Tiles<K> t(smem, s, true);
  const int L = s.L, k = s.k, d = s.d(), S = s.split;
  const std::int64_t b = blockIdx.x / S, B = s.B, na = std::int64_t(L) * s.da, nv = std::int64_t(L) * s.dv;
  const std::int64_t ld = std::int64_t(L) * d;
  const bool alone = S == 1;
  Group group{int(blockIdx.x % S), S, alone ? Ptr<unsigned>() : slice(a.counters, b, 1, "counters[b]")};
  const Ptr<float> work = slice(a.work, b * Workspace::floats(s), Workspace::floats(s), "work[b]");
  const Ptr<float> dJ_parts = alone ? Ptr<float>() : slice(a.partials, b * 2 * S * ld, 2 * S * ld, "partials[b]");
  BackwardState st;
  st.g = slice(work, 0, ld, "work.g");
  st.P = slice(work, ld, ld, "work.P");
  st.gZ = slice(work, 2 * ld, std::int64_t(d) * k, "work.gZ");
  st.gP = slice(work, 2 * ld + std::int64_t(d) * k, ld, "work.gP");
  // Weight gradient sizes in the order of a.w; this block's partials start at zero.
  const std::int64_t sizes[8] = {L * L, L * L, k * L, k * L, std::int64_t(k) * d, std::int64_t(k) * d, L * k, L * k};
  const std::int64_t block = blockIdx.x;
  for (int w = 0; w < 8; ++w) {
    const Ptr<float> mine = slice(a.grad_w[w], block * s.Tw * sizes[w], s.Tw * sizes[w], "grad_w[block]");
    RJA_BLOCK_LOOP(i, int(s.Tw * sizes[w])) mine[i] = 0.f;
  }
  for_own_columns(group, s, [&](int l, int c) {
    st.g[l * d + c] = c < s.da ? to_float(a.grad_xa[b * na + l * s.da + c])
                               : to_float(a.grad_xv[b * nv + l * s.dv + c - s.da]);
  });
  __syncthreads();
  for (int it = s.T - 1; it >= 0; --it) {
    const int wi = s.weight_set(it);
    for (int w = 0; w < 8; ++w) {
      st.gw[w] = slice(a.grad_w[w], (block * s.Tw + wi) * sizes[w], sizes[w], "grad_w[block][i]");
    }
    const Ptr<const K> xa = slice(a.xa_iters, (it * B + b) * na, na, "xa_iters[i][b]");
    const Ptr<const K> xv = slice(a.xv_iters, (it * B + b) * nv, nv, "xv_iters[i][b]");
    const Joint<K> J{xa, xv, s.da, s.dv};
    const Modality<K> mods[2] = {modality(xa, s.da, 0, a.w, 0, wi, s), modality(xv, s.dv, s.da, a.w, 1, wi, s)};
    for (int first = 0; first < 2; ++first) {  // phase A: per row tile of the block's
      const Modality<K>& m = mods[first];
      load_small_weights(m, t, s);
      __syncthreads();
      for_own_row_tiles(m.dm, m.off, group, s,
                        [&](int row0, int rows) { backward_rows(m, J, st, first, t, s, row0, rows); });
    }
    // dJ sums over the rows of all blocks: this block's part of it, one buffer per iteration parity.
    const Ptr<float> dJ = alone ? Ptr<float>() : slice(dJ_parts, it % 2 * S * ld, S * ld, "partials[b][parity]");
    const Ptr<float> dJ_mine = alone ? Ptr<float>() : slice(dJ, group.part * ld, ld, "partials[b][parity][part]");
    for (int col0 = 0; col0 < d; col0 += s.E) {  // phase B: per column tile, both modalities
      const int cols = d - col0 < s.E ? d - col0 : s.E;
      const int jrows = t.extent(L, t.Lp), jcols = t.extent(cols, s.E);
      load_joint_tile(J, t, s, col0, cols);
      RJA_BLOCK_LOOP(i, jrows * jcols) t.gJ[(i / jcols) * t.ldE + i % jcols] = 0.f;
      for (int first = 0; first < 2; ++first) backward_column_tile(mods[first], st, first, t, s, col0, cols, group);
      RJA_BLOCK_LOOP(i, jrows * jcols) {  // same (l, e) ownership as the zeroing above
        const int l = i / jcols, e = i % jcols;
        if (l >= L || e >= cols) continue;
        if (alone) {
          st.g[l * d + col0 + e] += t.gJ[l * t.ldE + e];
        } else {
          dJ_mine[l * d + col0 + e] = t.gJ[l * t.ldE + e];
        }
      }
      __syncthreads();
    }
    if (!alone) {
      group.barrier();  // every block's partial dJ of this iteration is written
      for_own_columns(group, s, [&](int l, int c) { st.g[l * d + c] += group.sum_in_order(dJ, l * d + c, ld); });
    }
    for (int first = 0; first < 2; ++first) backward_joint_terms(mods[first], st, first, t, s, group);  // phase C
  }
  for_own_columns(group, s, [&](int l, int c) {
    if (c < s.da) {
      a.grad_xa_in[b * na + l * s.da + c] = from_float<K>(st.g[l * d + c]);
    } else {
      a.grad_xv_in[b * nv + l * s.dv + c - s.da] = from_float<K>(st.g[l * d + c]);
    }
  });
}

}  // namespace jca
}  // namespace rja
