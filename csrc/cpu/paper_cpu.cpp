// Fused CPU kernel of the paper's operator, rja::recursive_joint_attention (docs/SPEC.md section
// 1): forward and backward of all T iterations in one call, float32 and float64.
//
// Per iteration and modality m (x = x_m [B, L, dm], J = [xa | xv] [B, L, d], s = 1/sqrt(d)):
//   Q = x w_c                  [B*L, dm]   one GEMM over the whole batch (w_c blocks reused by all
//                                          samples)
//   for each sample b and column tile c0 of d (kTile columns):      <- one task owns a column tile
//     for each chunk of kChunk rows r of C (the dm axis):          <- streams over row tiles of C
//       C[r, tile] = tanh(s P[r, :] J[:, tile])  P = x^T w_j     [kChunk, kTile] in L1, then
//       G[:, tile] += Q[:, r] C[r, tile]                           [L, kTile] in L1
//     H[:, tile] = relu(G) (relu(tanh(G)) with h_tanh)             written to H [B, L, d]
//   U = H w_h                  [B*L, dm]   one GEMM over the batch;  x' = x + U (x + relu(U))
// C ([B, dm, d], 128 MiB per modality and iteration at the paper's size) is never stored; the
// workspaces (Q, H, U) are [B, L, d]-sized like the features. The backward recomputes Q and H from
// the saved features of the iteration, then visits every column tile a second time, recomputing
// its C chunks, for the gradients that need relu'(G) complete (see backward_tile).
//
// Determinism: every task owns its outputs (forward) or writes partial sums into slots cut by
// shape, summed in a fixed order (backward); every GEMM sums each output element in one fixed
// order (vec_math.h, common.h). The bits do not depend on the thread count.
#include "common.h"
#include "kernels.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#pragma GCC diagnostic pop

#include <array>
#include <cmath>

namespace rja_cpu {
namespace {

constexpr int64_t kTileVecs = 4;  // column tile of d: 4 vectors (64 float32 / 32 float64 columns)
constexpr int64_t kChunk = 64;    // rows of C per step: a [kChunk, kTile] block, 16 KiB, in L1
// Tasks wanted per iteration: a small batch splits the column tiles of a sample into groups.
constexpr int64_t kMinTasks = 16;

template <typename T>
constexpr int64_t kTile = kTileVecs * kLanes<T>;

template <typename T>
struct Dims {
  int64_t batch, L, da, dv, d, tw;
  int64_t lp;      // L rounded up to the vector width: columns of P and of the [., L] gradients
  int64_t ldh;     // d rounded up to the column tile: row length of H and grad H
  int64_t ntiles;  // column tiles of d
  int64_t groups;  // column-tile groups per (sample, modality): the tasks of an iteration
  T scale;         // 1 / sqrt(d)
  bool exact_scale;  // scale is a power of two (d a power of 4): s (P J) = (s P) J bit for bit

  Dims(const at::Tensor& xa, const at::Tensor& xv, const at::Tensor& w_ja) {
    batch = xa.size(0);
    L = xa.size(1);
    da = xa.size(2);
    dv = xv.size(2);
    d = da + dv;
    tw = w_ja.size(0);
    lp = round_up(L, kLanes<T>);
    ldh = round_up(d, kTile<T>);
    ntiles = ldh / kTile<T>;
    groups = std::clamp<int64_t>((kMinTasks + 2 * batch - 1) / std::max<int64_t>(2 * batch, 1), 1, ntiles);
    scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
    int exponent;
    exact_scale = std::frexp(scale, &exponent) == T(0.5);
  }
  int64_t dm(int m) const { return m == 0 ? da : dv; }
  int64_t offset(int m) const { return m == 0 ? 0 : da; }
  int64_t dmp(int m) const { return round_up(dm(m), kLanes<T>); }
  int64_t rows() const { return batch * L; }
};

// One weight set of one modality, packed for the kernel.
template <typename T>
struct ModalityWeights {
  Buffer<T> wj;                 // w_j [L][lp]: P = x^T w_j
  Buffer<T> wjt;                // w_j^T [L][lp] (backward)
  PackedWeight<T> wc, wh;       // w_c [dm][dmp], w_h [d][dmp]
  PackedWeight<T> wct, wht;     // w_c^T [dm][dmp], w_h^T [dm][ldh] (backward)

