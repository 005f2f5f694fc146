// Device helpers shared by the kernels of both operators (jca.cuh: the JCA form, paper.cuh: the
// paper's form; docs/SPEC.md): sizes, the joint features J, the correlation tile
// C = tanh(P J / sqrt(d)) and the block-wide small matrix products.
//
// Conventions. Every helper is called by all threads of the block (uniform control flow); one that
// contains a barrier says so. Shared tiles are row-major float with an explicit leading dimension
// (row stride); a stride of cols + 1 makes a walk down a column touch 32 different banks.
#pragma once

#include <type_traits>

#include "compat.cuh"

namespace rja {

// Where a pass runs its large contractions (host.h decides, per pass): scalar FMAs on CUDA cores; WMMA
// with 16-bit operands (the forwards of 16-bit elements); or float32 tiles by 3xTF32 (the backwards
// of 16-bit elements, and float32 both ways where TF32 is allowed). The tensor-core paths pad their
// tiles to multiples of 16.
enum class Products { cuda_cores, wmma_16_bit, tf32x3 };

struct Dims {
  int B, L, da, dv;
  int k;  // the JCA form's attention hidden size (0 for the paper's form)
  int T, Tw;
  int R, E;  // tile sizes: rows of x^T (rows of C) and joint features (columns of C) per tile
  float scale;  // 1 / sqrt(d)
  bool h_tanh, out_relu;  // the paper form's switches (SPEC section 1)
  Products products;      // the pass's contractions (paper.cuh, jca.cuh; host.h decides)
  int split = 1;          // thread blocks per sample, both forms (paper.cuh, jca.cuh; host.h decides)
  RJA_HOST_DEVICE int d() const { return da + dv; }
  RJA_HOST_DEVICE int weight_set(int it) const { return Tw == 1 ? 0 : it; }
  RJA_HOST_DEVICE bool padded() const { return products != Products::cuda_cores; }  // tiles to multiples of 16
};

// The S blocks that share the work of one sample (S = gridDim.x / B; blocks b*S .. b*S + S - 1).
// Barrier: all S meet; for S > 1 a barrier across blocks, through the sample's arrival counter in
// global memory (zero at launch): the g-th barrier is passed when the counter reaches g * S, so it
// needs no reset between uses. Every write before it, by any of the S blocks, is seen by all of
// them after it. Needs all S blocks resident at once (a cooperative launch). Called by all threads.
struct Group {
  int part, parts;  // this block's index in the group, and S
  Ptr<unsigned> counter;
  unsigned passed = 0;  // barriers passed so far

  // [first, last) of n items cut in S nearly equal ranges: this block's range.
  RJA_HOST_DEVICE int first(int n) const { return int(std::int64_t(n) * part / parts); }
  RJA_HOST_DEVICE int last(int n) const { return int(std::int64_t(n) * (part + 1) / parts); }

  RJA_DEVICE void barrier() {
    __syncthreads();  // the block's writes are issued
    if (parts == 1) return;
    ++passed;
    if (threadIdx.x == 0) {
      thread_fence();  // visible to the other blocks before they learn of the arrival
      atomic_add(counter, 1u);
      while (volatile_load(counter) < passed * unsigned(parts)) {
      }
      thread_fence();  // the other blocks' writes are seen after the wait
    }
    __syncthreads();
  }

