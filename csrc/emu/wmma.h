// The subset of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that the kernels use, emulated on
// the fibers of emu.h: the m16n16k16 shape with __half or __nv_bfloat16 operand fragments and the
// m16n16k8 shape with precision::tf32 ones (row- or column-major), float accumulator fragments;
// fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync, __float_to_tf32. Included by emu.h.
//
// Fragments are opaque and warp-collective, as on a GPU, and the emulation makes misuse fail with
// emu::Error instead of computing a plausible result:
// - Each lane's fragment holds 1/32 of the tile's elements (8 of the 256 of a 16 x 16 tile), an
//   arbitrary fixed subset (element_position); mma_sync gathers the warp's fragments to multiply, so
//   a lane that skipped a load or filled its fragment with its own value corrupts the product.
//   Elements (num_elements, x[], float here) may be transformed one by one, the same way for all,
//   as the CUDA guide allows (__float_to_tf32); their mapping is unspecified on a GPU.
// - tf32 fragments load float32 values unconverted, as on a GPU; mma_sync fails on an element that
//   is not a tf32 value (low 13 mantissa bits set), which a GPU would silently truncate.
// - load/store/mma_sync are rendezvous of all 32 lanes of a full warp (a partial last warp of a
//   block fails), which must make the same call: the same operation, pointer, leading dimension
//   and layout. A lane that skips the call deadlocks its warp, which the scheduler reports.
// - Leading dimensions must be multiples of 8 elements (16-bit) or 4 (float), pointers 256-bit
//   aligned; every element is read and written through emu::Ptr, bounds-checked.
// - A fragment never filled or loaded holds NaN.
// Numerics: the products of 16-bit and of tf32 operands are exact in float32; mma_sync adds them to the
// accumulator in float32, in order of k. Hardware's accumulation order (and internal precision) is
// unspecified, so results may differ from a GPU's in the last bits of the float32 sums.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32;  // operands of 10 explicit mantissa bits (float32 storage), m16n16k8
}  // namespace precision

// The rows and columns of the matrix a fragment holds: A is m x k, B k x n, the accumulator m x n.
template <class Use, int m, int n, int k>
constexpr int tile_rows = std::is_same_v<Use, matrix_b> ? k : m;
template <class Use, int m, int n, int k>
constexpr int tile_cols = std::is_same_v<Use, matrix_a> ? k : n;

// Tile element (row * cols + column) that lane `lane` holds as its element i of `per_lane`, for a
// tile of 32 * per_lane (a power of two) elements: 167 is odd, so this is a bijection, and it
// interleaves the lanes' elements over rows and columns.
constexpr int element_position(int lane, int i, int per_lane) {
  return ((lane * per_lane + i) * 167 + 89) & (32 * per_lane - 1);
}

template <class Use, int m, int n, int k, class T, class Layout = void>
class fragment {
  static constexpr bool kOperand = std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b>;
  static constexpr bool kLayout = std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>;
  static constexpr bool k16 = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  static_assert(m == 16 && n == 16 && (k == 16 || k == 8),
                "the CUDA emulator has the m16n16k16 and m16n16k8 WMMA shapes only");
  static_assert(kOperand ? kLayout && (k == 16 ? k16 : std::is_same_v<T, precision::tf32>)
                         : std::is_same_v<Use, accumulator> && std::is_same_v<T, float> && std::is_void_v<Layout>,
                "the CUDA emulator has __half/__nv_bfloat16 (m16n16k16) and precision::tf32 (m16n16k8) operand "
                "fragments with a layout and float accumulator fragments without one");

 public:
  static constexpr int kRows = tile_rows<Use, m, n, k>, kCols = tile_cols<Use, m, n, k>;
  static constexpr int num_elements = kRows * kCols / 32;
  // This lane's elements, as float (exact for the 16-bit types); NaN until filled or loaded.
  float x[num_elements];
  fragment() {
    for (float& v : x) v = std::numeric_limits<float>::quiet_NaN();
  }
};

// float32 rounded to tf32, to nearest with ties away from zero (cvt.rna.tf32.f32): the low 13
// mantissa bits become zero. inf and NaN stay; a value past tf32's largest rounds to inf.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = (bits + 0x1000u) & ~0x1FFFu;  // + half of the dropped unit, on the magnitude
  std::memcpy(&v, &bits, sizeof(bits));
  return v;
}

