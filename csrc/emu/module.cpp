// rja_kernels._C_cuda_emu: the CUDA kernels of csrc/cuda (both operators) compiled by the host
// compiler against the emulator (emu.h), for CPU tensors, plus small kernels that test the emulator
// itself. The "cuda" backend (rja_kernels/cuda.py) runs CPU tensors through it when
// RJA_CUDA_EMULATE=1; it is test support, slow by design.
#include <torch/extension.h>

#define RJA_EMULATE
#include "../cuda/host.h"

namespace {

using rja::Ptr;

rja::Config config(int64_t threads, int64_t rows, int64_t cols, int64_t split) {
  return {int(threads), int(rows), int(cols), int(split)};
}

std::vector<at::Tensor> paper_forward(const at::Tensor& xa, const at::Tensor& xv, const std::vector<at::Tensor>& weights,
                                      int64_t iterations, bool h_tanh, bool out_relu, int64_t threads, int64_t rows,
                                      int64_t cols, int64_t split) {
  return rja::paper::forward(xa, xv, weights, iterations, h_tanh, out_relu, config(threads, rows, cols, split));
}

std::vector<at::Tensor> paper_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                       const at::Tensor& xv_iters, const std::vector<at::Tensor>& weights, bool h_tanh,
                                       bool out_relu, int64_t threads, int64_t rows, int64_t cols, int64_t split) {
  return rja::paper::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, h_tanh, out_relu,
                              config(threads, rows, cols, split));
}

std::vector<at::Tensor> jca_forward(const at::Tensor& xa, const at::Tensor& xv, const std::vector<at::Tensor>& weights,
                                    int64_t iterations, int64_t threads, int64_t rows, int64_t cols, int64_t split) {
  return rja::jca::forward(xa, xv, weights, iterations, config(threads, rows, cols, split));
}

std::vector<at::Tensor> jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                     const at::Tensor& xv_iters, const std::vector<at::Tensor>& weights, int64_t threads,
                                     int64_t rows, int64_t cols, int64_t split) {
  return rja::jca::backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, config(threads, rows, cols, split));
}

// --- kernels that test the emulator ---

// Each thread writes out[threadIdx.x]; launched with more threads than out has elements.
__global__ void write_per_thread_kernel(Ptr<float> out) { out[threadIdx.x] = float(threadIdx.x); }

// mode 0: only the first half of the block reaches the barrier; mode 1: the halves wait at
// different barriers.
__global__ void divergent_barrier_kernel(Ptr<float> out, int mode) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  } else if (mode == 1) {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Sum of `in`: warps reduce with __shfl_down_sync, warp totals meet in static shared memory, warp 0
// reduces them with __shfl_xor_sync, block totals meet in `total` through atomicAdd.
__global__ void block_sum_kernel(Ptr<const float> in, int n, Ptr<float> per_block, Ptr<float> total) {
  RJA_STATIC_SHARED(float, warp_sums, 32);
  __shared__ int warps;  // the plain (unchecked) form of static shared memory
  if (threadIdx.x == 0) warps = int(blockDim.x / 32);
  float v = 0.f;
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += int(gridDim.x * blockDim.x)) v += in[i];
  for (unsigned offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? warp_sums[lane] : 0.f;
    for (int mask = 16; mask > 0; mask /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, mask);
    if (lane == 0) {
      per_block[blockIdx.x] = s;
      atomicAdd(&total[0], s);
    }
  }
}

// Blocks of a cooperative grid pass values around a ring through global memory, `rounds` times,
// with rja::Group's barrier across the whole grid: in round r block j writes slots[j] = 100 j + r,
// then reads its neighbour's into out[r, j]. mode 1: the last block never arrives (it exits);
// mode 2: no barrier at all (a race, which the emulator's schedule exposes).
__global__ void ring_exchange_kernel(Ptr<float> slots, Ptr<float> out, Ptr<unsigned> counter, int rounds, int mode) {
  const int n = int(gridDim.x), j = int(blockIdx.x);
  if (mode == 1 && j == n - 1) return;
  rja::Group g{j, n, counter};
  for (int r = 0; r < rounds; ++r) {
    if (threadIdx.x == 0) slots[j] = float(100 * j + r);
    if (mode != 2) g.barrier();  // every slot is written
    if (threadIdx.x == 0) out[r * n + j] = slots[(j + 1) % n];
    if (mode != 2) g.barrier();  // every slot is read before the next round overwrites it
  }
}