  // Element `at` of the sum of the group's S partial sums `partials` [S, n], added in the order
  // 0 .. S - 1 whichever block reads it: the same bits for a given S, whatever the schedule.
  RJA_DEVICE float sum_in_order(Ptr<const float> partials, std::int64_t at, std::int64_t n) const {
    float sum = partials[at];
    for (int p = 1; p < parts; ++p) sum += partials[p * n + at];
    return sum;
  }
};

// Shared memory of one block cut into buffers, in floats; every buffer starts 32-byte aligned
// (WMMA tiles), whatever its element type.
struct SmemArena {
  struct Span {
    int at = 0, n = 0;  // start in floats, size in elements of the buffer's type
  };
  int total = 0;
  RJA_HOST_DEVICE Span take(int n, int bytes) {
    const Span span{total, n};
    total += (n * bytes + 31) / 32 * 8;
    return span;
  }
};

// The buffer `span` of the shared memory smem as elements of T.
template <class T>
RJA_DEVICE Ptr<T> smem_buffer(Ptr<float> smem, SmemArena::Span span, const char* name) {
  return reinterpret_slice<T>(smem, span.at, span.n, name);
}

// Size of the tile starting at `start` of a dimension of size n cut in tiles of `tile`.
RJA_HOST_DEVICE int tile_size(int n, int start, int tile) { return n - start < tile ? n - start : tile; }

// tanh in float32. For 16-bit element types on sm_75+ the special function unit's tanh.approx.f32,
// max relative error 2^-10.987 (PTX ISA, "Floating Point Instructions: tanh"): about an ulp of
// float16 and below half one of bfloat16, whose inputs carry that error already (the GPU check of
// the tolerance rule: tests/test_approx_tanh.py). Not tanh.approx.bf16x2 (sm_90): it rounds its
// input to bfloat16 as well, which near 0 doubles C's error, and C stays float32 here. float32
// keeps the accurate tanhf; host code (the emulator) has no __CUDA_ARCH__ and is exact for all.
template <class K>
RJA_DEVICE float tanh_of(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  if constexpr (sizeof(K) == 2) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else {
    return tanhf(x);
  }
#else
  return tanhf(x);
#endif
}

// J = [xa | xv] of one sample at one iteration, [L, d].
template <class K>
struct Joint {
  Ptr<const K> a, v;
  int da, dv;
  RJA_DEVICE float operator()(int l, int c) const {
    return c < da ? to_float(a[l * da + c]) : to_float(v[l * dv + c - da]);
  }
};

// One iteration's slice of a weight stacked [Tw, n].
template <class K>
RJA_DEVICE Ptr<const K> weight_slice(Ptr<const K> w, int set, std::int64_t n, const char* name) {
  return slice(w, std::int64_t(set) * n, n, name);
}

// v in [0, n], clamped.
RJA_HOST_DEVICE int clamp_to(int v, int n) { return v < 0 ? 0 : v > n ? n : v; }

// Staging copies move groups of one 16-byte vector of the source type: 4 floats, 8 16-bit values.
template <class S>
constexpr int kGroup = Vector<S>::n;

// v[j] = src[j] for j < n (n <= kGroup<S>) and 0 on to kGroup<S>: one vector load where the group is
// whole and src 16-byte aligned, else element by element (a ragged edge, an unaligned buffer).
template <class S>
RJA_DEVICE void load_group(Ptr<const S> src, int n, float (&v)[kGroup<S>]) {
  if (n == kGroup<S> && aligned_16(src)) {
    const Vector<S> q = load_vector(src);
    RJA_UNROLL
    for (int j = 0; j < kGroup<S>; ++j) v[j] = to_float(q.x[j]);
  } else {
    RJA_UNROLL
    for (int j = 0; j < kGroup<S>; ++j) v[j] = j < n ? to_float(src[j]) : 0.f;
  }
}

// Whether groups of G values may be stored as D to the rows (stride ldd) of dst in 16-byte vectors:
// G elements of D fill whole vectors, and every row starts 16-byte aligned.
template <class D, int G>
RJA_DEVICE bool vector_rows(Ptr<D> dst, int ldd) {
  return G % Vector<D>::n == 0 && ldd % Vector<D>::n == 0 && aligned_16(dst);
}

// dst[j] = v[j] as D for j < n (n <= G), where vector_rows holds for dst's tile: in 16-byte vector
// stores for a whole group, element by element at a ragged edge.
template <class D, int G>
RJA_DEVICE void store_group(Ptr<D> dst, int n, const float (&v)[G]) {
  constexpr int kPer = Vector<D>::n;
  if constexpr (G % kPer == 0) {
    if (n == G) {
      RJA_UNROLL
      for (int c = 0; c < G; c += kPer) {
        Vector<D> q;
        RJA_UNROLL
        for (int j = 0; j < kPer; ++j) q.x[j] = from_float<D>(v[c + j]);
        store_vector(dst + c, q);
      }
      return;
    }
  }
  RJA_UNROLL
  for (int j = 0; j < G; ++j) {
    if (j < n) dst[j] = from_float<D>(v[j]);
  }
}

// dst[r * ldd + c] = src[r * lds + c] for r < rows, c < cols, and 0 on to [rows_pad, cols_pad) (an
// operand's padding), converted to D through float (exact from a 16-bit S, and from float to float).
// Where dst's rows take 16-byte stores (vector_rows) the tile goes in groups of kGroup<S> columns, a
// thread a group: a warp reads 512 contiguous bytes in 16-byte loads where src's rows are aligned and
// stores them as vectors. Elsewhere (a row stride such as E + 1, kept for conflict-free column walks)
// a thread an element, as the scalar stores of a group would meet in shared-memory banks (a warp's
// threads 4 floats apart: 8 banks). The same thread stages the same element for the same
// arguments. No barrier.
template <class S, class D>
RJA_DEVICE void stage_tile(Ptr<const S> src, std::int64_t lds, int rows, int cols, Ptr<D> dst, int ldd,
                           int rows_pad, int cols_pad) {
  constexpr int G = kGroup<S>;
  if (!vector_rows<D, G>(dst, ldd)) {
    RJA_BLOCK_LOOP(i, rows_pad * cols_pad) {
      const int r = i / cols_pad, c = i % cols_pad;
      dst[r * ldd + c] = from_float<D>(r < rows && c < cols ? to_float(src[r * lds + c]) : 0.f);
    }
    return;
  }
  const int groups = (cols_pad + G - 1) / G;
  RJA_BLOCK_LOOP(i, rows_pad * groups) {
    const int r = i / groups, c = i % groups * G;
    float v[G];
    load_group(src + r * lds + c, r < rows ? clamp_to(cols - c, G) : 0, v);
    store_group(dst + r * ldd + c, clamp_to(cols_pad - c, G), v);
  }
}

// Jt[l, e] = J[l, col0 + e] for l < L, e < cols (row stride ld), and 0 on to [Lp, Ep) (an mma
// operand's padding; Lp = L, Ep = cols pad nothing): the tile's columns of xa, then those of xv (a
// tile may hold some of each). Exact in T = K or float: J is K. No barrier.
template <class K, class T>
RJA_DEVICE void stage_joint_tile(const Joint<K>& J, Ptr<T> Jt, int ld, int L, int col0, int cols, int Lp, int Ep) {
  const int na = clamp_to(J.da - col0, cols);
  stage_tile(J.a + col0, J.da, L, na, Jt, ld, Lp, na);
  stage_tile(J.v + (col0 > J.da ? col0 - J.da : 0), J.dv, L, cols - na, Jt + na, ld, Lp, Ep - na);
}

// d tanh(x) / dx = 1 - tanh(x)^2 = 4 e / (1 + e)^2 with e = exp(-2 |x|): accurate to a few ulps
// where tanh saturates, where 1 - t * t of the rounded t = tanh(x) cancels (|x| = 3: 1e-5 relative).
RJA_DEVICE float tanh_derivative(float x) {
  const float e = expf(-2.f * fabsf(x)), q = 1.f + e;
  return 4.f * e / (q * q);
}

// C[r, e] = tanh(scale * sum_l P[r, l] Jt[l, e]) for r < rows, e < cols: a tile of the joint
// correlation C = tanh(x^T w_j J / sqrt(d)) (SPEC Eq. 1, 2); P has row stride L. With kDerivative
// also D[r, e] = tanh'(.) of the same element (D has C's row stride ldc).
template <class K, bool kDerivative = false>
RJA_DEVICE void correlation_tile(Ptr<const float> P, Ptr<const float> Jt, int ldj, Ptr<float> C, int ldc, int rows,
                                 int cols, int L, float scale, Ptr<float> D = Ptr<float>()) {
  RJA_BLOCK_LOOP(i, rows * cols) {
    const int r = i / cols, e = i % cols;
    float acc = 0.f;
    for (int l = 0; l < L; ++l) acc += P[r * L + l] * Jt[l * ldj + e];
    const float x = acc * scale;
    C[r * ldc + e] = tanh_of<K>(x);
    if constexpr (kDerivative) D[r * ldc + e] = tanh_derivative(x);
  }
}

// Whether Products::wmma_16_bit is compiled for element type K: 16-bit types, where WMMA exists.
template <class K>
RJA_DEVICE constexpr bool tensor_cores() {
  return RJA_WMMA && sizeof(K) == 2;
}

// Whether Products::tf32x3 (mma_tiles_f32 on float32 tiles, about float32 accuracy) is compiled:
// for every element type where WMMA exists (tf32 from sm_80).
RJA_DEVICE constexpr bool tf32_tensor_cores() { return RJA_WMMA; }

// The products a pass of element type K takes: s.products (host.h's choice) where the pass can take
// it, the 16-bit ones in 16-bit forwards only and 3xTF32 in float32 forwards and every backward;
// else CUDA cores. A kernel's Tiles and shared-memory layout take this, so that (`backward` being a
// literal there) a kernel compiles no path it never takes: neither its code nor its registers.
template <class K>
RJA_DEVICE Dims with_products_taken(Dims s, bool backward) {
  const bool sixteen_bit = s.products == Products::wmma_16_bit && tensor_cores<K>() && !backward;
  const bool tf32x3 = s.products == Products::tf32x3 && tf32_tensor_cores() && (backward || sizeof(K) == 4);
  s.products = sixteen_bit ? Products::wmma_16_bit : tf32x3 ? Products::tf32x3 : Products::cuda_cores;
  return s;
}

// Whether the values of element type K are exact in tf32 (float16's 11 significant bits, bfloat16's
// 8): such an operand of mma_tiles_f32 needs no low part, a product fewer.
template <class K>
RJA_DEVICE constexpr bool exact_in_tf32() {
  return sizeof(K) == 2;
}

#if RJA_WMMA
// Element (r, c) of a matrix in Layout (row_major: at p[r * ld + c]; col_major: at p[c * ld + r]).
template <class Layout, class T>
RJA_DEVICE Ptr<T> element_at(Ptr<T> p, int ld, int r, int c) {
  return p + (std::is_same_v<Layout, nvcuda::wmma::row_major> ? r * ld + c : c * ld + r);
}

// The tiles of Out [M, N] (row-major float, M and N multiples of 16) on tensor cores: the full
// warps take the 16 x 16 tiles in turn (a partial last warp sits out, as WMMA needs all 32 lanes);
// a tile's accumulator of the WMMA shape m16n16kK starts as Out's tile (accumulate) or 0, goes
// through add(acc, i0, j0) for the tile at row i0, column j0, and is stored back. No barrier: what
// add reads (and Out) must be complete, and Out is complete for all threads after the next barrier.
template <int kK, class Add>
RJA_DEVICE void for_output_tiles(int M, int N, Ptr<float> Out, int ldo, bool accumulate, const Add& add) {
  namespace wmma = nvcuda::wmma;
  const int warp = int(threadIdx.x) / 32, warps = int(blockDim.x) / 32, tiles_n = N / 16;
  if (warp >= warps) return;
  for (int tile = warp; tile < M / 16 * tiles_n; tile += warps) {
    const int i0 = tile / tiles_n * 16, j0 = tile % tiles_n * 16;
    const Ptr<float> out = Out + i0 * ldo + j0;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc;
    if (accumulate) {
      wmma::load_matrix_sync(acc, out, unsigned(ldo), wmma::mem_row_major);
    } else {
      wmma::fill_fragment(acc, 0.f);
    }
    add(acc, i0, j0);
    wmma::store_matrix_sync(out, acc, unsigned(ldo), wmma::mem_row_major);
  }
}

// Out[M, N] = A[M, Kd] B[Kd, N] (+ Out with accumulate) on tensor cores (WMMA m16n16k16): A
// row-major and B in LayoutB (element_at), both 16-bit, the products summed in float32. Kd is a
// multiple of 16, leading dimensions multiples of 8 (A, B) and 4 (Out), and the buffers 32-byte
// aligned, which keeps every 16 x 16 tile aligned. Work split and barriers: for_output_tiles.
template <class T, class LayoutB = nvcuda::wmma::row_major>
RJA_DEVICE void mma_tiles(int M, int N, int Kd, Ptr<const T> A, int lda, Ptr<const T> B, int ldb, Ptr<float> Out,
                          int ldo, bool accumulate) {
  namespace wmma = nvcuda::wmma;
  for_output_tiles<16>(M, N, Out, ldo, accumulate, [&](auto& acc, int i0, int j0) {
    for (int k0 = 0; k0 < Kd; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> b;
      wmma::load_matrix_sync(a, element_at<wmma::row_major>(A, lda, i0, k0), unsigned(lda));
      wmma::load_matrix_sync(b, element_at<LayoutB>(B, ldb, k0, j0), unsigned(ldb));
      wmma::mma_sync(acc, a, b, acc);
    }
  });
}

// The 3xTF32 split of a float32 operand fragment, element by element: hi = tf32(x) and
// lo = tf32(x - hi), so x = hi + lo to within 2^-22 |x| (hi keeps 11 significant bits, x - hi is
// exact in float32 and at most 2^-11 |x|). With kExact (x is a 16-bit value, exact in tf32) lo is
// not needed and only hi is converted.
template <bool kExact, class Frag>
RJA_DEVICE void split_tf32(Frag& hi, Frag& lo) {
  for (int i = 0; i < hi.num_elements; ++i) {
    const float x = hi.x[i], h = nvcuda::wmma::__float_to_tf32(x);
    hi.x[i] = h;
    if constexpr (!kExact) lo.x[i] = nvcuda::wmma::__float_to_tf32(x - h);
  }
}

// Out[M, N] = A[M, Kd] B[Kd, N] (+ Out with accumulate) for float32 operands on tensor cores at
// about float32 accuracy (3xTF32, WMMA m16n16k8): A B ~ A_lo B_hi + A_hi B_lo + A_hi B_hi, small
// terms first, in float32 accumulators. The dropped A_lo B_lo and the rounding of the lo parts
// leave about 3 * 2^-22 sum_k |a b| (float32's own FMAs: 2^-24 per add), where a single TF32 product
// (float16's 11 bits) would leave 2^-11. kExactA / kExactB: that operand holds 16-bit values, so
// its lo term is 0 and skipped (two products instead of three). A in LayoutA and B in LayoutB
// (element_at); Kd a multiple of 8, leading dimensions of 4; 32-byte aligned buffers. Work split
// and barriers: for_output_tiles.
template <class LayoutA, class LayoutB, bool kExactA = false, bool kExactB = false>
RJA_DEVICE void mma_tiles_f32(int M, int N, int Kd, Ptr<const float> A, int lda, Ptr<const float> B, int ldb,
                              Ptr<float> Out, int ldo, bool accumulate) {
  namespace wmma = nvcuda::wmma;
  using tf32 = wmma::precision::tf32;
  for_output_tiles<8>(M, N, Out, ldo, accumulate, [&](auto& acc, int i0, int j0) {
    for (int k0 = 0; k0 < Kd; k0 += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, tf32, LayoutA> a_hi, a_lo;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, tf32, LayoutB> b_hi, b_lo;
      wmma::load_matrix_sync(a_hi, element_at<LayoutA>(A, lda, i0, k0), unsigned(lda));
      wmma::load_matrix_sync(b_hi, element_at<LayoutB>(B, ldb, k0, j0), unsigned(ldb));
      split_tf32<kExactA>(a_hi, a_lo);
      split_tf32<kExactB>(b_hi, b_lo);
      if constexpr (!kExactA) wmma::mma_sync(acc, a_lo, b_hi, acc);
      if constexpr (!kExactB) wmma::mma_sync(acc, a_hi, b_lo, acc);
      wmma::mma_sync(acc, a_hi, b_hi, acc);
    }
  });
}

// correlation_tile on tensor cores: C16[r, e] = tanh(scale * S[r, e]) for r < R, e < E, with the
// product S = P16 J16 ([R, Lp] [Lp, E], P16 and J16 zero past their staged rows and columns, so C16
// is tanh(0) = 0 there) in the float buffer S. Barrier inside; C16 is complete after the next one.
template <class K>
RJA_DEVICE void correlation_tile_mma(int R, int E, int Lp, Ptr<const K> P16, int ldp, Ptr<const K> J16, int ldj,
                                     Ptr<float> S, int lds, Ptr<K> C16, int ldc, float scale) {
  mma_tiles<K>(R, E, Lp, P16, ldp, J16, ldj, S, lds, false);
  __syncthreads();
  RJA_BLOCK_LOOP(i, R * E) {
    const int r = i / E, e = i % E;
    C16[r * ldc + e] = from_float<K>(tanh_of<K>(S[r * lds + e] * scale));
  }
}

// correlation_tile on tensor cores at about float32 accuracy: C[r, e] = tanh(scale * S[r, e]) for
// r < R, e < E, with the product S = P J ([R, Lp] [Lp, E], float; J holds K values, an exact
// operand of mma_tiles_f32 for 16-bit K) in the float buffer S, which may be C itself (lds = ldc:
// each element is read and written by its one thread). P and J zero past their staged rows and columns make C
// 0 there. With kDerivative also D[r, e] = tanh'(.) (C's row stride) for r < rows, e < cols, and 0
// past them: tanh'(0) = 1 would not keep a product with D's padding at 0. Barrier inside; C (and D)
// are complete after the next one.
template <class K, bool kDerivative = false>
RJA_DEVICE void correlation_tile_f32(int R, int E, int Lp, Ptr<const float> P, int ldp, Ptr<const float> J, int ldj,
                                     Ptr<float> S, int lds, Ptr<float> C, int ldc, int rows, int cols, float scale,
                                     Ptr<float> D = Ptr<float>()) {
  namespace wmma = nvcuda::wmma;
  mma_tiles_f32<wmma::row_major, wmma::row_major, false, exact_in_tf32<K>()>(R, E, Lp, P, ldp, J, ldj, S, lds, false);
  __syncthreads();
  RJA_BLOCK_LOOP(i, R * E) {
    const int r = i / E, e = i % E;
    const float x = S[r * lds + e] * scale;
    C[r * ldc + e] = tanh_of<K>(x);
    if constexpr (kDerivative) D[r * ldc + e] = r < rows && e < cols ? tanh_derivative(x) : 0.f;
  }
}
#endif

// Rows of a product computed together by one thread: each element of the right operand it loads
// serves this many rows.
constexpr int kRowGroup = 4;

// out(l, c, sum_{k < K} a(l, k) * w[k * ldw + c]) for l < M, c < N, with w row-major in global
// memory (its loads are coalesced along c) and a(l, k) a cheap read (shared memory, or global
// memory that a warp reads at one address). Each (l, c) is visited by one thread, always the same
// for the same M and N. No barrier.
template <class W, class A, class Out>
RJA_DEVICE void rows_times(int M, int N, int K, const A& a, Ptr<const W> w, std::int64_t ldw, const Out& out) {
  const int groups = (M + kRowGroup - 1) / kRowGroup;
  RJA_BLOCK_LOOP(i, groups * N) {
    const int l0 = (i / N) * kRowGroup, c = i % N, rows = tile_size(M, l0, kRowGroup);
    float acc[kRowGroup] = {};
    for (int k = 0; k < K; ++k) {
      const float wk = to_float(w[k * ldw + c]);
      RJA_UNROLL
      for (int j = 0; j < kRowGroup; ++j) {
        if (j < rows) acc[j] += a(l0 + j, k) * wk;
      }
    }
    for (int j = 0; j < rows; ++j) out(l0 + j, c, acc[j]);
  }
}

// out(l, c, partial) for l < M, c < N, where the partials over chunks of k sum to
// sum_{k < K} a(l, k) * w[c * ldw + k]: a product with the transpose of the row-major w. Chunks of
// kc x nc elements of w are staged transposed in shared memory `scratch` ([kc, nc + 1]), loaded
// coalesced along k, so out must accumulate. Each (l, c) is visited by one thread, always the same.
// Starts with a barrier (a, and what out updates, must be complete) and ends with one (out is).
template <class W, class A, class Out>
RJA_DEVICE void rows_times_transposed(int M, int N, int K, const A& a, Ptr<const W> w, std::int64_t ldw,
                                      Ptr<float> scratch, int kc, int nc, const Out& out) {
  const int groups = (M + kRowGroup - 1) / kRowGroup;
  for (int c0 = 0; c0 < N; c0 += nc) {
    const int cols = tile_size(N, c0, nc);
    for (int k0 = 0; k0 < K; k0 += kc) {
      const int ks = tile_size(K, k0, kc);
      __syncthreads();  // the previous chunk's readers are done
      RJA_BLOCK_LOOP(i, cols * ks) {
        const int cc = i / ks, kk = i % ks;
        scratch[kk * (nc + 1) + cc] = to_float(w[(c0 + cc) * ldw + k0 + kk]);
      }
      __syncthreads();
      RJA_BLOCK_LOOP(i, groups * cols) {
        const int l0 = (i / cols) * kRowGroup, cc = i % cols, rows = tile_size(M, l0, kRowGroup);
        float acc[kRowGroup] = {};
        for (int kk = 0; kk < ks; ++kk) {
          const float wk = scratch[kk * (nc + 1) + cc];
          RJA_UNROLL
          for (int j = 0; j < kRowGroup; ++j) {
            if (j < rows) acc[j] += a(l0 + j, k0 + kk) * wk;
          }
        }
        for (int j = 0; j < rows; ++j) out(l0 + j, c0 + cc, acc[j]);
      }
    }
  }
  __syncthreads();
}

#if RJA_WMMA
// Out[Mp, Np] = sum_{k < K} a(l, k) w[c * ldw + k] for l < M, c < N, and 0 on to Mp, Np (multiples
// of 16): rows_times_transposed on tensor cores at about float32 accuracy. Chunks of kc (a multiple
// of 8) columns of a and of the row-major w (global memory, loads coalesced along k) are staged in
// As [Mp, lda] and Ws [Np, ldws] (w transposed in place: a col_major operand), zero past M, N, K;
// w of a 16-bit type (and a with kExactA) are exact in tf32, which saves a product. Out is
// overwritten, not accumulated. Starts with a barrier (a, w must be complete; the previous readers
// of As, Ws, Out done) and ends with one (Out is complete).
template <bool kExactA, class W, class A>
RJA_DEVICE void rows_times_transposed_f32(int M, int Mp, int N, int Np, int K, const A& a, Ptr<const W> w,
                                          std::int64_t ldw, Ptr<float> As, int lda, Ptr<float> Ws, int ldws, int kc,
                                          Ptr<float> Out, int ldo) {
  namespace wmma = nvcuda::wmma;
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int ks = tile_size(K, k0, kc);
    __syncthreads();  // the previous chunk's readers are done
    RJA_BLOCK_LOOP(i, Mp * kc) {
      const int l = i / kc, k = i % kc;
      As[l * lda + k] = l < M && k < ks ? a(l, k0 + k) : 0.f;
    }
    stage_tile(w + k0, ldw, N, ks, Ws, ldws, Np, kc);
    __syncthreads();
    mma_tiles_f32<wmma::row_major, wmma::col_major, kExactA, exact_in_tf32<W>()>(Mp, Np, kc, As, lda, Ws, ldws, Out,
                                                                                 ldo, k0 > 0);
  }
  __syncthreads();
}
#endif

}  // namespace rja
