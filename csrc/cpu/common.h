// What the CPU kernels of both operators share: threading (dynamic work distribution with the
// floating-point environment of the kernel), aligned buffers, packing, and a cache-blocked
// parallel GEMM for the contractions that run over the whole batch at once.
#pragma once

#include "vec_math.h"

// torch's headers are not clean under this extension's -Wextra -Werror.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define RJA_HAVE_MXCSR 1
#endif

namespace rja_cpu {

// ---- floating-point environment -----------------------------------------------------------------

// Flush-to-zero and denormals-are-zero (MXCSR bits 15 and 6) for the lifetime of the guard, on the
// thread that creates it; the thread's previous MXCSR comes back in the destructor. A subnormal
// operand or result costs a microcode assist of ~100 cycles per instruction: with subnormal
// features the kernels ran ~16x slower. Every thread of a kernel (the caller's and each
// intra-op worker, see parallel_tasks) runs under one, so the kernel sees no subnormals and the
// caller's environment is unchanged afterwards.
class FlushDenormals {
 public:
#if defined(RJA_HAVE_MXCSR)
  static constexpr unsigned kBits = 0x8040;
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kBits); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#else
  FlushDenormals() = default;
#endif
 public:
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
};

// The calling thread's MXCSR (0 where there is none): a test hook.
inline int64_t current_mxcsr() {
#if defined(RJA_HAVE_MXCSR)
  return _mm_getcsr();
#else
  return 0;
#endif
}

// ---- threading ----------------------------------------------------------------------------------

// Least work (multiply-adds) worth waking another thread for: small problems
// run on one thread, as a barrier costs more than their work, above all on a loaded machine.
constexpr int64_t kMinParallelWork = int64_t(1) << 20;

// Work of copying one element from memory, in multiply-adds: a copy streams from RAM or L3 where a
// GEMM's multiply-add works from registers and L1.
constexpr int64_t kCopyWork = 16;

// Runs task(i) for i = 0, 1, ..., n-1 on up to `workers` intra-op threads, each under
// FlushDenormals. Tasks go to whichever thread is free: a static split would wait for a thread
// that another process slows down, the usual case on a shared machine. Callers make results
// independent of which thread runs which task (the cut into tasks depends on the shapes only).
// make_state() builds per-thread scratch once per thread; task(i, state). `work` (multiply-adds in
// all; callers count element copies as one each, or kCopyWork each where memory speed rules) sets
// how many threads are worth waking.
template <typename MakeState, typename Task>
void parallel_tasks(int64_t n, int64_t work, const MakeState& make_state, const Task& task) {
  if (n <= 0) return;
  const int64_t workers = std::clamp<int64_t>(work / kMinParallelWork, 1, n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const FlushDenormals ftz;
    auto state = make_state();
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) task(i, state);
  });
}

struct NoState {};

// parallel_tasks without per-thread state.
template <typename Task>
void parallel_tasks(int64_t n, int64_t work, const Task& task) {
  parallel_tasks(n, work, [] { return NoState{}; }, [&](int64_t i, NoState&) { task(i); });
}

// ---- buffers ------------------------------------------------------------------------------------

// An array aligned to a cache line (vector loads never straddle two lines), zero-initialised
// unless the caller overwrites all of it anyway (zero = false).
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n, bool zero = true) { reset(n, zero); }
  void reset(int64_t n, bool zero = true) {
    n_ = n;
    const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 1) * sizeof(T), 64));
    ptr_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!ptr_) throw std::bad_alloc();
    if (zero) std::memset(ptr_.get(), 0, bytes);
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  T& operator[](int64_t i) { return ptr_.get()[i]; }
  const T& operator[](int64_t i) const { return ptr_.get()[i]; }
  int64_t size() const { return n_; }
  void zero() { std::fill(data(), data() + n_, T(0)); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t n_ = 0;
};

// ---- elementwise helpers ------------------------------------------------------------------------

// acc[i] += x[i] for i < n (n a multiple of the vector width)
template <typename T>
void add_to(T* acc, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes<T>) (Vec<T>::loadu(acc + i) + Vec<T>::loadu(x + i)).store(acc + i);
}

// dst[r*ldd + c] = src[r*ld + c] for r < rows, c < cols.
template <typename T>
void copy_block(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * ld, src + r * ld + cols, dst + r * ldd);
}

// dst[r][c] = src[r*ld + c] for r < rows, c < cols; zero for cols <= c < ldd.
template <typename T>
void copy_padded(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(std::copy(src + r * ld, src + r * ld + cols, dst + r * ldd), dst + (r + 1) * ldd, T(0));
  }
}

// dst[c][r] = src[r*ld + c] for r < rows, c < cols; zero for rows <= r < ldd.
template <typename T>
void transpose_padded(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  constexpr int64_t kBlock = 16;  // blocks that stay in L1 on both sides
  for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
      for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) {
        for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r) dst[c * ldd + r] = src[r * ld + c];
      }
    }
    for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) std::fill(dst + c * ldd + rows, dst + (c + 1) * ldd, T(0));
  }
}

// ---- the batch GEMM -----------------------------------------------------------------------------

// Columns of a packed panel block: the widest micro-kernel tile.
template <typename T>
constexpr int64_t kPanelCols = kMaxNr * kLanes<T>;

// A right-hand operand B[k, n] of batch_gemm, `ld` columns (a multiple of the vector width; the
// columns written to the output), either row-major (element (k, n) at data[k*ld + n]) or, with
// `block` > 0, packed in column blocks of kPanelCols: (k, n) at data[(n / kPanelCols) * block +
// k * kPanelCols + n % kPanelCols]. Packed, the kBlockK x kPanelCols slice a micro-kernel streams
// is contiguous and stays in L1; rows of a row-major matrix 2 or 4 KiB apart compete for a few L1
// sets, but the micro-kernel's B loads then come from L2 at little cost (see PackedWeight).
template <typename T>
struct Panel {
  const T* data;
  int64_t ld;
  int64_t block = 0;
};

