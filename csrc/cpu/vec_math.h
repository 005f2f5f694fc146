// Vector types and math of the CPU kernel: ATen's Vectorized<T>, an accurate fast tanh, and the
// one register-blocked GEMM micro-kernel that every contraction of the operator goes through.
#pragma once

// A minimal SIMD vector: the AVX2 specialisations when the compiler targets AVX2+FMA (the
// extension is built with -march=native), else a portable fixed-width array the compiler
// auto-vectorises. (ATen's Vectorized<T> headers need C++20 and emit unknown-pragma warnings under
// GCC, which the -Werror build of this extension does not allow.)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RJA_AVX2 1
#endif

namespace rja_cpu {

// Portable fallback: 32 bytes of lanes, as the AVX2 registers hold.
template <typename T>
struct Vec {
  static constexpr int64_t size() { return 32 / sizeof(T); }
  T v[32 / sizeof(T)];
  Vec() = default;
  explicit Vec(T x) { std::fill(v, v + size(), x); }
  static Vec loadu(const T* p) { Vec r; std::memcpy(r.v, p, sizeof(r.v)); return r; }
  static Vec loadu(const T* p, int64_t n) { Vec r(T(0)); std::memcpy(r.v, p, n * sizeof(T)); return r; }
  void store(T* p) const { std::memcpy(p, v, sizeof(v)); }
  void store(T* p, int64_t n) const { std::memcpy(p, v, n * sizeof(T)); }
  template <typename F>
  Vec map(F f) const { Vec r; for (int64_t i = 0; i < size(); ++i) r.v[i] = f(v[i]); return r; }
  template <typename F>
  Vec zip(const Vec& o, F f) const { Vec r; for (int64_t i = 0; i < size(); ++i) r.v[i] = f(v[i], o.v[i]); return r; }
  Vec operator+(const Vec& o) const { return zip(o, [](T a, T b) { return a + b; }); }
  Vec operator*(const Vec& o) const { return zip(o, [](T a, T b) { return a * b; }); }
  Vec operator-(const Vec& o) const { return zip(o, [](T a, T b) { return a - b; }); }
  // relu that keeps NaN, as torch.relu does
  Vec relu() const { return map([](T a) { return a > T(0) || a != a ? a : T(0); }); }
  // this where z > 0, else 0
  Vec where_positive(const Vec& z) const { return zip(z, [](T a, T b) { return b > T(0) ? a : T(0); }); }
};

template <typename T>
inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return a.zip(b, [](T x, T y) { return x * y; }).zip(c, [](T x, T y) { return x + y; });
}

#if defined(RJA_AVX2)
#define RJA_DEFINE_AVX2_VEC(T, R, SFX)                                                              \
  template <>                                                                                       \
  struct Vec<T> {                                                                                   \
    static constexpr int64_t size() { return sizeof(R) / sizeof(T); }                               \
    R v;                                                                                            \
    Vec() = default;                                                                                \
    Vec(R x) : v(x) {}                                                                              \
    explicit Vec(T x) : v(_mm256_set1_##SFX(x)) {}                                                  \
    operator R() const { return v; }                                                                \
    static Vec loadu(const T* p) { return _mm256_loadu_##SFX(p); }                                  \
    static Vec loadu(const T* p, int64_t n) {                                                       \
      T tmp[size()] = {};                                                                           \
      std::memcpy(tmp, p, n * sizeof(T));                                                           \
      return loadu(tmp);                                                                            \
    }                                                                                               \
    void store(T* p) const { _mm256_storeu_##SFX(p, v); }                                           \
    void store(T* p, int64_t n) const {                                                             \
      T tmp[size()];                                                                                \
      store(tmp);                                                                                   \
      std::memcpy(p, tmp, n * sizeof(T));                                                           \
    }                                                                                               \
    template <typename F>                                                                           \
    Vec map(F f) const {                                                                            \
      T tmp[size()];                                                                                \
      store(tmp);                                                                                   \
      for (auto& x : tmp) x = f(x);                                                                 \
      return loadu(tmp);                                                                            \
    }                                                                                               \
    Vec operator+(const Vec& o) const { return _mm256_add_##SFX(v, o.v); }                          \
    Vec operator*(const Vec& o) const { return _mm256_mul_##SFX(v, o.v); }                          \
    Vec operator-(const Vec& o) const { return _mm256_sub_##SFX(v, o.v); }                          \
    /* max returns its second operand when either is NaN: NaN stays NaN, as in torch.relu */       \
    Vec relu() const { return _mm256_max_##SFX(_mm256_setzero_##SFX(), v); }                       \
    Vec where_positive(const Vec& z) const {                                                        \
      return _mm256_and_##SFX(_mm256_cmp_##SFX(z.v, _mm256_setzero_##SFX(), _CMP_GT_OQ), v);       \
    }                                                                                               \
  };                                                                                                \
  template <>                                                                                       \
  inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {                          \
    return _mm256_fmadd_##SFX(a.v, b.v, c.v);                                                       \
  }

RJA_DEFINE_AVX2_VEC(float, __m256, ps)
RJA_DEFINE_AVX2_VEC(double, __m256d, pd)
#undef RJA_DEFINE_AVX2_VEC
#endif

template <typename T>
constexpr int64_t kLanes = Vec<T>::size();

// Rows of a feature block: two vectors, so a micro-kernel tile is MR x (2 vectors).
template <typename T>
constexpr int64_t kRows = 2 * kLanes<T>;

// Largest micro-kernel height: 6 x 2 accumulators + 2 loads + 1 broadcast fill the 16 AVX2
// registers.
constexpr int64_t kMr = 6;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
inline Vec<T> vec_tanh(Vec<T> x) {
  return x.map([](T a) { return std::tanh(a); });  // float64, and float32 without AVX2
}

#if defined(RJA_AVX2)
// float32 tanh within ~5 ulp (absolute error <= 2.5e-7; tests/test_cpu_kernel.py checks it against
// float64 tanh), about twice as cheap as SLEEF's: tanh(x) = x P(x^2) / Q(x^2) with P, Q of degree
// 4, fitted by minimising the relative error on [0, 9] (Lawson-weighted least squares). All
// coefficients are positive, so Horner's scheme is well conditioned; for |x| >= 9 tanh rounds to
// +-1 in float32, hence the clamp. Each operand order below lets NaN through min/max.
template <>
inline Vec<float> vec_tanh<float>(Vec<float> xv) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-9.0f), _mm256_min_ps(_mm256_set1_ps(9.0f), xv.v));
  const __m256 s = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(1.3355366618172937e-08f);
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(2.0609589590817132e-05f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(3.4956188062856865e-03f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.3381051412499304e-01f));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(9.9999997944839991e-01f));
  __m256 q = _mm256_set1_ps(7.7768466057864805e-07f);
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(3.2856851029685615e-04f));
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(2.5877098737060105e-02f));
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(4.6714367006913515e-01f));
  q = _mm256_fmadd_ps(q, s, one);
  // The approximation may overshoot 1 by an ulp near saturation; tanh never does.
  const __m256 t = _mm256_div_ps(_mm256_mul_ps(x, p), q);
  return _mm256_max_ps(_mm256_set1_ps(-1.0f), _mm256_min_ps(one, t));
}
#endif

