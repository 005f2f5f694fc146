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
// float32 tanh within a few ulp of the correctly rounded result (tests/test_cpu_kernel.py checks
// it against float64 tanh), several times cheaper than SLEEF's. Cephes' tanhf scheme:
//   |x| <  0.625: x + x^3 P(x^2), a minimax odd polynomial (no cancellation near 0);
//   |x| >= 0.625: (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29, so 1 - e does not cancel.
// |x| is clamped at 10 (tanh(10) rounds to 1 in float32); NaN propagates through the clamp.
template <>
inline Vec<float> vec_tanh<float>(Vec<float> xv) {
  const __m256 x = xv;
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 ax = _mm256_andnot_ps(sign_bit, x);
  // min(10, ax) returns its second operand, ax, when ax is NaN.
  const __m256 y = _mm256_mul_ps(_mm256_min_ps(_mm256_set1_ps(10.0f), ax), _mm256_set1_ps(-2.0f));
  // exp(y), y in [-20, 0]: y = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2).
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), y);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 large = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));

  const __m256 s = _mm256_mul_ps(ax, ax);
  __m256 q = _mm256_set1_ps(-5.70498872745e-3f);
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(2.06390887954e-2f));
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(-5.37397155531e-2f));
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(1.33314422036e-1f));
  q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(q, s), ax, ax);

  const __m256 is_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
  const __m256 t = _mm256_blendv_ps(large, small, is_small);
  return _mm256_or_ps(t, _mm256_and_ps(x, sign_bit));
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
    int64_t i = 0;
    for (; i + kMr <= M; i += kMr) {
      micro_kernel<T, kMr>(K, a + i * a_i, a_i, a_k, bb, b_k, oo + i * ld, ld, accumulate);
    }
    const T* ai = a + i * a_i;
    T* oi = oo + i * ld;
    switch (M - i) {
      case 5: micro_kernel<T, 5>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      case 4: micro_kernel<T, 4>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      case 3: micro_kernel<T, 3>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      case 2: micro_kernel<T, 2>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      case 1: micro_kernel<T, 1>(K, ai, a_i, a_k, bb, b_k, oi, ld, accumulate); break;
      default: break;
    }
  }
}

}  // namespace rja_cpu
