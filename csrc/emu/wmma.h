// The subset of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that the kernels use, emulated on
// the fibers of emu.h: the m16n16k16 shape with __half or __nv_bfloat16 operand fragments
// (row- or column-major) and float accumulator fragments; fill_fragment, load_matrix_sync,
// mma_sync, store_matrix_sync. Included by emu.h.
//
// Fragments are opaque and warp-collective, as on a GPU, and the emulation makes misuse fail with
// emu::Error instead of computing a plausible result:
// - Each lane's fragment holds 8 of the 256 elements of the 16 x 16 tile, an arbitrary fixed subset
//   (element_position); mma_sync gathers the warp's fragments to multiply, so a lane that skipped a load
//   or filled its fragment with its own value corrupts the product. Element access (num_elements,
//   x[]) is left out: no kernel here touches elements, and their mapping is unspecified on a GPU.
// - load/store/mma_sync are rendezvous of all 32 lanes of a full warp (a partial last warp of a
//   block fails), which must make the same call: the same operation, pointer, leading dimension
//   and layout. A lane that skips the call deadlocks its warp, which the scheduler reports.
// - Leading dimensions must be multiples of 8 elements (16-bit) or 4 (float), pointers 256-bit
//   aligned; every element is read and written through emu::Ptr, bounds-checked.
// - A fragment never filled or loaded holds NaN.
// Numerics: the products of 16-bit operands are exact in float32; mma_sync adds them to the
// accumulator in float32, in order of k. Hardware's accumulation order (and internal precision) is
// unspecified, so results may differ from a GPU's in the last bits of the float32 sums.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
enum layout_t { mem_row_major, mem_col_major };

constexpr int kFragmentElements = 8;  // per lane: 256 elements of a tile over 32 lanes

// Tile element (row * 16 + column) that lane `lane` holds as its element i: 167 is odd, so this
// is a bijection of [0, 256), and it interleaves the lanes' elements over rows and columns.
constexpr int element_position(int lane, int i) { return ((lane * kFragmentElements + i) * 167 + 89) & 255; }

template <class Use, int m, int n, int k, class T, class Layout = void>
class fragment {
  static_assert(m == 16 && n == 16 && k == 16, "the CUDA emulator has the m16n16k16 WMMA shape only");
  static constexpr bool kOperand = std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b>;
  static_assert(kOperand ? (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) &&
                               (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>)
                         : std::is_same_v<Use, accumulator> && std::is_same_v<T, float> && std::is_void_v<Layout>,
                "the CUDA emulator has __half/__nv_bfloat16 operand fragments with a layout and float "
                "accumulator fragments without one");

 public:
  // This lane's elements, as float (exact for the 16-bit types). Not part of the WMMA API.
  float emu_values[kFragmentElements] = {
      std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
};

namespace detail {

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
float round_to(float v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(__float2half_rn(v));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

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
  for (float& x : f.emu_values) x = detail::round_to<T>(detail::to_float(v));
}

// An operand tile from memory: element (r, c) of A (row, k) or B (k, column) at p[r * ldm + c]
// (row_major) or p[c * ldm + r] (col_major).
template <class Use, class T, class Layout, class P>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const emu::Ptr<P>& p, unsigned ldm) {
  static_assert(std::is_same_v<std::remove_const_t<P>, T>, "load_matrix_sync: pointer of the fragment's type");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  detail::memory_collective("wmma::load_matrix_sync", p, ldm, row ? mem_row_major : mem_col_major);
  const int lane = emu::lane_id();
  for (int i = 0; i < kFragmentElements; ++i) {
    const int pos = element_position(lane, i);
    f.emu_values[i] = detail::to_float(p[detail::at(pos / 16, pos % 16, ldm, row)]);
  }
}

template <class P>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const emu::Ptr<P>& p, unsigned ldm,
                      layout_t layout) {
  static_assert(std::is_same_v<std::remove_const_t<P>, float>, "load_matrix_sync: float accumulator");
  detail::memory_collective("wmma::load_matrix_sync", p, ldm, layout);
  const int lane = emu::lane_id();
  for (int i = 0; i < kFragmentElements; ++i) {
    const int pos = element_position(lane, i);
    f.emu_values[i] = p[detail::at(pos / 16, pos % 16, ldm, layout == mem_row_major)];
  }
}

inline void store_matrix_sync(const emu::Ptr<float>& p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::memory_collective("wmma::store_matrix_sync", p, ldm, layout);
  const int lane = emu::lane_id();
  for (int i = 0; i < kFragmentElements; ++i) {
    const int pos = element_position(lane, i);
    p[detail::at(pos / 16, pos % 16, ldm, layout == mem_row_major)] = f.emu_values[i];
  }
}

// Number of mma_sync calls (per lane) so far: lets tests see which path a kernel took.
inline std::uint64_t emu_mma_count = 0;

// D = A B + C over the warp: every lane contributes its elements of A, B and C and computes its
// elements of D from the whole tiles (D and C may be the same fragment).
template <class T, class La, class Lb>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, La>& a,
              const fragment<matrix_b, 16, 16, 16, T, Lb>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  constexpr const char* op = "wmma::mma_sync";
  if (emu::active_lanes() != 32) {
    emu::fail(std::string(op) + ": WMMA needs all 32 lanes of a warp; this warp has " +
              std::to_string(emu::active_lanes()) + " threads");
  }
  ++emu_mma_count;
  constexpr std::size_t kBytes = sizeof(float) * kFragmentElements;
  const int lane = emu::lane_id();
  emu::Warp& w = emu::tl_block->warps[std::size_t(emu::current_fiber().warp)];
  const int parity = emu::warp_rendezvous(op, [&](emu::Warp& wp, int par) {
    std::vector<unsigned char>& blob = wp.blobs[par][lane];
    blob.resize(3 * kBytes);
    std::memcpy(blob.data(), a.emu_values, kBytes);
    std::memcpy(blob.data() + kBytes, b.emu_values, kBytes);
    std::memcpy(blob.data() + 2 * kBytes, c.emu_values, kBytes);
  });
  float A[256], B[256], C[256];  // row-major tiles: A[row][k], B[k][column], C[row][column]
  for (int j = 0; j < 32; ++j) {
    const std::vector<unsigned char>& blob = w.blobs[parity][j];
    float v[3][kFragmentElements];
    std::memcpy(v, blob.data(), sizeof(v));
    for (int i = 0; i < kFragmentElements; ++i) {
      const int pos = element_position(j, i);
      A[pos] = v[0][i];
      B[pos] = v[1][i];
      C[pos] = v[2][i];
    }
  }
  for (int i = 0; i < kFragmentElements; ++i) {
    const int pos = element_position(lane, i), r = pos / 16, col = pos % 16;
    float acc = C[pos];
    for (int k = 0; k < 16; ++k) acc += A[r * 16 + k] * B[k * 16 + col];
    d.emu_values[i] = acc;
  }
}

}  // namespace wmma
}  // namespace nvcuda
