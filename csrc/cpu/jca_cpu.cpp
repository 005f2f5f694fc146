// Fused CPU kernel of the JCA operator, rja::joint_cross_attention (docs/SPEC.md section 2):
// forward and backward of all T iterations in one call, float32 and float64.
//
// The vector types, tanh, GEMM micro-kernel, threading and floating-point environment are those
// of vec_math.h and common.h, shared with the paper's form (paper_cpu.cpp).
//
// Layout. Each modality m (audio: rows 0..da of J's columns, visual: da..d) is processed in row
// blocks of kRows = 2 vectors of its feature dimension (the rows of P = x^T w_j, Ca, Z, H). For a
// row block, everything is kept transposed so the row block is the vector dimension:
//   P^T [L][rows], S^T = C^T [d][rows], Z^T [k][rows],
// and every contraction is the outer-product micro-kernel of vec_math.h. Ca/Cv are produced one
// d-chunk at a time (tanh applied in L1) and contracted with w_c at once; only a strip of kRows x d
// (128 KiB for float32 with AVX-512, d = 1024) per thread ever exists, never [B, dm, d].
#include "common.h"
#include "kernels.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace rja_cpu {
namespace {

// Rows of a feature block: two vectors, so a micro-kernel tile is (rows) x (2 vectors).
template <typename T>
constexpr int64_t kRows = 2 * kLanes<T>;
// J and w_c are zero-padded to a multiple of this many d-columns (a micro-kernel height).
constexpr int64_t kMr = 6;

// The GEMM of vec_math.h with output columns in blocks of kRows (two vectors).
template <typename T>
void gemm_rows(int64_t M, int64_t n_col_blocks, int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b,
               int64_t b_k, T* out, int64_t ld, bool accumulate) {
  gemm<T>(M, 2 * n_col_blocks, K, a, a_i, a_k, b, b_k, out, ld, accumulate);
}

// d-columns per chunk: a chunk of C^T (and of grad S^T) is 96 x kRows, 12 KiB (AVX-512) in L1.
constexpr int64_t kChunk = 96;
// Row blocks whose grad J is summed locally before it is added to the sample's.
constexpr int64_t kGroup = 8;
// Backward: a batch smaller than this is split within samples; at most this many gradient groups.
constexpr int64_t kMinTasks = 16;
constexpr int64_t kMaxGroups = 32;

template <typename T>
struct Dims {
  int64_t batch, L, k, da, dv, d;
  int64_t d6;  // d rounded up to the micro-kernel height; J and w_c are zero-padded to it
  int64_t lv, kv;  // L and k rounded up to kRows: column padding of transposed operands
  int64_t tw;
  T scale;  // 1 / sqrt(d)

  int64_t dm(int m) const { return m == 0 ? da : dv; }
  int64_t offset(int m) const { return m == 0 ? 0 : da; }
  int64_t blocks(int m) const { return (dm(m) + kRows<T> - 1) / kRows<T>; }
  int64_t units() const { return blocks(0) + blocks(1); }  // row blocks of one sample
};

// Weights of one modality and one weight set, w_c packed both ways for the two contractions.
template <typename T>
struct ModalityWeights {
  const T* w_j;  // [L][L]
  const T* w_u;  // [k][L]
  const T* w_h;  // [L][k]
  const T* wc_kd;  // w_c [k][d6], zero-padded columns
  const T* wc_dk;  // w_c^T [d6][k], zero-padded rows
};

// The 8 weight tensors as [w_j, w_u, w_c, w_h] per modality, plus w_c packings for every set.
template <typename T>
struct Weights {
  std::array<const T*, 2> w_j, w_u, w_c, w_h;
  Buffer<T> wc_kd, wc_dk;  // [2][tw][k][d6], [2][tw][d6][k]

