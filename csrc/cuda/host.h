// Host side of the kernels of both operators, shared by the CUDA extension (rja_cuda.cu) and the
// emulated build (csrc/emu/module.cpp): argument checks, output allocation, shared memory sizing,
// the thread blocks per sample (the split, both forms), launch, and the weight-gradient reductions.
// Include after the torch headers: the emulated build's CUDA names are macros.
#pragma once

#include <ATen/Context.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "jca.cuh"
#include "paper.cuh"

#ifndef RJA_EMULATE
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace rja {

// Launch shape: threads per block, rows of x^T and joint features per tile, and thread blocks per
// sample of both forms' forward and backward (0: choose_split decides).
struct Config {
  int threads = 256, rows = 32, cols = 64, split = 0;
};

#ifdef RJA_EMULATE
inline std::size_t max_shared_bytes() { return emu::kMaxSharedBytes; }
inline bool device_has_wmma() { return true; }
inline int sm_count() { return emu::device().sm_count; }

template <class... KArgs>
int blocks_per_sm(void (*)(KArgs...), int threads, std::size_t shared_bytes) {
  return emu::max_active_blocks_per_sm(threads, shared_bytes);
}

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), int grid, int block, std::size_t shared_bytes, Args&&... args) {
  emu::launch(kernel, emu::dim3(unsigned(grid)), emu::dim3(unsigned(block)), shared_bytes, std::forward<Args>(args)...);
}

template <class... KArgs, class... Args>
void launch_cooperative(void (*kernel)(KArgs...), int grid, int block, std::size_t shared_bytes, Args&&... args) {
  emu::launch_cooperative(kernel, emu::dim3(unsigned(grid)), emu::dim3(unsigned(block)), shared_bytes,
                          std::forward<Args>(args)...);
}
#else
inline std::size_t max_shared_bytes() {
  int device = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return std::size_t(bytes);
}

inline bool device_has_wmma() {
  int device = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

inline int sm_count() {
  int device = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// Blocks of `kernel` one SM holds at once (with the dynamic shared memory limit it launches with).
template <class... KArgs>
int blocks_per_sm(void (*kernel)(KArgs...), int threads, std::size_t shared_bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, shared_bytes));
  return n;
}

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), int grid, int block, std::size_t shared_bytes, Args&&... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  kernel<<<grid, block, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A launch whose blocks are all resident at once (the runtime refuses a grid that cannot be), as a
// barrier across blocks needs.
template <class... KArgs, class... Args>
void launch_cooperative(void (*kernel)(KArgs...), int grid, int block, std::size_t shared_bytes, Args&&... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  std::apply(
      [&](auto&... p) {
        void* pointers[] = {static_cast<void*>(&p)...};
        C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(grid)),
                                                   dim3(unsigned(block)), pointers, shared_bytes,
                                                   c10::cuda::getCurrentCUDAStream()));
      },
      params);
}
#endif

// RJA_CUDA_SPLIT=S forces S thread blocks per sample of both forms over Config::split and
// choose_split (unset or 0: those decide), to compare launch shapes on a device.
inline int split_from_env() {
  const char* v = std::getenv("RJA_CUDA_SPLIT");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long split = std::strtol(v, &end, 10);
  // Bounded so that the int conversion holds; split_for refuses an S the device cannot hold.
  TORCH_CHECK(*end == '\0' && split >= 0 && split <= 1 << 20,
              "rja cuda: RJA_CUDA_SPLIT must be a non-negative integer, got '", v, "'");
  return int(split);
}