template <class K>
__global__ void round_trip_kernel(Ptr<const float> in, Ptr<float> out, int n) {
  RJA_BLOCK_LOOP(i, n) out[i] = rja::to_float(rja::from_float<K>(in[i]));
}

// rja::stage_tile with one block: the tile of src staged into dst (common.cuh).
template <class S, class D>
__global__ void stage_tile_kernel(Ptr<const S> src, int64_t lds, int rows, int cols, Ptr<D> dst, int ldd, int rows_pad,
                                  int cols_pad) {
  rja::stage_tile(src, lds, rows, cols, dst, ldd, rows_pad, cols_pad);
}

// out[0 .. 4) = in[at .. at + 4) by one vector load (16-byte aligned, in bounds, or the emulator fails).
__global__ void vector_load_kernel(Ptr<const float> in, int at, Ptr<float> out) {
  if (threadIdx.x == 0) rja::store_vector(out, rja::load_vector(in + at));
}

// --- kernels that test the emulated WMMA (wmma.h) ---

namespace wmma = nvcuda::wmma;

// out = A B + C of one tile: A, B in layouts La, Lb with leading dimension ld, C column-major and
// out row-major (leading dimension 16).
template <class K, class La, class Lb>
__global__ void wmma_tile_kernel(Ptr<const K> a, Ptr<const K> b, Ptr<const float> c, Ptr<float> out, int ld) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, K, La> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, K, Lb> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a, unsigned(ld));
  wmma::load_matrix_sync(fb, b, unsigned(ld));
  wmma::load_matrix_sync(acc, c, 16, wmma::mem_col_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}

// The kernels' contraction helper on row-major global buffers: out (+)= a b.
template <class K>
__global__ void mma_tiles_kernel(Ptr<const K> a, Ptr<const K> b, Ptr<float> out, int M, int N, int Kd, bool accumulate) {
  rja::mma_tiles<K>(M, N, Kd, a, Kd, b, N, out, N, accumulate);
}

// rja::mma_tiles_f32 (3xTF32) on global buffers: out [M, N] (+)= A B, A [M, Kd] in layout La with
// leading dimension lda, B [Kd, N] in Lb with ldb.
template <class La, class Lb, bool kExactA, bool kExactB>
__global__ void mma_tiles_f32_kernel(Ptr<const float> a, int lda, Ptr<const float> b, int ldb, Ptr<float> out, int M,
                                     int N, int Kd, bool accumulate) {
  rja::mma_tiles_f32<La, Lb, kExactA, kExactB>(M, N, Kd, a, lda, b, ldb, out, N, accumulate);
}

// One m16n16k8 tf32 tile, out = A B, from row-major A [16, 8] and B [8, 16] loaded as they are: with
// convert, their elements go through __float_to_tf32 first, as they must.
__global__ void tf32_tile_kernel(Ptr<const float> a, Ptr<const float> b, Ptr<float> out, bool convert) {
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 0.f);
  wmma::load_matrix_sync(fa, a, 8);
  wmma::load_matrix_sync(fb, b, 16);
  if (convert) {
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
  }
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}