// w (rows x cols, row-major), or w^T when `transpose`, as a Panel of max(ld_min, columns rounded
// to the vector width) columns, zero beyond the matrix: packed, except where w's own rows already
// are that Panel (not transposed, whole vectors, no padding asked for). In place, a 1024 x 512
// float32 batch_gemm (paper size) ran as fast as on a packed copy made once, and faster than
// packing per call (the forward spent 2.3 ms of ~95 packing w_c and w_h); at 1024 columns (4 KiB
// rows) 5% slower than a copy made once, and as fast as packing per call.
template <typename T>
class PackedWeight {
 public:
  void pack(const T* w, int64_t rows, int64_t cols, bool transpose, int64_t ld_min = 0) {
    constexpr int64_t NB = kPanelCols<T>;
    const int64_t k = transpose ? cols : rows, n = transpose ? rows : cols;
    ld_ = std::max(round_up(n, kLanes<T>), ld_min);
    if (!transpose && ld_ == cols) {
      in_place_ = w;
      block_ = 0;
      return;
    }
    in_place_ = nullptr;
    block_ = k * NB;
    const int64_t blocks = (ld_ + NB - 1) / NB;
    buf_.reset(blocks * block_, false);  // every element written below
    // Slices of kk in parallel: the copy runs at memory speed (a cold 2 MiB w_h took 1 ms on one
    // thread, 5% of the paper-size forward for both modalities and iterations).
    constexpr int64_t kSlice = 64;
    parallel_tasks((k + kSlice - 1) / kSlice, k * ld_ * kCopyWork, [&](int64_t task) {
      const int64_t k0 = task * kSlice, k1 = std::min(k, k0 + kSlice);
      for (int64_t cb = 0; cb < blocks; ++cb) {
        T* dst = buf_.data() + cb * block_;
        const int64_t c0 = cb * NB, nc = std::clamp<int64_t>(n - c0, 0, NB);
        if (transpose) {  // rows of w in order; their elements land NB apart, in one L1-sized block
          for (int64_t c = 0; c < nc; ++c) {
            for (int64_t kk = k0; kk < k1; ++kk) dst[kk * NB + c] = w[(c0 + c) * cols + kk];
          }
        } else {
          for (int64_t kk = k0; kk < k1; ++kk) std::copy(w + kk * cols + c0, w + kk * cols + c0 + nc, dst + kk * NB);
        }
        for (int64_t kk = k0; kk < k1; ++kk) std::fill(dst + kk * NB + nc, dst + (kk + 1) * NB, T(0));
      }
    });
  }
  Panel<T> panel() const { return {in_place_ ? in_place_ : buf_.data(), ld_, block_}; }

 private:
  Buffer<T> buf_;
  const T* in_place_ = nullptr;  // w itself, where it needs no packing
  int64_t ld_ = 0, block_ = 0;
};

// out[i, 0:B.ld] (+)= sum_k A(i, k) B[k, :] for i < M, over K, with A(i, k) = a[i*a_i + k*a_k]:
// the products that run over every sample at once (features times weights, and the weight
// gradients, which sum over samples), so each block of B is reused by many rows. Tasks own
// [kBlockM x block_n] output blocks; each runs K in slices of kBlockK (a B slice of kBlockK rows
// and kPanelCols columns stays in L1 while the rows of A pass). Each output element is summed in
// the order k = 0, 1, ..., K-1 whatever the thread count: the result is the same bits on any.
// `epi` transforms the final sums (it runs on the last K slice).
template <typename T, typename Epi = NoEpilogue>
void batch_gemm(int64_t M, int64_t K, const T* a, int64_t a_i, int64_t a_k, const Panel<T>& b, T* out,
                int64_t ld, bool accumulate, const Epi& epi = Epi()) {
  constexpr int64_t V = kLanes<T>, NB = kPanelCols<T>;
  // 96 rows x 256 float32 columns per task, K in slices of 128 (float64: 128 columns, 64 deep):
  // the best of the blockings tried at the paper's size.
  constexpr int64_t kBlockM = 96, kBlockK = 512 / static_cast<int64_t>(sizeof(T));
  constexpr int64_t block_n = 1024 / static_cast<int64_t>(sizeof(T));  // a multiple of kPanelCols
  const int64_t mb = (M + kBlockM - 1) / kBlockM, nb = (b.ld + block_n - 1) / block_n;
  parallel_tasks(mb * nb, M * K * b.ld, [&](int64_t task) {
    const int64_t i0 = task / nb * kBlockM, j0 = task % nb * block_n;
    const int64_t rows = std::min(kBlockM, M - i0), j1 = std::min(b.ld, j0 + block_n);
    int64_t k0 = 0;
    do {
      const int64_t kc = std::min(kBlockK, K - k0);
      for (int64_t j = j0; j < j1; j += NB) {
        const T* bj = b.block ? b.data + j / NB * b.block + k0 * NB : b.data + k0 * b.ld + j;
        const auto call = [&](const auto& e) {
          gemm<T>(rows, std::min(NB, j1 - j) / V, kc, a + i0 * a_i + k0 * a_k, a_i, a_k, bj, b.block ? NB : b.ld,
                  out + i0 * ld + j, ld, accumulate || k0 > 0, e);
        };
        if (k0 + kBlockK >= K) {
          call(epi);
        } else {
          call(NoEpilogue{});
        }
      }
      k0 += kBlockK;
    } while (k0 < K);
  });
}

}  // namespace rja_cpu