// Thread blocks per sample for a batch of B: the fewest that give every SM a block, ceil(sm_count
// / B) (more would add barrier waits and partial sums, not SMs), at most one per unit of work they
// share (`units`: the paper form's column tiles, the JCA form's row tiles) and at most what the
// resident blocks (sm_count x per_sm) allow for all B samples at once, rounded down: all B x S
// blocks must be resident together. 1 where B alone fills the device.
inline int choose_split(std::int64_t B, int sm_count, int per_sm, int units) {
  if (B <= 0) return 1;
  const std::int64_t occupy = (std::int64_t(sm_count) + B - 1) / B;
  const std::int64_t fit = std::int64_t(sm_count) * per_sm / B;
  return int(std::max<std::int64_t>(1, std::min<std::int64_t>({occupy, fit, std::int64_t(units)})));
}

// Floats of the split's workspace for S > 1 blocks per sample (0 for S = 1), [B, sums, S, L, d]:
// `sums` partial sums [L, d] per block. The paper forward's U (1), the paper backward's U and then
// gQ in one, and gP (2; paper.cuh); the JCA backward's dJ, one per iteration parity (2; jca.cuh).
// The JCA forward needs none.
inline std::int64_t split_workspace_floats(std::int64_t B, std::int64_t S, std::int64_t L, std::int64_t d, int sums) {
  return S > 1 ? sums * B * S * L * d : 0;
}

// Thread blocks per sample for `kernel` (`pass` names it in errors): RJA_CUDA_SPLIT's, cfg.split,
// or choose_split's for the device and the `units` of work the blocks share; all B * split blocks
// must be resident at once.
template <class... KArgs>
int split_for(void (*kernel)(KArgs...), int64_t B, int units, std::size_t smem, const Config& cfg, const char* pass) {
  const int per_sm = blocks_per_sm(kernel, cfg.threads, smem), sms = sm_count();
  const int from_env = split_from_env(), forced = from_env > 0 ? from_env : cfg.split;
  const int split = forced > 0 ? forced : choose_split(B, sms, per_sm, units);
  TORCH_CHECK(split == 1 || B * split <= int64_t(sms) * per_sm, "rja cuda ", pass, ": split=", split,
              " needs B * split = ", B * split, " resident blocks; the device holds ", sms, " SMs x ", per_sm, " = ",
              int64_t(sms) * per_sm);
  return split;
}

// B blocks in an ordinary launch for one block per sample, else B * split blocks in a cooperative
// one (all resident, as the barriers across a sample's blocks need).
template <class... KArgs, class... Args>
void launch_split(void (*kernel)(KArgs...), int64_t B, int split, int block, std::size_t shared_bytes,
                  Args&&... args) {
  if (split == 1) {
    launch(kernel, int(B), block, shared_bytes, std::forward<Args>(args)...);
  } else {
    launch_cooperative(kernel, int(B * split), block, shared_bytes, std::forward<Args>(args)...);
  }
}

// Runs f with a value of the kernel element type of `dtype`.
template <class F>
void dispatch_element(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "rja cuda kernels support float32, float16 and bfloat16, got ", dtype);
  }
}

template <class T>
Ptr<T> ptr(const at::Tensor& t, const char* name) {
  return make_ptr(reinterpret_cast<T*>(t.data_ptr()), t.numel(), name);
}

inline Dims dims_of(int64_t B, int64_t L, int64_t da, int64_t dv, int64_t k, int64_t T, int64_t Tw, const Config& cfg,
                    bool h_tanh = false, bool out_relu = false) {
  TORCH_CHECK(cfg.threads >= 32 && cfg.threads <= 1024 && cfg.rows >= 1 && cfg.cols >= 1,
              "rja cuda: bad launch config: threads=", cfg.threads, " rows=", cfg.rows, " cols=", cfg.cols);
  TORCH_CHECK(cfg.split >= 0, "rja cuda: split must be >= 0 (0: chosen for the device), got ", cfg.split);
  return Dims{int(B), int(L), int(da), int(dv), int(k), int(T), int(Tw), cfg.rows, cfg.cols,
              float(1.0 / std::sqrt(double(da + dv))), h_tanh, out_relu, Products::cuda_cores, 1};
}