  void pack(const Dims<T>& D, int m, const std::array<const T*, 6>& w, int64_t set, bool backward) {
    const int64_t L = D.L, dm = D.dm(m), d = D.d;
    const T* w_j = w[0 + m] + set * L * L;
    const T* w_c = w[2 + m] + set * dm * dm;
    const T* w_h = w[4 + m] + set * d * dm;
    wj.reset(L * D.lp);
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = 0; j < L; ++j) wj[i * D.lp + j] = w_j[i * L + j];
    }
    wc.pack(w_c, dm, dm, false);
    wh.pack(w_h, d, dm, false);
    if (backward) {
      wjt.reset(L * D.lp);
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t j = 0; j < L; ++j) wjt[j * D.lp + i] = w_j[i * L + j];
      }
      wct.pack(w_c, dm, dm, true);
      wht.pack(w_h, d, dm, true, D.ldh);
    }
  }
};

// Per-thread scratch of the tile tasks; all of it stays in L1/L2.
template <typename T>
struct TileScratch {
  Buffer<T> ps;                        // P [dm][lp] of the task's sample
  Buffer<T> jt, c, gt;                 // J tile [L][kTile], C chunk [kChunk][kTile], G tile [L][kTile]
  Buffer<T> jtt, gs, ggt, ggtt, tmp;   // backward: J^T tile [kTile][lp], grad S chunk, grad G tile
                                       // and its transpose, [dm][lp] scratch
  TileScratch(const Dims<T>& D, bool backward) {
    const int64_t dmax = std::max(D.da, D.dv), N = kTile<T>;
    ps.reset(dmax * D.lp);
    jt.reset(D.L * N);
    c.reset(kChunk * N);
    gt.reset(D.L * N);
    if (backward) {
      jtt.reset(N * D.lp);
      gs.reset(kChunk * N);
      ggt.reset(D.L * N);
      ggtt.reset(N * D.lp);
      tmp.reset(dmax * D.lp);
    }
  }
};

// C = tanh(s (P J)): scaled after the sum, as the reference does. Folded into w_j instead, the
// scale's rounding perturbs every weight by up to half an ulp, and with saturating inputs (where
// the gradients amplify any perturbation) that made the float32 gradients 4x the reference's error.
// The fast tanh (5.2 ulp, vec_math.h) is accurate enough here: with it the worst float32 error of
// tests/test_cpu_kernel.py is 0.47 of the tolerance, 0.58 with vec_tanh_accurate, which took 40%
// of the forward's time (dm x d tanh per sample, modality and iteration).
// Where the scale is a power of two the forward folds it into P instead (prepare_sample): the same
// bits, one multiply fewer per element of C (3% of the forward).
template <typename T, bool kScaled = true>
struct TanhEpilogue {
  T scale;
  template <typename V>
  void operator()(V& acc, const T*) const { acc = vec_tanh(kScaled ? acc * V(scale) : acc); }
};

template <typename T>
struct ScaleEpilogue {
  T scale;
  template <typename V>
  void operator()(V& acc, const T*) const { acc = acc * V(scale); }
};

// H = relu(G), or relu(tanh(G)) with the accurate tanh (its error reaches the gradients through
// 1 - H^2, see vec_tanh_accurate).
struct ActivationEpilogue {
  bool h_tanh;
  template <typename V, typename T>
  void operator()(V& acc, const T*) const { acc = (h_tanh ? vec_tanh_accurate(acc) : acc).relu(); }
};

// grad S = (Q^T grad G) * (1 - C^2) * s, C at the same offset from `c` as the output from `out0`.
template <typename T>
struct TanhGradEpilogue {
  const T* out0;
  const T* c;
  T scale;
  void operator()(Vec<T>& acc, const T* out) const {
    const Vec<T> cv = Vec<T>::loadu(c + (out - out0));
    acc = acc * fnmadd(cv, cv, Vec<T>(T(1))) * Vec<T>(scale);
  }
};

// J[b][:, c0:c0+kTile] as [L][kTile], zero beyond d: per row, a piece of xa's row and/or of xv's.
template <typename T>
void pack_joint_tile(const Dims<T>& D, const T* xa_b, const T* xv_b, int64_t c0, T* jt) {
  const int64_t N = kTile<T>, na = std::clamp<int64_t>(D.da - c0, 0, N);
  const int64_t v0 = std::max<int64_t>(c0 - D.da, 0), nv = std::clamp<int64_t>(D.d - c0, 0, N) - na;
  for (int64_t l = 0; l < D.L; ++l) {
    T* row = jt + l * N;
    std::copy(xa_b + l * D.da + c0, xa_b + l * D.da + c0 + na, row);
    std::copy(xv_b + l * D.dv + v0, xv_b + l * D.dv + v0 + nv, row + na);
    std::fill(row + na + nv, row + N, T(0));
  }
}