  Weights(const Dims<T>& D, const std::array<at::Tensor, 8>& w) {
    for (int m = 0; m < 2; ++m) {
      w_j[m] = w[0 + m].data_ptr<T>();
      w_u[m] = w[2 + m].data_ptr<T>();
      w_c[m] = w[4 + m].data_ptr<T>();
      w_h[m] = w[6 + m].data_ptr<T>();
    }
    wc_kd.reset(2 * D.tw * D.k * D.d6);
    wc_dk.reset(2 * D.tw * D.d6 * D.k);
    for (int64_t s = 0; s < 2 * D.tw; ++s) {
      const T* src = w_c[s / D.tw] + (s % D.tw) * D.k * D.d;
      for (int64_t q = 0; q < D.k; ++q) {
        for (int64_t c = 0; c < D.d; ++c) {
          wc_kd[(s * D.k + q) * D.d6 + c] = src[q * D.d + c];
          wc_dk[(s * D.d6 + c) * D.k + q] = src[q * D.d + c];
        }
      }
    }
  }

  ModalityWeights<T> get(const Dims<T>& D, int m, int64_t set) const {
    const int64_t s = m * D.tw + set;
    return {w_j[m] + set * D.L * D.L, w_u[m] + set * D.k * D.L, w_h[m] + set * D.L * D.k,
            wc_kd.data() + s * D.k * D.d6, wc_dk.data() + s * D.d6 * D.k};
  }
};

// Per-thread scratch of one row block.
template <typename T>
struct Scratch {
  Buffer<T> x, g, gx, pt, p, xt, zt, gzt, gz, ht, gpt, gp, c, gs, part, gjt;
  explicit Scratch(const Dims<T>& D) {
    const int64_t R = kRows<T>;
    for (auto* v : {&x, &g, &gx, &pt, &gpt}) v->reset(D.L * R);
    for (auto* v : {&zt, &gzt}) v->reset(D.k * R);
    for (auto* v : {&p, &xt, &gp}) v->reset(R * D.lv);
    for (auto* v : {&gz, &ht}) v->reset(R * D.kv);
    c.reset(D.d6 * R);
    part.reset(std::max(D.k, D.L) * R);
    gjt.reset(D.d6 * D.lv);
    gs.reset(kChunk * R);
  }
};

// dst[l][j] = src[l*ld + r0 + j] for j < nr, zero for nr <= j < kRows.
template <typename T>
void load_rows(const T* src, int64_t ld, int64_t r0, int64_t nr, int64_t L, T* dst) {
  for (int64_t l = 0; l < L; ++l) {
    std::fill(std::copy(src + l * ld + r0, src + l * ld + r0 + nr, dst + l * kRows<T>),
              dst + (l + 1) * kRows<T>, T(0));
  }
}

template <typename T>
void store_rows(const T* src, int64_t ld, int64_t r0, int64_t nr, int64_t L, T* dst) {
  for (int64_t l = 0; l < L; ++l) {
    std::copy(src + l * kRows<T>, src + l * kRows<T> + nr, dst + l * ld + r0);
  }
}

// dst[j][i] = src[i][j] for i < n (rows of src are kRows wide), zero for n <= i < ld.
template <typename T>
void transpose_block(const T* src, int64_t n, T* dst, int64_t ld) {
  for (int64_t j = 0; j < kRows<T>; ++j) {
    for (int64_t i = 0; i < ld; ++i) dst[j * ld + i] = i < n ? src[i * kRows<T> + j] : T(0);
  }
}

template <typename T>
void tanh_scaled(T* x, int64_t n, T scale) {
  const Vec<T> s(scale);
  for (int64_t i = 0; i < n; i += kLanes<T>) vec_tanh<T>(Vec<T>::loadu(x + i) * s).store(x + i);
}

// The forward contractions shared by forward and backward, for one row block of one sample:
// P^T = w_j^T x, C^T = tanh(J^T P^T / sqrt(d)) into s.c (the whole d strip), and
// Z^T = w_c C^T + w_u x. Expects s.x loaded.
template <typename T>
void attention_map(const Dims<T>& D, const ModalityWeights<T>& W, const T* J, Scratch<T>& s) {
  const int64_t L = D.L, R = kRows<T>;
  gemm_rows<T>(L, 1, L, W.w_j, 1, L, s.x.data(), R, s.pt.data(), R, false);
  gemm_rows<T>(D.k, 1, L, W.w_u, L, 1, s.x.data(), R, s.zt.data(), R, false);
  for (int64_t c0 = 0; c0 < D.d6; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, D.d6 - c0);
    T* c = s.c.data() + c0 * R;
    gemm_rows<T>(cn, 1, L, J + c0 * L, L, 1, s.pt.data(), R, c, R, false);
    tanh_scaled(c, cn * R, D.scale);
    // Summed per chunk, then added: shorter rounding chains than one running sum over d.
    gemm_rows<T>(D.k, 1, cn, W.wc_dk + c0 * D.k, 1, D.k, c, R, s.part.data(), R, false);
    add_to(s.zt.data(), s.part.data(), D.k * R);
  }
}