inline std::size_t shared_bytes_checked(std::int64_t floats, const Dims& s, bool backward, const char* form) {
  const std::size_t bytes = std::size_t(floats) * sizeof(float);
  TORCH_CHECK(bytes <= max_shared_bytes(), "rja cuda ", form, " ", backward ? "backward" : "forward", " needs ", bytes,
              " bytes of shared memory per block for L=", s.L, ", k=", s.k, " (tiles of ", s.R, " rows, ", s.E,
              " features); the device allows ", max_shared_bytes());
  return bytes;
}

inline void check_weights(const at::Tensor& xa, at::TensorList w, std::size_t count) {
  TORCH_CHECK(w.size() == count, "rja cuda: expected ", count, " weights, got ", w.size());
  for (const auto& t : w) {
    TORCH_CHECK(t.is_contiguous() && t.dtype() == xa.dtype() && t.device() == xa.device() && t.dim() == 3,
                "rja cuda: weights must be contiguous 3-D tensors of xa's dtype and device");
  }
}

// Features, output gradients and saved features: contiguous, `dim`-D, of `like`'s dtype and device.
inline void check_features(const at::Tensor& like, std::initializer_list<const at::Tensor*> ts, int dim) {
  for (const auto* t : ts) {
    TORCH_CHECK(t->is_contiguous() && t->dim() == dim && t->dtype() == like.dtype() && t->device() == like.device(),
                "rja cuda: features, gradients and saved features must be contiguous ", dim,
                "-D tensors of one dtype and device");
  }
}

// RJA_CUDA_TENSOR_CORES=0 keeps every pass of both forms on CUDA cores (unset or 1: with_tensor_cores
// decides), to compare the two on a device.
inline bool tensor_cores_allowed_by_env() {
  const char* v = std::getenv("RJA_CUDA_TENSOR_CORES");
  if (v == nullptr || *v == '\0') return true;
  const std::string value(v);
  TORCH_CHECK(value == "0" || value == "1", "rja cuda: RJA_CUDA_TENSOR_CORES must be 0 or 1, got '", value, "'");
  return value == "1";
}

// The tensor-core paths of both forms (paper.cuh, jca.cuh) take tiles of multiples of 16 on a
// device with bfloat16 and tf32 WMMA (sm_80+), unless RJA_CUDA_TENSOR_CORES=0: a 16-bit forward's
// products have 16-bit operands (m16n16k16) and a 16-bit backward's are 3xTF32 on float32 tiles
// (m16n16k8). float32 follows torch's matmul setting, as cuBLAS and the Triton kernels do: exact
// float32 products on CUDA cores by default, 3xTF32 both ways where the user allowed TF32
// (torch.backends.cuda.matmul.allow_tf32, or set_float32_matmul_precision("high")): 3xTF32 is
// far closer to float32 than the TF32 allowed, yet its operand splits leave about 2^-22 |a b| per
// product where float32's own FMAs leave none, which at d = 1024 puts the float32 backward past
// twice the reference's own error (README, Results). Other tiles run on CUDA cores, and so does a
// pass whose tensor-core layout (Layout: the form's SmemLayout, padded to multiples of 16) would
// not fit the device's shared memory where the CUDA-core one, which pads less, may.
template <class Layout>
inline Dims with_tensor_cores(Dims s, at::ScalarType dtype, bool backward) {
  s.products = Products::cuda_cores;
  if (s.R % 16 != 0 || s.E % 16 != 0 || !device_has_wmma() || !tensor_cores_allowed_by_env()) return s;
  if (dtype == at::kFloat && !at::globalContext().allowTF32CuBLAS()) return s;
  s.products = backward || dtype == at::kFloat ? Products::tf32x3 : Products::wmma_16_bit;
  if (std::size_t(Layout(s, backward).total) * sizeof(float) > max_shared_bytes()) s.products = Products::cuda_cores;
  return s;
}

// ---- the JCA form (jca.cuh) ---------------------------------------------------------------------