// The sample's P = x^T w_j [dm][lp], times the scale with `scaled` (times 1, exact, without).
template <typename T>
void prepare_sample(const Dims<T>& D, const ModalityWeights<T>& W, int64_t dm, const T* x_b, TileScratch<T>& s,
                    bool scaled = false) {
  gemm<T>(dm, D.lp / kLanes<T>, D.L, x_b, 1, dm, W.wj.data(), D.lp, s.ps.data(), D.lp, false,
          ScaleEpilogue<T>{scaled ? D.scale : T(1)});
}

// Forward of one column tile: H[b][:, c0:c0+kTile] (ld ldh) = act(Q C[:, tile]). Per chunk of rows
// r: C = tanh(s P[r] J[:, tile]), the tanh applied to the accumulators in registers (the division
// unit then works while the next block's multiply-adds issue), then G += Q[:, r] C. P holds s P
// where D.exact_scale (prepare_sample).
template <typename T>
void forward_tile(const Dims<T>& D, int64_t dm, const T* xa_b, const T* xv_b, const T* q_b, int64_t c0,
                  bool h_tanh, T* h_b, TileScratch<T>& s) {
  const int64_t N = kTile<T>, L = D.L, lp = D.lp, ldq = round_up(dm, kLanes<T>);
  pack_joint_tile(D, xa_b, xv_b, c0, s.jt.data());
  for (int64_t r0 = 0; r0 < dm; r0 += kChunk) {
    const int64_t rc = std::min(kChunk, dm - r0);
    const T* q = q_b + r0;  // A(l, r) = Q[l, r0 + r]
    if (D.exact_scale) {
      gemm<T>(rc, kTileVecs, L, s.ps.data() + r0 * lp, lp, 1, s.jt.data(), N, s.c.data(), N, false,
              TanhEpilogue<T, false>{D.scale});
    } else {
      gemm<T>(rc, kTileVecs, L, s.ps.data() + r0 * lp, lp, 1, s.jt.data(), N, s.c.data(), N, false,
              TanhEpilogue<T>{D.scale});
    }
    if (r0 + kChunk < dm) {
      gemm<T>(L, kTileVecs, rc, q, ldq, 1, s.c.data(), N, s.gt.data(), N, r0 > 0);
    } else {
      gemm<T>(L, kTileVecs, rc, q, ldq, 1, s.c.data(), N, s.gt.data(), N, r0 > 0, ActivationEpilogue{h_tanh});
    }
  }
  copy_block(s.gt.data(), N, L, N, h_b + c0, D.ldh);
}

// Backward of one column tile (the second visit), given grad H of the tile (in/out, ld ldh) and
// H: grad G = grad H * (H > 0) [* (1 - H^2) with h_tanh], then per chunk of rows r
//   C = tanh(s P J), grad S = (Q^T grad G) * (1 - C^2) * s    [kChunk, kTile]
//   grad Q^T[r] += C grad G^T,  grad P[r] += grad S J^T       [kChunk, L] (over tiles)
//   grad J[:, tile] += P^T grad S                             [L, kTile] (over chunks)
// grad J overwrites grad H of the tile.
template <typename T>
void backward_tile(const Dims<T>& D, int64_t dm, const T* xa_b, const T* xv_b, const T* q_b, int64_t c0,
                   bool h_tanh, const T* h_b, T* gh_b, T* gq, T* gp, TileScratch<T>& s) {
  const int64_t N = kTile<T>, L = D.L, lp = D.lp, V = kLanes<T>, ldq = round_up(dm, V);
  pack_joint_tile(D, xa_b, xv_b, c0, s.jt.data());
  transpose_padded(s.jt.data(), N, L, N, s.jtt.data(), lp);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t c = 0; c < N; c += V) {
      const Vec<T> h = Vec<T>::loadu(h_b + l * D.ldh + c0 + c);
      Vec<T> g = Vec<T>::loadu(gh_b + l * D.ldh + c0 + c).times_positive(h);
      if (h_tanh) g = g * fnmadd(h, h, Vec<T>(T(1)));
      g.store(s.ggt.data() + l * N + c);
    }
  }
  transpose_padded(s.ggt.data(), N, L, N, s.ggtt.data(), lp);
  for (int64_t r0 = 0; r0 < dm; r0 += kChunk) {
    const int64_t rc = std::min(kChunk, dm - r0);
    const T* ps = s.ps.data() + r0 * lp;
    gemm<T>(rc, kTileVecs, L, ps, lp, 1, s.jt.data(), N, s.c.data(), N, false, TanhEpilogue<T>{D.scale});
    gemm<T>(rc, kTileVecs, L, q_b + r0, 1, ldq, s.ggt.data(), N, s.gs.data(), N, false,
            TanhGradEpilogue<T>{s.gs.data(), s.c.data(), D.scale});
    gemm<T>(rc, lp / V, N, s.c.data(), N, 1, s.ggtt.data(), lp, gq + r0 * lp, lp, true);
    gemm<T>(rc, lp / V, N, s.gs.data(), N, 1, s.jtt.data(), lp, gp + r0 * lp, lp, true);
    gemm<T>(L, kTileVecs, rc, ps, 1, lp, s.gs.data(), N, s.gt.data(), N, r0 > 0);
  }
  copy_block(s.gt.data(), N, L, N, gh_b + c0, D.ldh);
}