// One iteration of one row block, forward: out[:, r0:r0+nr] = x + w_h relu(Z)^T.
template <typename T>
void forward_block(const Dims<T>& D, const ModalityWeights<T>& W, const T* J, const T* x,
                   int64_t dm, int64_t r0, T* out, Scratch<T>& s) {
  const int64_t nr = std::min(kRows<T>, dm - r0), R = kRows<T>;
  load_rows(x, dm, r0, nr, D.L, s.x.data());
  attention_map(D, W, J, s);
  for (int64_t i = 0; i < D.k * R; i += kLanes<T>) {
    Vec<T>::loadu(s.zt.data() + i).relu().store(s.zt.data() + i);
  }
  std::copy(s.x.data(), s.x.data() + s.x.size(), s.gx.data());
  gemm_rows<T>(D.L, 1, D.k, W.w_h, D.k, 1, s.zt.data(), R, s.gx.data(), R, true);
  store_rows(s.gx.data(), dm, r0, nr, D.L, out);
}

// Weight-gradient accumulators for one modality (weights of one iteration).
template <typename T>
struct GradAcc {
  Buffer<T> wc, wj, wu, wh;  // [d6][kv], [L][lv], [k][lv], [L][kv]
  explicit GradAcc(const Dims<T>& D) : wc(D.d6 * D.kv), wj(D.L * D.lv), wu(D.k * D.lv), wh(D.L * D.kv) {}
  void zero() {
    for (auto* v : {&wc, &wj, &wu, &wh}) v->zero();
  }
  // this += o; o = 0
  void drain(GradAcc& o) {
    for (auto [dst, src] : {std::pair{&wc, &o.wc}, {&wj, &o.wj}, {&wu, &o.wu}, {&wh, &o.wh}}) {
      add_to(dst->data(), src->data(), dst->size());
      src->zero();
    }
  }
};