namespace jca {

// forward(xa, xv, weights, T) -> (xa_out, xv_out, xa_iters [T, B, L, da], xv_iters [T, B, L, dv])
inline std::vector<at::Tensor> forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList w,
                                       int64_t iterations, const Config& cfg) {
  check_features(xa, {&xa, &xv}, 3);
  check_weights(xa, w, 8);
  const int64_t B = xa.size(0), L = xa.size(1), da = xa.size(2), dv = xv.size(2);
  Dims s = with_tensor_cores<SmemLayout>(dims_of(B, L, da, dv, w[2].size(1), iterations, w[2].size(0), cfg),
                                         xa.scalar_type(), false);
  auto xa_iters = at::empty({iterations, B, L, da}, xa.options());
  auto xv_iters = at::empty({iterations, B, L, dv}, xv.options());
  auto xa_out = at::empty_like(xa), xv_out = at::empty_like(xv);
  if (B == 0) return {xa_out, xv_out, xa_iters, xv_iters};  // a zero-sized grid is a launch error
  const std::size_t smem = shared_bytes_checked(SmemLayout(s, false).total, s, false, "jca");
  dispatch_element(xa.scalar_type(), [&](auto tag) {
    using K = decltype(tag);
    s.split = split_for(forward_kernel<K>, B, row_tiles(s), smem, cfg, "jca forward");
    at::Tensor counters;  // the split's workspace: its forward needs no partial sums
    if (s.split > 1) counters = at::zeros({B}, xa.options().dtype(at::kInt));
#ifdef RJA_EMULATE
    xa_iters.fill_(NAN);  // a read of an iteration's features before they are written shows up as NaN
    xv_iters.fill_(NAN);
#endif
    ForwardArgs<K> a;
    a.xa = ptr<const K>(xa, "xa");
    a.xv = ptr<const K>(xv, "xv");
    static const char* const names[8] = {"w_ja", "w_jv", "w_a", "w_v", "w_ca", "w_cv", "w_ha", "w_hv"};
    for (int i = 0; i < 8; ++i) a.w[i] = ptr<const K>(w[i], names[i]);
    a.xa_iters = ptr<K>(xa_iters, "xa_iters");
    a.xv_iters = ptr<K>(xv_iters, "xv_iters");
    a.xa_out = ptr<K>(xa_out, "xa_out");
    a.xv_out = ptr<K>(xv_out, "xv_out");
    if (s.split > 1) a.counters = ptr<unsigned>(counters, "counters");
    a.s = s;
    launch_split(forward_kernel<K>, B, s.split, cfg.threads, smem, a);
  });
  return {xa_out, xv_out, xa_iters, xv_iters};
}