// out = A A + 0 for A = a[0:256] row-major, or a misuse that a GPU would not report cleanly:
// 1 lanes pass different pointers, 2 half the warp calls mma_sync and half store_matrix_sync,
// 3 an ldm that is not a multiple of 8, 4 a pointer off 256-bit alignment, 5 lanes fill the
// accumulator with different values (no error: a mixed tile), 6 a float ldm that is not a multiple
// of 4, 7 half the warp exits before the collectives.
template <class K>
__global__ void wmma_misuse_kernel(Ptr<const K> a, Ptr<float> out, int mode) {
  const int lane = int(threadIdx.x % 32);
  if (mode == 7 && lane >= 16) return;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, K, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, K, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, mode == 5 ? float(lane) : 0.f);
  const Ptr<const K> pa = mode == 1 && lane >= 16 ? a + 256 : mode == 4 ? a + 4 : a;
  wmma::load_matrix_sync(fa, pa, mode == 3 ? 12 : 16);
  wmma::load_matrix_sync(fb, a, 16);
  if (mode != 2 || lane < 16) wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(out, acc, mode == 6 ? 18 : 16, wmma::mem_row_major);
}

template <class T>
Ptr<T> view(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, name, " must be a contiguous float32 tensor");
  return rja::make_ptr(reinterpret_cast<T*>(t.data_ptr()), t.numel(), name);
}

void write_per_thread(const at::Tensor& out, int64_t threads) {
  rja::launch(write_per_thread_kernel, 1, int(threads), 0, view<float>(out, "out"));
}

void divergent_barrier(int64_t mode) {
  const at::Tensor out = at::zeros({64});
  rja::launch(divergent_barrier_kernel, 1, 64, 0, view<float>(out, "out"), int(mode));
}

// Returns (per-block sums, total).
std::vector<at::Tensor> block_sum(const at::Tensor& in, int64_t blocks, int64_t threads) {
  auto per_block = at::zeros({blocks}), total = at::zeros({1});
  rja::launch(block_sum_kernel, int(blocks), int(threads), 0, view<const float>(in, "in"), int(in.numel()),
              view<float>(per_block, "per_block"), view<float>(total, "total"));
  return {per_block, total};
}

// Returns out [rounds, blocks] of ring_exchange_kernel, launched cooperatively (or, to show that
// its barrier needs that, as an ordinary launch).
at::Tensor ring_exchange(int64_t blocks, int64_t threads, int64_t rounds, int64_t mode, bool cooperative) {
  auto slots = at::full({blocks}, NAN), out = at::full({rounds, blocks}, NAN);
  auto counter = at::zeros({1}, at::kInt);
  const auto args = std::make_tuple(view<float>(slots, "slots"), view<float>(out, "out"),
                                    rja::make_ptr(reinterpret_cast<unsigned*>(counter.data_ptr()), 1, "counter"),
                                    int(rounds), int(mode));
  std::apply(
      [&](const auto&... a) {
        if (cooperative) {
          rja::launch_cooperative(ring_exchange_kernel, int(blocks), int(threads), 0, a...);
        } else {
          rja::launch(ring_exchange_kernel, int(blocks), int(threads), 0, a...);
        }
      },
      args);
  return out;
}

// The emulated device of occupancy queries and cooperative launches; returns the previous one.
std::vector<int64_t> set_device(int64_t sm_count, int64_t max_blocks_per_sm) {
  emu::Device& dev = emu::device();
  const std::vector<int64_t> previous{dev.sm_count, dev.max_blocks_per_sm};
  dev.sm_count = int(sm_count);
  dev.max_blocks_per_sm = int(max_blocks_per_sm);
  return previous;
}

// float32 -> dtype -> float32 through the emulator's 16-bit types.
at::Tensor round_trip(const at::Tensor& in, at::ScalarType dtype) {
  auto out = at::empty_like(in);
  rja::dispatch_element(dtype, [&](auto tag) {
    using K = decltype(tag);
    rja::launch(round_trip_kernel<K>, 1, 64, 0, view<const float>(in, "in"), view<float>(out, "out"), int(in.numel()));
  });
  return out;
}

template <class K>
Ptr<K> view16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16), name,
              " must be a contiguous float16 or bfloat16 tensor");
  return rja::make_ptr(reinterpret_cast<K*>(t.data_ptr()), t.numel(), name);
}

// Runs f with the emulated 16-bit type of `dtype` (float16 or bfloat16).
template <class F>
void dispatch_16_bit(at::ScalarType dtype, F&& f) {
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "expected float16 or bfloat16, got ", dtype);
  if (dtype == at::kHalf) {
    f(__half{});
  } else {
    f(__nv_bfloat16{});
  }
}