// One iteration of one row block, backward (the formulas of reference._step_backward). Writes
// this block's own part of grad x (rows r0..r0+nr of the modality), accumulates the block's
// contribution to grad J^T [d6][lv] into gjt and the weight gradients into acc.
template <typename T>
void backward_block(const Dims<T>& D, const ModalityWeights<T>& W, const T* J, const T* x,
                    const T* g, int64_t dm, int64_t r0, T* gx_out, T* gjt, GradAcc<T>& acc,
                    Scratch<T>& s) {
  const int64_t L = D.L, k = D.k, R = kRows<T>, V = kLanes<T>;
  const int64_t nr = std::min(R, dm - r0);
  load_rows(x, dm, r0, nr, L, s.x.data());
  load_rows(g, dm, r0, nr, L, s.g.data());
  attention_map(D, W, J, s);

  // grad Z^T = (w_h^T g) * (Z > 0), a mask that multiplies as the reference's (NaN stays NaN);
  // H^T = relu(Z^T).
  gemm_rows<T>(k, 1, L, W.w_h, 1, k, s.g.data(), R, s.gzt.data(), R, false);
  for (int64_t i = 0; i < k * R; i += V) {
    const Vec<T> z = Vec<T>::loadu(s.zt.data() + i);
    Vec<T>::loadu(s.gzt.data() + i).times_positive(z).store(s.gzt.data() + i);
    z.relu().store(s.zt.data() + i);
  }
  transpose_block(s.gzt.data(), k, s.gz.data(), D.kv);
  transpose_block(s.zt.data(), k, s.ht.data(), D.kv);
  transpose_block(s.pt.data(), L, s.p.data(), D.lv);
  transpose_block(s.x.data(), L, s.xt.data(), D.lv);

  // grad x = g + w_u^T grad Z^T (+ w_j grad P^T below).
  std::copy(s.g.data(), s.g.data() + s.g.size(), s.gx.data());
  gemm_rows<T>(L, 1, k, W.w_u, 1, L, s.gzt.data(), R, s.gx.data(), R, true);

  s.gpt.zero();
  const Vec<T> one(T(1)), scale(D.scale);
  for (int64_t c0 = 0; c0 < D.d6; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, D.d6 - c0);
    const T* c = s.c.data() + c0 * R;
    T* gs = s.gs.data();
    // grad S^T = (w_c^T grad Z^T) * (1 - C^2) / sqrt(d)
    gemm_rows<T>(cn, 1, k, W.wc_kd + c0, 1, D.d6, s.gzt.data(), R, gs, R, false);
    for (int64_t i = 0; i < cn * R; i += V) {
      const Vec<T> cv = Vec<T>::loadu(c + i);
      (Vec<T>::loadu(gs + i) * (one - cv * cv) * scale).store(gs + i);
    }
    // grad w_c^T[c, q] += sum_r C^T[c, r] grad Z[r, q]
    gemm_rows<T>(cn, D.kv / R, nr, c, R, 1, s.gz.data(), D.kv, acc.wc.data() + c0 * D.kv, D.kv, true);
    // grad P^T[l, r] += sum_c J[l, c] grad S^T[c, r]
    gemm_rows<T>(L, 1, cn, J + c0 * L, 1, L, gs, R, s.part.data(), R, false);
    add_to(s.gpt.data(), s.part.data(), L * R);
    // grad J^T[c, l] += sum_r grad S^T[c, r] P[r, l]
    gemm_rows<T>(cn, D.lv / R, nr, gs, R, 1, s.p.data(), D.lv, gjt + c0 * D.lv, D.lv, true);
  }
  gemm_rows<T>(L, 1, L, W.w_j, L, 1, s.gpt.data(), R, s.gx.data(), R, true);
  store_rows(s.gx.data(), dm, r0, nr, L, gx_out);

  // Weight gradients, reductions over this block's rows r:
  // grad w_j[l', l] += sum_r x[l', r] grad P[r, l]; grad w_u[q, l] += sum_r grad Z[r, q] x[l, r];
  // grad w_h[l, q] += sum_r g[l, r] H[r, q].
  transpose_block(s.gpt.data(), L, s.gp.data(), D.lv);
  gemm_rows<T>(L, D.lv / R, nr, s.x.data(), R, 1, s.gp.data(), D.lv, acc.wj.data(), D.lv, true);
  gemm_rows<T>(k, D.lv / R, nr, s.gzt.data(), R, 1, s.xt.data(), D.lv, acc.wu.data(), D.lv, true);
  gemm_rows<T>(L, D.kv / R, nr, s.g.data(), R, 1, s.ht.data(), D.kv, acc.wh.data(), D.kv, true);
}

// J^T[b] = [xa[b] | xv[b] | 0]^T as [d6][L]: the micro-kernels broadcast from 6 consecutive
// columns of J, contiguous in this layout (rows of J 4 KiB apart would alias in L1).
template <typename T>
void build_joint(const Dims<T>& D, const T* xa, const T* xv, T* J) {
  parallel_tasks(D.batch, D.batch * D.L * D.d6, [&](int64_t b) {
    T* jt = J + b * D.d6 * D.L;
    for (int64_t l = 0; l < D.L; ++l) {
      for (int64_t c = 0; c < D.da; ++c) jt[c * D.L + l] = xa[(b * D.L + l) * D.da + c];
      for (int64_t c = 0; c < D.dv; ++c) jt[(D.da + c) * D.L + l] = xv[(b * D.L + l) * D.dv + c];
    }
    std::fill(jt + D.d * D.L, jt + D.d6 * D.L, T(0));
  });
}