// backward(grad_xa, grad_xv, xa_iters, xv_iters, weights) -> grads of (xa, xv, *weights)
inline std::vector<at::Tensor> backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                        const at::Tensor& xv_iters, at::TensorList w, const Config& cfg) {
  check_features(xa_iters, {&grad_xa, &grad_xv}, 3);
  check_features(xa_iters, {&xa_iters, &xv_iters}, 4);
  check_weights(xa_iters, w, 8);
  const int64_t T = xa_iters.size(0), B = xa_iters.size(1), L = xa_iters.size(2), da = xa_iters.size(3);
  const int64_t dv = xv_iters.size(3), Tw = w[2].size(0);
  Dims s =
      with_tensor_cores<SmemLayout>(dims_of(B, L, da, dv, w[2].size(1), T, Tw, cfg), xa_iters.scalar_type(), true);
  auto grad_xa_in = at::empty_like(grad_xa), grad_xv_in = at::empty_like(grad_xv);
  const auto f32 = grad_xa.options().dtype(at::kFloat);
  // Per-block partials [B * S, Tw, ...], reduced below by a deterministic sum over the blocks and
  // the batch: no atomics, so the weight gradients are bitwise reproducible, and the partials cost
  // O(B * S * weights) memory only.
  std::vector<at::Tensor> partials;
  const auto allocate_partials = [&](int64_t blocks) {
    for (const auto& t : w) {
      std::vector<int64_t> shape{blocks};
      shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
      partials.push_back(at::empty(shape, f32));
    }
  };
  if (B == 0) {
    allocate_partials(0);
  } else {
    const std::size_t smem = shared_bytes_checked(SmemLayout(s, true).total, s, true, "jca");
    auto work = at::empty({B, Workspace::floats(s)}, f32);
    dispatch_element(xa_iters.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      s.split = split_for(backward_kernel<K>, B, row_tiles(s), smem, cfg, "jca backward");
      allocate_partials(B * s.split);
      at::Tensor dJ, counters;  // the split's workspace
      if (s.split > 1) {
        dJ = at::empty({split_workspace_floats(B, s.split, L, da + dv, 2)}, f32);
        counters = at::zeros({B}, grad_xa.options().dtype(at::kInt));
      }
#ifdef RJA_EMULATE
      for (at::Tensor* buf : {&work, &dJ}) {  // reads before writes show up as NaN
        if (buf->defined()) buf->fill_(NAN);
      }
      for (at::Tensor& p : partials) p.fill_(NAN);
#endif
      BackwardArgs<K> a;
      a.grad_xa = ptr<const K>(grad_xa, "grad_xa");
      a.grad_xv = ptr<const K>(grad_xv, "grad_xv");
      a.xa_iters = ptr<const K>(xa_iters, "xa_iters");
      a.xv_iters = ptr<const K>(xv_iters, "xv_iters");
      static const char* const names[8] = {"w_ja", "w_jv", "w_a", "w_v", "w_ca", "w_cv", "w_ha", "w_hv"};
      static const char* const grad_names[8] = {"grad_w_ja", "grad_w_jv", "grad_w_a",  "grad_w_v",
                                                "grad_w_ca", "grad_w_cv", "grad_w_ha", "grad_w_hv"};
      for (int i = 0; i < 8; ++i) {
        a.w[i] = ptr<const K>(w[i], names[i]);
        a.grad_w[i] = ptr<float>(partials[i], grad_names[i]);
      }
      a.grad_xa_in = ptr<K>(grad_xa_in, "grad_xa_in");
      a.grad_xv_in = ptr<K>(grad_xv_in, "grad_xv_in");
      a.work = ptr<float>(work, "work");
      if (s.split > 1) {
        a.partials = ptr<float>(dJ, "partials");
        a.counters = ptr<unsigned>(counters, "counters");
      }
      a.s = s;
      launch_split(backward_kernel<K>, B, s.split, cfg.threads, smem, a);
    });
  }
  std::vector<at::Tensor> grads{grad_xa_in, grad_xv_in};
  for (const auto& p : partials) grads.push_back(p.sum(0).to(grad_xa.scalar_type()));
  return grads;
}

}  // namespace jca

// ---- the paper's form (paper.cuh) -----------------------------------------------------------------