template <typename T>
struct Iteration {
  std::array<const T*, 2> x;  // [B, L, dm] features of the iteration
  std::array<T*, 2> q, h;     // Q [B*L][dmp], H [B*L][ldh]
};

// (sample, modality, group) of task i, and the group's column tiles.
struct TileTask {
  int64_t b;
  int m;
  int64_t g, t0, t1;
};

template <typename T>
TileTask tile_task(const Dims<T>& D, int64_t i) {
  const int64_t g = i % D.groups;
  return {i / (2 * D.groups), static_cast<int>(i / D.groups % 2), g, g * D.ntiles / D.groups,
          (g + 1) * D.ntiles / D.groups};
}

template <typename T>
int64_t tile_task_work(const Dims<T>& D) {
  return 2 * D.batch * D.L * std::max(D.da, D.dv) * D.ldh * 2;
}

// Q = x w_c for both modalities, then H tile by tile.
template <typename T>
void attention_maps(const Dims<T>& D, const std::array<ModalityWeights<T>, 2>& W, const Iteration<T>& it,
                    bool h_tanh) {
  for (int m = 0; m < 2; ++m) {
    batch_gemm<T>(D.rows(), D.dm(m), it.x[m], D.dm(m), 1, W[m].wc.panel(), it.q[m], D.dmp(m), false);
  }
  parallel_tasks(
      D.batch * 2 * D.groups, tile_task_work(D), [&] { return TileScratch<T>(D, false); },
      [&](int64_t i, TileScratch<T>& s) {
        const TileTask tt = tile_task(D, i);
        const int64_t dm = D.dm(tt.m);
        const T* xa_b = it.x[0] + tt.b * D.L * D.da;
        const T* xv_b = it.x[1] + tt.b * D.L * D.dv;
        const T* q_b = it.q[tt.m] + tt.b * D.L * D.dmp(tt.m);
        prepare_sample(D, W[tt.m], dm, it.x[tt.m] + tt.b * D.L * dm, s, D.exact_scale);
        for (int64_t tile = tt.t0; tile < tt.t1; ++tile) {
          forward_tile(D, dm, xa_b, xv_b, q_b, tile * kTile<T>, h_tanh, it.h[tt.m] + tt.b * D.L * D.ldh, s);
        }
      });
}

// x' = x + U (x + relu(U) with out_relu) as U's GEMM stores its sums: x at the same offset from `x`
// as the output from `out0` (x' and x alike, rows dm long with dm a multiple of the vector width).
template <typename T>
struct ResidualEpilogue {
  const T* out0;
  const T* x;
  bool out_relu;
  void operator()(Vec<T>& acc, const T* out) const {
    acc = Vec<T>::loadu(x + (out - out0)) + (out_relu ? acc.relu() : acc);
  }
};