// out[i, 0:2V] (+)= sum_{kk < K} A(i, kk) * B[kk, 0:2V] for i < MR, with A(i, kk) = a[i*a_i + kk*a_k]
// broadcast and B's rows b + kk*b_k two vectors wide: an outer-product update whose MR x 2
// accumulators stay in registers for the whole reduction.
template <typename T, int MR>
inline void micro_kernel(int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b, int64_t b_k,
                         T* out, int64_t ld, bool accumulate) {
  constexpr int64_t V = kLanes<T>;
  Vec<T> acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = accumulate ? Vec<T>::loadu(out + i * ld) : Vec<T>(T(0));
    acc[i][1] = accumulate ? Vec<T>::loadu(out + i * ld + V) : Vec<T>(T(0));
  }
  for (int64_t kk = 0; kk < K; ++kk) {
    const Vec<T> b0 = Vec<T>::loadu(b + kk * b_k);
    const Vec<T> b1 = Vec<T>::loadu(b + kk * b_k + V);
    for (int i = 0; i < MR; ++i) {
      const Vec<T> ai(a[i * a_i + kk * a_k]);
      acc[i][0] = fmadd(ai, b0, acc[i][0]);
      acc[i][1] = fmadd(ai, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    acc[i][0].store(out + i * ld);
    acc[i][1].store(out + i * ld + V);
  }
}

// out[i, j] (+)= sum_kk A(i, kk) * B[kk, j] for i < M and j < n_col_blocks * kRows<T>: a small GEMM
// whose output columns come in blocks of two vectors (B and out are padded to that width).
template <typename T>
void gemm(int64_t M, int64_t n_col_blocks, int64_t K, const T* a, int64_t a_i, int64_t a_k,
          const T* b, int64_t b_k, T* out, int64_t ld, bool accumulate) {
  for (int64_t cb = 0; cb < n_col_blocks; ++cb) {
    const T* bb = b + cb * kRows<T>;
    T* oo = out + cb * kRows<T>;
    // Row blocks of kMr; a remainder of 1 or 2 rows is merged with the last full block and split
    // in two halves (a 2-row kernel has too few accumulators to hide the FMA latency).
    const int64_t rem = M % kMr;
    const int64_t full = M / kMr - ((rem == 1 || rem == 2) && M > kMr ? 1 : 0);
    int64_t i = 0;
    for (; i < full * kMr; i += kMr) {
      micro_kernel<T, kMr>(K, a + i * a_i, a_i, a_k, bb, b_k, oo + i * ld, ld, accumulate);
    }
    while (i < M) {
      const int64_t left = M - i;
      const int64_t rows = left > kMr ? left - left / 2 : left;
      const T* ai = a + i * a_i;
      T* oi = oo + i * ld;
      switch (rows) {
        case 6: micro_kernel<T, 6>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
        case 5: micro_kernel<T, 5>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
        case 4: micro_kernel<T, 4>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
        case 3: micro_kernel<T, 3>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
        case 2: micro_kernel<T, 2>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
        default: micro_kernel<T, 1>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      }
      i += rows;
    }
  }
}

}  // namespace rja_cpu