namespace paper {

inline constexpr const char* kWeightNames[6] = {"w_ja", "w_jv", "w_ca", "w_cv", "w_ha", "w_hv"};

// The units of work the S blocks of a sample share: the column tiles.
inline int column_tiles(const Dims& s) { return (s.d() + s.E - 1) / s.E; }

// forward(xa, xv, weights, T, h_tanh, out_relu) -> (xa_out, xv_out, xa_iters [T, B, L, da], xv_iters [T, B, L, dv])
inline std::vector<at::Tensor> forward(const at::Tensor& xa, const at::Tensor& xv, at::TensorList w,
                                       int64_t iterations, bool h_tanh, bool out_relu, const Config& cfg) {
  check_features(xa, {&xa, &xv}, 3);
  check_weights(xa, w, 6);
  const int64_t B = xa.size(0), L = xa.size(1), da = xa.size(2), dv = xv.size(2);
  TORCH_CHECK(iterations >= 1 && (w[0].size(0) == 1 || w[0].size(0) == iterations),
              "rja cuda: weights must hold 1 or T = ", iterations, " sets, got ", w[0].size(0));
  Dims s = with_tensor_cores<SmemLayout>(dims_of(B, L, da, dv, 0, iterations, w[0].size(0), cfg, h_tanh, out_relu),
                                         xa.scalar_type(), false);
  auto xa_iters = at::empty({iterations, B, L, da}, xa.options());
  auto xv_iters = at::empty({iterations, B, L, dv}, xv.options());
  auto xa_out = at::empty_like(xa), xv_out = at::empty_like(xv);
  if (B == 0) return {xa_out, xv_out, xa_iters, xv_iters};  // a zero-sized grid is a launch error
  const std::size_t smem = shared_bytes_checked(SmemLayout(s, false).total, s, false, "paper");
  const auto f32 = xa.options().dtype(at::kFloat);
  auto work = at::empty({B, Work::floats(s)}, f32);
  dispatch_element(xa.scalar_type(), [&](auto tag) {
    using K = decltype(tag);
    s.split = split_for(forward_kernel<K>, B, column_tiles(s), smem, cfg, "paper forward");
    at::Tensor partials, counters;  // the split's workspace
    if (s.split > 1) {
      partials = at::empty({split_workspace_floats(B, s.split, L, da + dv, 1)}, f32);
      counters = at::zeros({B}, xa.options().dtype(at::kInt));
    }
#ifdef RJA_EMULATE
    work.fill_(NAN);  // a read of a workspace element before it is written shows up in the results
    if (partials.defined()) partials.fill_(NAN);
#endif
    ForwardArgs<K> a;
    a.xa = ptr<const K>(xa, "xa");
    a.xv = ptr<const K>(xv, "xv");
    for (int i = 0; i < 6; ++i) a.w[i] = ptr<const K>(w[i], kWeightNames[i]);
    a.xa_iters = ptr<K>(xa_iters, "xa_iters");
    a.xv_iters = ptr<K>(xv_iters, "xv_iters");
    a.xa_out = ptr<K>(xa_out, "xa_out");
    a.xv_out = ptr<K>(xv_out, "xv_out");
    a.work = ptr<float>(work, "work");
    if (s.split > 1) {
      a.partials = ptr<float>(partials, "partials");
      a.counters = make_ptr(reinterpret_cast<unsigned*>(counters.data_ptr()), counters.numel(), "counters");
    }
    a.s = s;
    launch_split(forward_kernel<K>, B, s.split, cfg.threads, smem, a);
  });
  return {xa_out, xv_out, xa_iters, xv_iters};
}

// backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, h_tanh, out_relu) -> grads of (xa, xv, *weights)
inline std::vector<at::Tensor> backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv, const at::Tensor& xa_iters,
                                        const at::Tensor& xv_iters, at::TensorList w, bool h_tanh, bool out_relu,
                                        const Config& cfg) {
  check_features(xa_iters, {&grad_xa, &grad_xv}, 3);
  check_features(xa_iters, {&xa_iters, &xv_iters}, 4);
  check_weights(xa_iters, w, 6);
  const int64_t T = xa_iters.size(0), B = xa_iters.size(1), L = xa_iters.size(2), da = xa_iters.size(3);
  const int64_t dv = xv_iters.size(3), d = da + dv, Tw = w[0].size(0);
  TORCH_CHECK(Tw == 1 || Tw == T, "rja cuda: weights must hold 1 or T = ", T, " sets, got ", Tw);
  Dims s = with_tensor_cores<SmemLayout>(dims_of(B, L, da, dv, 0, T, Tw, cfg, h_tanh, out_relu),
                                         xa_iters.scalar_type(), true);
  auto grad_xa_in = at::empty_like(grad_xa), grad_xv_in = at::empty_like(grad_xv);
  const auto f32 = grad_xa.options().dtype(at::kFloat);
  auto H = at::empty({2, T, B, L, d}, f32);
  auto gU = at::empty({T, B, L, d}, f32), gQ = at::empty({T, B, L, d}, f32), gP = at::empty({T, B, d, L}, f32);
  if (B > 0) {
    const std::size_t smem = shared_bytes_checked(SmemLayout(s, true).total, s, true, "paper");
    auto work = at::empty({B, Work::floats(s)}, f32);
    dispatch_element(xa_iters.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      s.split = split_for(backward_kernel<K>, B, column_tiles(s), smem, cfg, "paper backward");
      at::Tensor partials, counters;  // the split's workspace
      if (s.split > 1) {
        partials = at::empty({split_workspace_floats(B, s.split, L, d, 2)}, f32);
        counters = at::zeros({B}, grad_xa.options().dtype(at::kInt));
      }
#ifdef RJA_EMULATE
      for (at::Tensor* buf : {&work, &partials, &H, &gU, &gQ, &gP}) {  // reads before writes show up as NaN
        if (buf->defined()) buf->fill_(NAN);
      }
#endif
      BackwardArgs<K> a;
      a.grad_xa = ptr<const K>(grad_xa, "grad_xa");
      a.grad_xv = ptr<const K>(grad_xv, "grad_xv");
      a.xa_iters = ptr<const K>(xa_iters, "xa_iters");
      a.xv_iters = ptr<const K>(xv_iters, "xv_iters");
      for (int i = 0; i < 6; ++i) a.w[i] = ptr<const K>(w[i], kWeightNames[i]);
      a.grad_xa_in = ptr<K>(grad_xa_in, "grad_xa_in");
      a.grad_xv_in = ptr<K>(grad_xv_in, "grad_xv_in");
      a.H = ptr<float>(H, "H");
      a.gU = ptr<float>(gU, "gU");
      a.gQ = ptr<float>(gQ, "gQ");
      a.gP = ptr<float>(gP, "gP");
      a.work = ptr<float>(work, "work");
      if (s.split > 1) {
        a.partials = ptr<float>(partials, "partials");
        a.counters = make_ptr(reinterpret_cast<unsigned*>(counters.data_ptr()), counters.numel(), "counters");
      }
      a.s = s;
      launch_split(backward_kernel<K>, B, s.split, cfg.threads, smem, a);
    });
  }
  // The weight gradients, contracted over the batch (and the iterations when Tw = 1) by one
  // matrix product per weight, in float32: deterministic, as no atomics are involved.
  const int64_t sets = Tw, rows = T / Tw * B * L;  // rows of the contraction per weight set
  std::vector<at::Tensor> grads{grad_xa_in, grad_xv_in, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                                at::Tensor(), at::Tensor()};
  for (int m = 0; m < 2; ++m) {
    const int64_t off = m == 0 ? 0 : da, dm = m == 0 ? da : dv;
    const at::Tensor x = (m == 0 ? xa_iters : xv_iters).to(at::kFloat);  // [T, B, L, dm]
    // grad w_j = sum x gP_m: [T, B, L, dm] @ [T, B, dm, L], summed over the batch (and iterations)
    at::Tensor gwj = at::matmul(x, gP.narrow(2, off, dm)).sum(1).view({sets, T / sets, L, L}).sum(1);
    // grad w_c = sum x^T gQ_m, grad w_h = sum H_m^T gU_m
    at::Tensor gwc = at::matmul(x.view({sets, rows, dm}).transpose(1, 2), gQ.view({sets, rows, d}).narrow(2, off, dm));
    at::Tensor gwh = at::matmul(H.select(0, m).view({sets, rows, d}).transpose(1, 2), gU.view({sets, rows, d}).narrow(2, off, dm));
    grads[2 + m] = gwj.to(grad_xa.scalar_type());
    grads[4 + m] = gwc.to(grad_xa.scalar_type());
    grads[6 + m] = gwh.to(grad_xa.scalar_type());
  }
  return grads;
}

}  // namespace paper
}  // namespace rja