template <typename T>
Dims<T> make_dims(const at::Tensor& xa, const at::Tensor& xv, const at::Tensor& w_a) {
  Dims<T> D;
  D.batch = xa.size(0);
  D.L = xa.size(1);
  D.da = xa.size(2);
  D.dv = xv.size(2);
  D.d = D.da + D.dv;
  D.k = w_a.size(1);
  D.tw = w_a.size(0);
  D.d6 = round_up(D.d, kMr);
  D.lv = round_up(D.L, kRows<T>);
  D.kv = round_up(D.k, kRows<T>);
  D.scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(D.d)));
  return D;
}

// (sample, modality, row block) of unit u of sample-major enumeration.
struct Unit {
  int m;
  int64_t r0;
};

template <typename T>
Unit unit_of(const Dims<T>& D, int64_t u) {
  return u < D.blocks(0) ? Unit{0, u * kRows<T>} : Unit{1, (u - D.blocks(0)) * kRows<T>};
}

template <typename T>
void forward_impl(const Dims<T>& D, const Weights<T>& W, int64_t iterations, at::Tensor& xa_iters,
                  at::Tensor& xv_iters, at::Tensor& xa_out, at::Tensor& xv_out) {
  Buffer<T> J(D.batch * D.L * D.d6);
  const int64_t U = D.units();
  for (int64_t t = 0; t < iterations; ++t) {
    const int64_t set = D.tw == 1 ? 0 : t;
    const bool last = t + 1 == iterations;
    const std::array<const T*, 2> x = {xa_iters[t].data_ptr<T>(), xv_iters[t].data_ptr<T>()};
    const std::array<T*, 2> out = {last ? xa_out.data_ptr<T>() : xa_iters[t + 1].data_ptr<T>(),
                                   last ? xv_out.data_ptr<T>() : xv_iters[t + 1].data_ptr<T>()};
    build_joint(D, x[0], x[1], J.data());
    const std::array<ModalityWeights<T>, 2> mw = {W.get(D, 0, set), W.get(D, 1, set)};
    // Row blocks are independent within an iteration: parallel over (sample, row block).
    const int64_t units = D.batch * U, unit_work = kRows<T> * (D.d6 * (D.L + D.k) + 3 * D.L * D.k);
    parallel_tasks(
        units, units * unit_work, [&] { return Scratch<T>(D); },
        [&](int64_t u, Scratch<T>& s) {
          const int64_t b = u / U;
          const Unit un = unit_of(D, u % U);
          const int64_t dm = D.dm(un.m), sample = b * D.L * dm;
          forward_block(D, mw[un.m], J.data() + b * D.d6 * D.L, x[un.m] + sample, dm, un.r0,
                        out[un.m] + sample, s);
        });
  }
}

template <typename T>
struct BackwardState {
  Scratch<T> s;
  std::array<GradAcc<T>, 2> task_acc;
  explicit BackwardState(const Dims<T>& D) : s(D), task_acc{GradAcc<T>(D), GradAcc<T>(D)} {}
};