namespace detail {

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
float round_to(float v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(__float2half_rn(v));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(__float2bfloat16_rn(v));
  if constexpr (std::is_same_v<T, precision::tf32>) return __float_to_tf32(v);
  return v;
}

// The element type of memory that fragments of T load from: float for tf32.
template <class T>
using memory_type = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;

// Whether v is a value of tf32 (or inf, NaN): what a tf32 operand of mma_sync must hold.
inline bool is_tf32(float v) { return !std::isfinite(v) || __float_to_tf32(v) == v; }

// What a lane calls, compared across the warp at the rendezvous.
struct Call {
  std::uint64_t address, ldm, layout;
};

// The rendezvous of a load or store: the whole warp, the same arguments, a valid ldm and pointer.
template <class T>
void memory_collective(const char* op, const emu::Ptr<T>& p, unsigned ldm, int layout) {
  using E = std::remove_const_t<T>;
  if (emu::active_lanes() != 32) {
    emu::fail(std::string(op) + ": WMMA needs all 32 lanes of a warp; this warp has " +
              std::to_string(emu::active_lanes()) + " threads");
  }
  const unsigned multiple = 16 / sizeof(E);
  if (ldm == 0 || ldm % multiple != 0) {
    emu::fail(std::string(op) + ": ldm " + std::to_string(ldm) + " is not a positive multiple of " +
              std::to_string(multiple) + " elements (16 bytes)");
  }
  const auto address = std::uint64_t(reinterpret_cast<std::uintptr_t>(p.base() + p.offset()));
  if (address % 32 != 0) {
    emu::fail(std::string(op) + ": pointer " + p.name() + "[" + std::to_string(p.offset()) +
              "] is not 256-bit aligned");
  }
  const Call mine{address, ldm, std::uint64_t(layout)};
  const int lane = emu::lane_id();
  emu::Warp& w = emu::tl_block->warps[std::size_t(emu::current_fiber().warp)];
  const int parity = emu::warp_rendezvous(op, [&](emu::Warp& wp, int par) {
    wp.blobs[par][lane].resize(sizeof(Call));
    std::memcpy(wp.blobs[par][lane].data(), &mine, sizeof(Call));
  });
  for (int j = 0; j < 32; ++j) {
    if (std::memcmp(w.blobs[parity][j].data(), &mine, sizeof(Call)) != 0) {
      emu::fail(std::string(op) + ": divergent arguments: lane " + std::to_string(lane) + " and lane " +
                std::to_string(j) + " pass different pointers, leading dimensions or layouts");
    }
  }
}

// Offset in memory of tile element (r, c) in a layout: row-major or column-major.
inline std::ptrdiff_t at(int r, int c, unsigned ldm, bool row) {
  return row ? std::ptrdiff_t(r) * ldm + c : std::ptrdiff_t(c) * ldm + r;
}

}  // namespace detail

template <class Use, int m, int n, int k, class T, class Layout, class V>
void fill_fragment(fragment<Use, m, n, k, T, Layout>& f, const V& v) {
  // Lane-local, as on a GPU: a warp whose lanes fill different values gets a mixed tile.
  for (float& x : f.x) x = detail::round_to<T>(detail::to_float(v));
}

// An operand tile from memory: element (r, c) of A (row, k) or B (k, column) at p[r * ldm + c]
// (row_major) or p[c * ldm + r] (col_major).
template <class Use, int k, class T, class Layout, class P>
void load_matrix_sync(fragment<Use, 16, 16, k, T, Layout>& f, const emu::Ptr<P>& p, unsigned ldm) {
  static_assert(std::is_same_v<std::remove_const_t<P>, detail::memory_type<T>>,
                "load_matrix_sync: pointer of the fragment's type (float for tf32)");
  using F = fragment<Use, 16, 16, k, T, Layout>;
  constexpr bool row = std::is_same_v<Layout, row_major>;
  detail::memory_collective("wmma::load_matrix_sync", p, ldm, row ? mem_row_major : mem_col_major);
  const int lane = emu::lane_id();
  for (int i = 0; i < F::num_elements; ++i) {
    const int pos = element_position(lane, i, F::num_elements);
    f.x[i] = detail::to_float(p[detail::at(pos / F::kCols, pos % F::kCols, ldm, row)]);
  }
}