// out[row, r] = x[row, r] + u[row, r] (relu(u) with out_relu), rows of x and out dm long, of u ldu.
template <typename T>
void residual(int64_t rows, int64_t dm, const T* x, const T* u, int64_t ldu, bool out_relu, T* out) {
  constexpr int64_t V = kLanes<T>;
  const int64_t block = 64;
  parallel_tasks((rows + block - 1) / block, rows * dm * kCopyWork, [&](int64_t task) {
    for (int64_t row = task * block; row < std::min(rows, (task + 1) * block); ++row) {
      for (int64_t r = 0; r < dm; r += V) {
        const int64_t n = std::min(V, dm - r);
        Vec<T> uv = Vec<T>::loadu(u + row * ldu + r);
        if (out_relu) uv = uv.relu();
        (Vec<T>::loadu(x + row * dm + r, n) + uv).store(out + row * dm + r, n);
      }
    }
  });
}

template <typename T>
std::array<const T*, 6> weight_pointers(const std::array<at::Tensor, 6>& w) {
  std::array<const T*, 6> p;
  for (int i = 0; i < 6; ++i) p[i] = w[i].data_ptr<T>();
  return p;
}

template <typename T>
void forward_impl(const Dims<T>& D, const std::array<const T*, 6>& w, int64_t iterations, bool h_tanh,
                  bool out_relu, at::Tensor& xa_iters, at::Tensor& xv_iters, at::Tensor& xa_out,
                  at::Tensor& xv_out) {
  std::array<ModalityWeights<T>, 2> W;
  std::array<Buffer<T>, 2> q, h;
  for (int m = 0; m < 2; ++m) {  // both written in full before they are read
    q[m].reset(D.rows() * D.dmp(m), false);
    h[m].reset(D.rows() * D.ldh, false);
  }
  for (int64_t t = 0; t < iterations; ++t) {
    const int64_t set = D.tw == 1 ? 0 : t;
    if (t == 0 || D.tw > 1) {
      for (int m = 0; m < 2; ++m) W[m].pack(D, m, w, set, false);
    }
    const bool last = t + 1 == iterations;
    const Iteration<T> it{{xa_iters[t].data_ptr<T>(), xv_iters[t].data_ptr<T>()},
                          {q[0].data(), q[1].data()}, {h[0].data(), h[1].data()}};
    const std::array<T*, 2> out = {last ? xa_out.data_ptr<T>() : xa_iters[t + 1].data_ptr<T>(),
                                   last ? xv_out.data_ptr<T>() : xv_iters[t + 1].data_ptr<T>()};
    attention_maps(D, W, it, h_tanh);
    for (int m = 0; m < 2; ++m) {
      if (D.dmp(m) == D.dm(m)) {  // rows need no padding: U's GEMM writes x' itself
        batch_gemm<T>(D.rows(), D.d, it.h[m], D.ldh, 1, W[m].wh.panel(), out[m], D.dm(m), false,
                      ResidualEpilogue<T>{out[m], it.x[m], out_relu});
      } else {  // U = H w_h into Q's buffer, then the residual update
        batch_gemm<T>(D.rows(), D.d, it.h[m], D.ldh, 1, W[m].wh.panel(), it.q[m], D.dmp(m), false);
        residual(D.rows(), D.dm(m), it.x[m], it.q[m], D.dmp(m), out_relu, out[m]);
      }
    }
  }
}

// A [rows][ld] array: the output tensor itself when its rows need no padding (ld == cols), else a
// padded buffer copied out at the end (copy_out).
template <typename T>
class OutputArray {
 public:
  OutputArray(T* out, int64_t rows, int64_t cols, int64_t ld) : out_(out), rows_(rows), cols_(cols), ld_(ld) {
    if (ld != cols) buf_.reset(rows * ld);
  }
  T* data() { return ld_ == cols_ ? out_ : buf_.data(); }
  void copy_out() {
    if (ld_ != cols_) copy_padded(buf_.data(), ld_, rows_, cols_, out_, cols_);
  }

 private:
  T* out_;
  int64_t rows_, cols_, ld_;
  Buffer<T> buf_;
};

// Weight-gradient accumulators of one weight set and modality: grad w_j [L][lp] scratch, grad w_c
// [dm][dmp] and grad w_h [d][dmp] in the gradient tensors where they need no padding.
template <typename T>
struct GradWeights {
  Buffer<T> wj;
  OutputArray<T> wc, wh;
};