template <typename T>
void backward_impl(const Dims<T>& D, const Weights<T>& W, const at::Tensor& xa_iters,
                   const at::Tensor& xv_iters, at::Tensor& ga, at::Tensor& gv,
                   std::array<at::Tensor, 8>& grad_w) {
  const int64_t iterations = xa_iters.size(0), U = D.units();
  // The work is cut into tasks (a sample, or a range of its row blocks when the batch is small)
  // and tasks into groups: each group has its own weight-gradient accumulators and each task its
  // own grad J, all summed in a fixed order afterwards. The cut depends on the shapes only, so the
  // gradients are the same bits for any thread count and any thread-to-group assignment.
  const int64_t parts = std::clamp<int64_t>((kMinTasks + D.batch - 1) / std::max<int64_t>(D.batch, 1), 1, U);
  const int64_t tasks = D.batch * parts;
  const int64_t groups = std::min(tasks, kMaxGroups);
  const int64_t work = D.batch * U * kRows<T> * D.d6 * 3 * (D.L + D.k);
  Buffer<T> J(D.batch * D.L * D.d6), gjt(tasks * D.d6 * D.lv);
  std::vector<std::array<GradAcc<T>, 2>> acc;
  for (int64_t c = 0; c < groups; ++c) acc.push_back({GradAcc<T>(D), GradAcc<T>(D)});
  at::Tensor ga_next = at::empty_like(ga), gv_next = at::empty_like(gv);

  for (int64_t t = iterations - 1; t >= 0; --t) {
    const int64_t set = D.tw == 1 ? 0 : t;
    const std::array<const T*, 2> x = {xa_iters[t].data_ptr<T>(), xv_iters[t].data_ptr<T>()};
    const std::array<const T*, 2> g = {ga.data_ptr<T>(), gv.data_ptr<T>()};
    const std::array<T*, 2> gx = {ga_next.data_ptr<T>(), gv_next.data_ptr<T>()};
    build_joint(D, x[0], x[1], J.data());
    gjt.zero();
    const std::array<ModalityWeights<T>, 2> mw = {W.get(D, 0, set), W.get(D, 1, set)};
    // Weight gradients are summed per task, then per group: shorter rounding chains.
    parallel_tasks(
        groups, work, [&] { return BackwardState<T>(D); },
        [&](int64_t c, BackwardState<T>& st) {
          Scratch<T>& s = st.s;
          acc[c][0].zero();
          acc[c][1].zero();
          for (int64_t task = c * tasks / groups; task < (c + 1) * tasks / groups; ++task) {
            const int64_t b = task / parts, p = task % parts;
            T* task_gjt = gjt.data() + task * D.d6 * D.lv;
            const int64_t u0 = p * U / parts, u1 = (p + 1) * U / parts;
            for (int64_t u = u0; u < u1; ++u) {
              const Unit un = unit_of(D, u);
              const int64_t dm = D.dm(un.m), sample = b * D.L * dm;
              backward_block(D, mw[un.m], J.data() + b * D.d6 * D.L, x[un.m] + sample,
                             g[un.m] + sample, dm, un.r0, gx[un.m] + sample, s.gjt.data(),
                             st.task_acc[un.m], s);
              // grad J summed over groups of row blocks, then added: shorter rounding chains.
              if ((u - u0) % kGroup == kGroup - 1 || u + 1 == u1) {
                add_to(task_gjt, s.gjt.data(), D.d6 * D.lv);
                s.gjt.zero();
              }
            }
            acc[c][0].drain(st.task_acc[0]);
            acc[c][1].drain(st.task_acc[1]);
          }
        });
    // grad x += grad J (transposed back from [d][L]), parts summed in order.
    parallel_tasks(D.batch, D.batch * parts * D.L * D.d, [&](int64_t b) {
      for (int64_t l = 0; l < D.L; ++l) {
        for (int64_t col = 0; col < D.d; ++col) {
          T sum = T(0);
          for (int64_t p = 0; p < parts; ++p) sum += gjt[((b * parts + p) * D.d6 + col) * D.lv + l];
          const int m = col < D.da ? 0 : 1;
          gx[m][(b * D.L + l) * D.dm(m) + col - D.offset(m)] += sum;
        }
      }
    });
    // Weight gradients of this iteration: group partials in group order.
    for (int m = 0; m < 2; ++m) {
      T* gw_j = grad_w[0 + m].data_ptr<T>() + set * D.L * D.L;
      T* gw_u = grad_w[2 + m].data_ptr<T>() + set * D.k * D.L;
      T* gw_c = grad_w[4 + m].data_ptr<T>() + set * D.k * D.d;
      T* gw_h = grad_w[6 + m].data_ptr<T>() + set * D.L * D.k;
      for (int64_t c = 0; c < groups; ++c) {
        const GradAcc<T>& a = acc[c][m];
        for (int64_t q = 0; q < D.k; ++q) {
          for (int64_t col = 0; col < D.d; ++col) gw_c[q * D.d + col] += a.wc[col * D.kv + q];
          for (int64_t l = 0; l < D.L; ++l) gw_u[q * D.L + l] += a.wu[q * D.lv + l];
        }
        for (int64_t l = 0; l < D.L; ++l) {
          for (int64_t j = 0; j < D.L; ++j) gw_j[l * D.L + j] += a.wj[l * D.lv + j];
          for (int64_t q = 0; q < D.k; ++q) gw_h[l * D.k + q] += a.wh[l * D.kv + q];
        }
      }
    }
    std::swap(ga, ga_next);
    std::swap(gv, gv_next);
  }
}