// One WMMA tile, out [16, 16] = A B + C, from buffers holding A and B in the given layouts with
// leading dimension ld and C column-major.
at::Tensor wmma_tile(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool a_col_major,
                     bool b_col_major, int64_t ld) {
  auto out = at::empty({16, 16});
  dispatch_16_bit(a.scalar_type(), [&](auto tag) {
    using K = decltype(tag);
    const auto run = [&](auto* la, auto* lb) {
      using La = std::remove_pointer_t<decltype(la)>;
      using Lb = std::remove_pointer_t<decltype(lb)>;
      rja::launch(wmma_tile_kernel<K, La, Lb>, 1, 32, 0, view16<const K>(a, "a"), view16<const K>(b, "b"),
                  view<const float>(c, "c"), view<float>(out, "out"), int(ld));
    };
    wmma::row_major* row = nullptr;
    wmma::col_major* col = nullptr;
    if (a_col_major) {
      b_col_major ? run(col, col) : run(col, row);
    } else {
      b_col_major ? run(row, col) : run(row, row);
    }
  });
  return out;
}

// rja::mma_tiles: out [M, N] (+)= a [M, Kd] b [Kd, N] with `threads` threads.
void mma_tiles(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate, int64_t threads) {
  dispatch_16_bit(a.scalar_type(), [&](auto tag) {
    using K = decltype(tag);
    rja::launch(mma_tiles_kernel<K>, 1, int(threads), 0, view16<const K>(a, "a"), view16<const K>(b, "b"),
                view<float>(out, "out"), int(a.size(0)), int(b.size(1)), int(a.size(1)), accumulate);
  });
}

// rja::mma_tiles_f32: out [M, N] (+)= a [M, Kd] b [Kd, N] with `threads` threads, each operand
// passed to it row- or column-major, exact_a / exact_b: the operand's kExact flag.
void mma_tiles_f32(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate, int64_t threads,
                   bool a_col_major, bool b_col_major, bool exact_a, bool exact_b) {
  const int M = int(a.size(0)), Kd = int(a.size(1)), N = int(b.size(1));
  const at::Tensor a_mem = a_col_major ? a.t().contiguous() : a.contiguous();
  const at::Tensor b_mem = b_col_major ? b.t().contiguous() : b.contiguous();
  const auto run = [&](auto kernel) {
    rja::launch(kernel, 1, int(threads), 0, view<const float>(a_mem, "a"), a_col_major ? M : Kd,
                view<const float>(b_mem, "b"), b_col_major ? Kd : N, view<float>(out, "out"), M, N, Kd, accumulate);
  };
  using Row = wmma::row_major;
  using Col = wmma::col_major;
  TORCH_CHECK(!(exact_a && exact_b), "mma_tiles_f32: at most one operand marked exact");
  if (exact_a || exact_b) {
    TORCH_CHECK(!a_col_major && !b_col_major, "mma_tiles_f32: exact operands are tested row-major");
    exact_a ? run(mma_tiles_f32_kernel<Row, Row, true, false>) : run(mma_tiles_f32_kernel<Row, Row, false, true>);
  } else if (a_col_major) {
    b_col_major ? run(mma_tiles_f32_kernel<Col, Col, false, false>) : run(mma_tiles_f32_kernel<Col, Row, false, false>);
  } else {
    b_col_major ? run(mma_tiles_f32_kernel<Row, Col, false, false>) : run(mma_tiles_f32_kernel<Row, Row, false, false>);
  }
}

at::Tensor tf32_tile(const at::Tensor& a, const at::Tensor& b, bool convert) {
  auto out = at::zeros({16, 16});
  rja::launch(tf32_tile_kernel, 1, 32, 0, view<const float>(a, "a"), view<const float>(b, "b"), view<float>(out, "out"),
              convert);
  return out;
}

at::Tensor float_to_tf32(const at::Tensor& in) {
  auto out = at::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < in.numel(); ++i) dst[i] = wmma::__float_to_tf32(src[i]);
  return out;
}