template <typename T>
void backward_impl(const Dims<T>& D, const std::array<const T*, 6>& w, bool h_tanh, bool out_relu,
                   const at::Tensor& xa_iters, const at::Tensor& xv_iters, std::array<T*, 2> g,
                   std::vector<std::array<GradWeights<T>, 2>>& gw) {
  const int64_t iterations = xa_iters.size(0), B = D.batch, L = D.L, lp = D.lp, V = kLanes<T>;
  std::array<ModalityWeights<T>, 2> W;
  // Workspaces per modality: Q (then grad Q), H; grad H (then grad J, tile by tile); U and grad U
  // (out_relu only); the per-group partial sums of grad Q^T and grad P.
  std::array<Buffer<T>, 2> q, h, gh, gu_buf, gqt, gp;
  for (int m = 0; m < 2; ++m) {  // all written in full (the partial sums: slot by slot) before read
    q[m].reset(D.rows() * D.dmp(m), false);
    h[m].reset(D.rows() * D.ldh, false);
    gh[m].reset(D.rows() * D.ldh, false);
    if (out_relu) gu_buf[m].reset(D.rows() * D.dmp(m), false);
    gqt[m].reset(B * D.groups * D.dm(m) * lp, false);
    gp[m].reset(B * D.groups * D.dm(m) * lp, false);
  }
  Buffer<T> gwj(L * lp);
  for (int64_t t = iterations - 1; t >= 0; --t) {
    const int64_t set = D.tw == 1 ? 0 : t;
    if (t == iterations - 1 || D.tw > 1) {
      for (int m = 0; m < 2; ++m) W[m].pack(D, m, w, set, true);
    }
    const Iteration<T> it{{xa_iters[t].data_ptr<T>(), xv_iters[t].data_ptr<T>()},
                          {q[0].data(), q[1].data()}, {h[0].data(), h[1].data()}};
    attention_maps(D, W, it, h_tanh);

    for (int m = 0; m < 2; ++m) {
      const int64_t dm = D.dm(m), dmp = D.dmp(m);
      // grad U = grad out (* (U > 0) with out_relu).
      const T* gu = g[m];
      if (out_relu) {
        batch_gemm<T>(D.rows(), D.d, h[m].data(), D.ldh, 1, W[m].wh.panel(), gu_buf[m].data(), dmp, false);
        T* u = gu_buf[m].data();
        const T* go = g[m];
        parallel_tasks(B, D.rows() * dmp, [&](int64_t b) {
          for (int64_t i = b * L * dmp; i < (b + 1) * L * dmp; i += V) {
            Vec<T>::loadu(go + i).times_positive(Vec<T>::loadu(u + i)).store(u + i);
          }
        });
        gu = gu_buf[m].data();
      }
      // grad w_h += H^T grad U; grad H = grad U w_h^T.
      batch_gemm<T>(D.d, D.rows(), h[m].data(), 1, D.ldh, Panel<T>{gu, dmp}, gw[set][m].wh.data(), dmp, true);
      batch_gemm<T>(D.rows(), dm, gu, dmp, 1, W[m].wht.panel(), gh[m].data(), D.ldh, false);
    }

    // Second visit of every column tile: partial grad Q^T and grad P per (sample, group), grad J.
    parallel_tasks(
        B * 2 * D.groups, 3 * tile_task_work(D), [&] { return TileScratch<T>(D, true); },
        [&](int64_t i, TileScratch<T>& s) {
          const TileTask tt = tile_task(D, i);
          const int m = tt.m;
          const int64_t dm = D.dm(m), slot = (tt.b * D.groups + tt.g) * dm * lp;
          const T* xa_b = it.x[0] + tt.b * L * D.da;
          const T* xv_b = it.x[1] + tt.b * L * D.dv;
          T* gq_s = gqt[m].data() + slot;
          T* gp_s = gp[m].data() + slot;
          std::fill(gq_s, gq_s + dm * lp, T(0));
          std::fill(gp_s, gp_s + dm * lp, T(0));
          const T* q_b = q[m].data() + tt.b * L * D.dmp(m);
          prepare_sample(D, W[m], dm, it.x[m] + tt.b * L * dm, s);
          for (int64_t tile = tt.t0; tile < tt.t1; ++tile) {
            backward_tile(D, dm, xa_b, xv_b, q_b, tile * kTile<T>, h_tanh, h[m].data() + tt.b * L * D.ldh,
                          gh[m].data() + tt.b * L * D.ldh, gq_s, gp_s, s);
          }
        });

    // Group partials summed in group order: grad Q [B*L][dmp] (into Q's buffer, free now) and
    // grad P (into group 0's slot).
    parallel_tasks(B * 2, D.rows() * D.d * D.groups, [&](int64_t i) {
      const int64_t b = i / 2;
      const int m = static_cast<int>(i % 2);
      const int64_t dm = D.dm(m), dmp = D.dmp(m), n = dm * lp;
      T* gq_b = gqt[m].data() + b * D.groups * n;
      T* gp_b = gp[m].data() + b * D.groups * n;
      for (int64_t grp = 1; grp < D.groups; ++grp) {
        add_to(gq_b, gq_b + grp * n, n);
        add_to(gp_b, gp_b + grp * n, n);
      }
      transpose_padded(gq_b, lp, dm, L, q[m].data() + b * L * dmp, dmp);
    });

    for (int m = 0; m < 2; ++m) {
      const int64_t dm = D.dm(m), dmp = D.dmp(m);
      // grad x = grad out + grad Q w_c^T (in place: grad out is no longer needed)
      batch_gemm<T>(D.rows(), dm, q[m].data(), dmp, 1, W[m].wct.panel(), g[m], dmp, true);
      // grad w_c += x^T grad Q
      batch_gemm<T>(dm, D.rows(), it.x[m], 1, dm, Panel<T>{q[m].data(), dmp}, gw[set][m].wc.data(), dmp, true);
    }

    // grad x += w_j grad P^T + grad J (both modalities' parts, in order).
    parallel_tasks(
        B * 2, D.rows() * D.d * L, [&] { return Buffer<T>(std::max(D.da, D.dv) * lp); },
        [&](int64_t i, Buffer<T>& tmp) {
          const int64_t b = i / 2;
          const int m = static_cast<int>(i % 2);
          const int64_t dm = D.dm(m), dmp = D.dmp(m), off = D.offset(m);
          const T* gp_b = gp[m].data() + b * D.groups * dm * lp;
          gemm<T>(dm, lp / V, L, gp_b, lp, 1, W[m].wjt.data(), lp, tmp.data(), lp, false);
          for (int64_t l = 0; l < L; ++l) {
            T* row = g[m] + (b * L + l) * dmp;
            const T* j0 = gh[0].data() + (b * L + l) * D.ldh + off;
            const T* j1 = gh[1].data() + (b * L + l) * D.ldh + off;
            for (int64_t r = 0; r < dm; ++r) row[r] += tmp[r * lp + l] + j0[r] + j1[r];
          }
        });

    // grad w_j += sum_b x[b] grad P[b], samples in order.
    for (int m = 0; m < 2; ++m) {
      const int64_t dm = D.dm(m);
      for (int64_t b = 0; b < B; ++b) {
        gemm<T>(L, lp / V, dm, it.x[m] + b * L * dm, dm, 1, gp[m].data() + b * D.groups * dm * lp, lp,
                gwj.data(), lp, b > 0);
      }
      T* acc = gw[set][m].wj.data();
      if (B > 0) {
        add_to(acc, gwj.data(), L * lp);
      }
    }
  }
}