std::array<at::Tensor, 8> contiguous(const std::array<const at::Tensor*, 8>& w) {
  std::array<at::Tensor, 8> c;
  for (int i = 0; i < 8; ++i) c[i] = w[i]->contiguous();
  return c;
}

}  // namespace

Forward cpu_jca_forward(const at::Tensor& xa_in, const at::Tensor& xv_in, const at::Tensor& w_ja,
                        const at::Tensor& w_jv, const at::Tensor& w_a, const at::Tensor& w_v,
                        const at::Tensor& w_ca, const at::Tensor& w_cv, const at::Tensor& w_ha,
                        const at::Tensor& w_hv, int64_t iterations) {
  TORCH_CHECK(iterations >= 1, "rja::cpu_jca_forward: iterations must be >= 1");
  const FlushDenormals ftz;
  const at::Tensor xa = xa_in.contiguous(), xv = xv_in.contiguous();
  const std::array<at::Tensor, 8> w = contiguous({&w_ja, &w_jv, &w_a, &w_v, &w_ca, &w_cv, &w_ha, &w_hv});
  at::Tensor xa_iters = at::empty({iterations, xa.size(0), xa.size(1), xa.size(2)}, xa.options());
  at::Tensor xv_iters = at::empty({iterations, xv.size(0), xv.size(1), xv.size(2)}, xv.options());
  at::Tensor xa_out = at::empty_like(xa), xv_out = at::empty_like(xv);
  xa_iters[0].copy_(xa);
  xv_iters[0].copy_(xv);
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), "rja_cpu_jca_forward", [&] {
    const Dims<scalar_t> D = make_dims<scalar_t>(xa, xv, w[2]);
    const Weights<scalar_t> W(D, w);
    forward_impl(D, W, iterations, xa_iters, xv_iters, xa_out, xv_out);
  });
  return {xa_out, xv_out, xa_iters, xv_iters};
}

std::vector<at::Tensor> cpu_jca_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                         const at::Tensor& xa_iters_in, const at::Tensor& xv_iters_in,
                                         const at::Tensor& w_ja, const at::Tensor& w_jv,
                                         const at::Tensor& w_a, const at::Tensor& w_v,
                                         const at::Tensor& w_ca, const at::Tensor& w_cv,
                                         const at::Tensor& w_ha, const at::Tensor& w_hv) {
  const FlushDenormals ftz;
  const at::Tensor xa_iters = xa_iters_in.contiguous(), xv_iters = xv_iters_in.contiguous();
  const std::array<at::Tensor, 8> w = contiguous({&w_ja, &w_jv, &w_a, &w_v, &w_ca, &w_cv, &w_ha, &w_hv});
  // Gradient buffers are overwritten iteration by iteration: work on fresh copies.
  at::Tensor ga = grad_xa.contiguous().clone(), gv = grad_xv.contiguous().clone();
  std::array<at::Tensor, 8> grad_w;
  for (int i = 0; i < 8; ++i) grad_w[i] = at::zeros_like(w[i]);
  AT_DISPATCH_FLOATING_TYPES(xa_iters.scalar_type(), "rja_cpu_jca_backward", [&] {
    const Dims<scalar_t> D = make_dims<scalar_t>(xa_iters[0], xv_iters[0], w[2]);
    const Weights<scalar_t> W(D, w);
    backward_impl(D, W, xa_iters, xv_iters, ga, gv, grad_w);
  });
  std::vector<at::Tensor> grads = {ga, gv};
  grads.insert(grads.end(), grad_w.begin(), grad_w.end());
  return grads;
}

}  // namespace rja_cpu