template <int k, class P>
void load_matrix_sync(fragment<accumulator, 16, 16, k, float>& f, const emu::Ptr<P>& p, unsigned ldm,
                      layout_t layout) {
  static_assert(std::is_same_v<std::remove_const_t<P>, float>, "load_matrix_sync: float accumulator");
  using F = fragment<accumulator, 16, 16, k, float>;
  detail::memory_collective("wmma::load_matrix_sync", p, ldm, layout);
  const int lane = emu::lane_id();
  for (int i = 0; i < F::num_elements; ++i) {
    const int pos = element_position(lane, i, F::num_elements);
    f.x[i] = p[detail::at(pos / 16, pos % 16, ldm, layout == mem_row_major)];
  }
}

template <int k>
void store_matrix_sync(const emu::Ptr<float>& p, const fragment<accumulator, 16, 16, k, float>& f, unsigned ldm,
                       layout_t layout) {
  using F = fragment<accumulator, 16, 16, k, float>;
  detail::memory_collective("wmma::store_matrix_sync", p, ldm, layout);
  const int lane = emu::lane_id();
  for (int i = 0; i < F::num_elements; ++i) {
    const int pos = element_position(lane, i, F::num_elements);
    p[detail::at(pos / 16, pos % 16, ldm, layout == mem_row_major)] = f.x[i];
  }
}

// Number of mma_sync calls (per lane) so far: lets tests see which path a kernel took.
inline std::uint64_t emu_mma_count = 0;

// D = A B + C over the warp: every lane contributes its elements of A, B and C and computes its
// elements of D from the whole tiles (D and C may be the same fragment).
template <int k, class T, class La, class Lb>
void mma_sync(fragment<accumulator, 16, 16, k, float>& d, const fragment<matrix_a, 16, 16, k, T, La>& a,
              const fragment<matrix_b, 16, 16, k, T, Lb>& b, const fragment<accumulator, 16, 16, k, float>& c) {
  constexpr const char* op = "wmma::mma_sync";
  constexpr int na = 16 * k / 32, nc = 256 / 32;  // elements per lane of A (and B), of C
  if (emu::active_lanes() != 32) {
    emu::fail(std::string(op) + ": WMMA needs all 32 lanes of a warp; this warp has " +
              std::to_string(emu::active_lanes()) + " threads");
  }
  ++emu_mma_count;
  constexpr std::size_t kBytesA = sizeof(float) * na, kBytesC = sizeof(float) * nc;
  const int lane = emu::lane_id();
  emu::Warp& w = emu::tl_block->warps[std::size_t(emu::current_fiber().warp)];
  const int parity = emu::warp_rendezvous(op, [&](emu::Warp& wp, int par) {
    std::vector<unsigned char>& blob = wp.blobs[par][lane];
    blob.resize(2 * kBytesA + kBytesC);
    std::memcpy(blob.data(), a.x, kBytesA);
    std::memcpy(blob.data() + kBytesA, b.x, kBytesA);
    std::memcpy(blob.data() + 2 * kBytesA, c.x, kBytesC);
  });
  float A[16 * k], B[k * 16], C[256];  // row-major tiles: A[row][k], B[k][column], C[row][column]
  for (int j = 0; j < 32; ++j) {
    const std::vector<unsigned char>& blob = w.blobs[parity][j];
    float va[na], vb[na], vc[nc];
    std::memcpy(va, blob.data(), kBytesA);
    std::memcpy(vb, blob.data() + kBytesA, kBytesA);
    std::memcpy(vc, blob.data() + 2 * kBytesA, kBytesC);
    for (int i = 0; i < na; ++i) {
      A[element_position(j, i, na)] = va[i];
      B[element_position(j, i, na)] = vb[i];
    }
    for (int i = 0; i < nc; ++i) C[element_position(j, i, nc)] = vc[i];
  }
  if constexpr (std::is_same_v<T, precision::tf32>) {
    for (int i = 0; i < 16 * k; ++i) {
      if (!detail::is_tf32(A[i]) || !detail::is_tf32(B[i])) {
        emu::fail(std::string(op) + ": a tf32 operand holds a float32 value that is not a tf32 value "
                  "(convert its elements with __float_to_tf32)");
      }
    }
  }
  for (int i = 0; i < nc; ++i) {
    const int pos = element_position(lane, i, nc), r = pos / 16, col = pos % 16;
    float acc = C[pos];
    for (int kk = 0; kk < k; ++kk) acc += A[r * k + kk] * B[kk * 16 + col];
    d.x[i] = acc;
  }
}

}  // namespace wmma
}  // namespace nvcuda