template <typename T>
std::array<at::Tensor, 6> contiguous_weights(const std::array<at::Tensor, 6>& w) {
  std::array<at::Tensor, 6> c;
  for (int i = 0; i < 6; ++i) c[i] = w[i].contiguous();
  return c;
}

}  // namespace

Forward cpu_rja_forward(const at::Tensor& xa_in, const at::Tensor& xv_in, const at::Tensor& w_ja,
                        const at::Tensor& w_jv, const at::Tensor& w_ca, const at::Tensor& w_cv,
                        const at::Tensor& w_ha, const at::Tensor& w_hv, int64_t iterations, bool h_tanh,
                        bool out_relu) {
  TORCH_CHECK(iterations >= 1, "rja::cpu_rja_forward: iterations must be >= 1");
  const FlushDenormals ftz;
  const at::Tensor xa = xa_in.contiguous(), xv = xv_in.contiguous();
  const std::array<at::Tensor, 6> w = {w_ja.contiguous(), w_jv.contiguous(), w_ca.contiguous(),
                                       w_cv.contiguous(), w_ha.contiguous(), w_hv.contiguous()};
  at::Tensor xa_iters = at::empty({iterations, xa.size(0), xa.size(1), xa.size(2)}, xa.options());
  at::Tensor xv_iters = at::empty({iterations, xv.size(0), xv.size(1), xv.size(2)}, xv.options());
  at::Tensor xa_out = at::empty(xa.sizes(), xa.options()), xv_out = at::empty(xv.sizes(), xv.options());
  xa_iters[0].copy_(xa);
  xv_iters[0].copy_(xv);
  if (xa.size(0) == 0) return {xa_out, xv_out, xa_iters, xv_iters};
  AT_DISPATCH_FLOATING_TYPES(xa.scalar_type(), "rja_cpu_rja_forward", [&] {
    const Dims<scalar_t> D(xa, xv, w[0]);
    forward_impl(D, weight_pointers<scalar_t>(w), iterations, h_tanh, out_relu, xa_iters, xv_iters, xa_out,
                 xv_out);
  });
  return {xa_out, xv_out, xa_iters, xv_iters};
}