at::Tensor wmma_misuse(const at::Tensor& a, int64_t mode, int64_t threads) {
  auto out = at::zeros({16, 16});
  dispatch_16_bit(a.scalar_type(), [&](auto tag) {
    using K = decltype(tag);
    rja::launch(wmma_misuse_kernel<K>, 1, int(threads), 0, view16<const K>(a, "a"), view<float>(out, "out"), int(mode));
  });
  return out;
}

// Any element type's buffer, for the staging tests.
template <class T>
Ptr<T> view_any(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  return rja::make_ptr(reinterpret_cast<T*>(t.data_ptr()), t.numel(), name);
}

// rja::stage_tile from src[src_at ...] into dst[dst_at ...], flat buffers of float32, float16 or
// bfloat16, with `threads` threads.
void stage_tile(const at::Tensor& src, int64_t src_at, int64_t lds, int64_t rows, int64_t cols, const at::Tensor& dst,
                int64_t dst_at, int64_t ldd, int64_t rows_pad, int64_t cols_pad, int64_t threads) {
  rja::dispatch_element(src.scalar_type(), [&](auto src_tag) {
    rja::dispatch_element(dst.scalar_type(), [&](auto dst_tag) {
      using S = decltype(src_tag);
      using D = decltype(dst_tag);
      rja::launch(stage_tile_kernel<S, D>, 1, int(threads), 0, view_any<const S>(src, "src") + src_at, lds, int(rows),
                  int(cols), view_any<D>(dst, "dst") + dst_at, int(ldd), int(rows_pad), int(cols_pad));
    });
  });
}

at::Tensor vector_load(const at::Tensor& in, int64_t at) {
  auto out = at::zeros({4});
  rja::launch(vector_load_kernel, 1, 32, 0, view<const float>(in, "in"), int(at), view<float>(out, "out"));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The rja CUDA kernels executed on CPU by the host CUDA emulator (test support).";
  m.def("paper_forward", &paper_forward, "emulated rja::cuda_paper_forward on CPU tensors");
  m.def("paper_backward", &paper_backward, "emulated rja::cuda_paper_backward on CPU tensors");
  m.def("jca_forward", &jca_forward, "emulated rja::cuda_jca_forward on CPU tensors");
  m.def("jca_backward", &jca_backward, "emulated rja::cuda_jca_backward on CPU tensors");
  m.def("max_shared_bytes", &rja::max_shared_bytes);
  m.def("choose_split", &rja::choose_split, "thread blocks per sample of either form (host.h)");
  m.def("split_workspace_floats", &rja::split_workspace_floats,
        "floats of the split's partial sums for (B, S, L, d, sums per block) (host.h)");
  m.def("set_device", &set_device, "set the emulated device (SM count, blocks per SM); returns the previous");
  m.def("blocks_per_sm", [](int64_t threads, int64_t shared_bytes) {
    return emu::max_active_blocks_per_sm(int(threads), std::size_t(shared_bytes));
  });
  m.def("ring_exchange", &ring_exchange);
  m.def("write_per_thread", &write_per_thread);
  m.def("divergent_barrier", &divergent_barrier);
  m.def("block_sum", &block_sum);
  m.def("round_trip", &round_trip);
  m.def("wmma_tile", &wmma_tile);
  m.def("mma_tiles", &mma_tiles);
  m.def("wmma_misuse", &wmma_misuse);
  m.def("mma_tiles_f32", &mma_tiles_f32);
  m.def("tf32_tile", &tf32_tile);
  m.def("float_to_tf32", &float_to_tf32, "the emulator's wmma::__float_to_tf32, element-wise");
  m.def("stage_tile", &stage_tile);
  m.def("vector_load", &vector_load);
  m.def("vector_access_count", [] { return emu::vector_access_count; },
        "16-byte loads and stores (per thread) so far");
  m.def("wmma_mma_count", [] { return nvcuda::wmma::emu_mma_count; }, "mma_sync calls (per lane) so far");
}