std::vector<at::Tensor> cpu_rja_backward(const at::Tensor& grad_xa, const at::Tensor& grad_xv,
                                         const at::Tensor& xa_iters_in, const at::Tensor& xv_iters_in,
                                         const at::Tensor& w_ja, const at::Tensor& w_jv,
                                         const at::Tensor& w_ca, const at::Tensor& w_cv,
                                         const at::Tensor& w_ha, const at::Tensor& w_hv, bool h_tanh,
                                         bool out_relu) {
  const FlushDenormals ftz;
  const at::Tensor xa_iters = xa_iters_in.contiguous(), xv_iters = xv_iters_in.contiguous();
  const std::array<at::Tensor, 6> w = {w_ja.contiguous(), w_jv.contiguous(), w_ca.contiguous(),
                                       w_cv.contiguous(), w_ha.contiguous(), w_hv.contiguous()};
  const std::array<at::Tensor, 2> grad_out = {grad_xa.contiguous(), grad_xv.contiguous()};
  std::vector<at::Tensor> grads = {at::empty(grad_out[0].sizes(), grad_out[0].options()),
                                   at::empty(grad_out[1].sizes(), grad_out[1].options())};
  for (int i = 0; i < 6; ++i) grads.push_back(at::zeros_like(w[i]));
  if (xa_iters.size(1) == 0) {
    grads[0].zero_();
    grads[1].zero_();
    return grads;
  }
  AT_DISPATCH_FLOATING_TYPES(xa_iters.scalar_type(), "rja_cpu_rja_backward", [&] {
    using T = scalar_t;
    const Dims<T> D(xa_iters[0], xv_iters[0], w[0]);
    // Gradients with rows padded to the vector width; weight gradients per set, padded likewise.
    std::vector<OutputArray<T>> g;
    for (int m = 0; m < 2; ++m) {
      g.emplace_back(grads[m].data_ptr<T>(), D.rows(), D.dm(m), D.dmp(m));
      copy_padded(grad_out[m].data_ptr<T>(), D.dm(m), D.rows(), D.dm(m), g[m].data(), D.dmp(m));
    }
    std::vector<std::array<GradWeights<T>, 2>> gw;
    for (int64_t set = 0; set < D.tw; ++set) {
      gw.push_back({GradWeights<T>{Buffer<T>(D.L * D.lp),
                                   OutputArray<T>(grads[4].data_ptr<T>() + set * D.da * D.da, D.da, D.da, D.dmp(0)),
                                   OutputArray<T>(grads[6].data_ptr<T>() + set * D.d * D.da, D.d, D.da, D.dmp(0))},
                    GradWeights<T>{Buffer<T>(D.L * D.lp),
                                   OutputArray<T>(grads[5].data_ptr<T>() + set * D.dv * D.dv, D.dv, D.dv, D.dmp(1)),
                                   OutputArray<T>(grads[7].data_ptr<T>() + set * D.d * D.dv, D.d, D.dv, D.dmp(1))}});
    }
    backward_impl(D, weight_pointers<T>(w), h_tanh, out_relu, xa_iters, xv_iters, {g[0].data(), g[1].data()}, gw);
    for (int m = 0; m < 2; ++m) {
      g[m].copy_out();
      for (int64_t set = 0; set < D.tw; ++set) {
        copy_padded(gw[set][m].wj.data(), D.lp, D.L, D.L, grads[2 + m].data_ptr<T>() + set * D.L * D.L, D.L);
        gw[set][m].wc.copy_out();
        gw[set][m].wh.copy_out();
      }
    }
  });
  return grads;
}

}  // namespace rja_cpu
