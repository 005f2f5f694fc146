// Vector types and math of the CPU kernels: a minimal SIMD vector (AVX-512, AVX2 or portable), an
// accurate fast float32 tanh, and the register-blocked GEMM micro-kernel that every contraction of
// both operators goes through.
#pragma once

// ATen's Vectorized<T> headers emit unknown-pragma warnings under GCC, which the -Werror build of
// this extension does not allow, hence this small vector of our own. The widest ISA the compiler
// targets is used (the extension is built with -march=native by default): AVX-512F, else
// AVX2+FMA, else a portable fixed-width array the compiler auto-vectorises.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define RJA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define RJA_AVX2 1
#endif
#if defined(RJA_AVX512) || defined(RJA_AVX2)
// GCC 12's AVX-512 intrinsics initialise their "undefined" operands from themselves, which
// -Wuninitialized reports at the header's lines; the header is included here first.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace rja_cpu {

// Bytes of one vector register.
#if defined(RJA_AVX512)
constexpr int64_t kVecBytes = 64;
#else
constexpr int64_t kVecBytes = 32;
#endif

// Portable fallback: kVecBytes of lanes.
template <typename T>
struct Vec {
  static constexpr int64_t size() { return kVecBytes / static_cast<int64_t>(sizeof(T)); }
  T v[kVecBytes / sizeof(T)];
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
  // this * (z > 0): a mask that multiplies, as the reference's, so NaN and inf stay NaN.
  Vec times_positive(const Vec& z) const { return zip(z, [](T a, T b) { return a * T(b > T(0) ? 1 : 0); }); }
};

template <typename T>
inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return a.zip(b, [](T x, T y) { return x * y; }).zip(c, [](T x, T y) { return x + y; });
}

// c - a * b
template <typename T>
inline Vec<T> fnmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return c - a * b;
}

#if defined(RJA_AVX512)
// Tail loads and stores are masked; max returns its second operand when either is NaN, so
// max(0, v) keeps NaN as torch.relu does.
#define RJA_DEFINE_VEC(T, R, SFX, MASK)                                                             \
  template <>                                                                                       \
  struct Vec<T> {                                                                                   \
    static constexpr int64_t size() { return sizeof(R) / sizeof(T); }                               \
    R v;                                                                                            \
    Vec() = default;                                                                                \
    Vec(R x) : v(x) {}                                                                              \
    explicit Vec(T x) : v(_mm512_set1_##SFX(x)) {}                                                  \
    operator R() const { return v; }                                                                \
    static MASK tail(int64_t n) { return static_cast<MASK>((uint32_t(1) << n) - 1); }               \
    static Vec loadu(const T* p) { return _mm512_loadu_##SFX(p); }                                  \
    static Vec loadu(const T* p, int64_t n) { return _mm512_maskz_loadu_##SFX(tail(n), p); }        \
    void store(T* p) const { _mm512_storeu_##SFX(p, v); }                                           \
    void store(T* p, int64_t n) const { _mm512_mask_storeu_##SFX(p, tail(n), v); }                  \
    template <typename F>                                                                           \
    Vec map(F f) const {                                                                            \
      alignas(64) T tmp[size()];                                                                    \
      store(tmp);                                                                                   \
      for (auto& x : tmp) x = f(x);                                                                 \
      return loadu(tmp);                                                                            \
    }                                                                                               \
    Vec operator+(const Vec& o) const { return _mm512_add_##SFX(v, o.v); }                          \
    Vec operator*(const Vec& o) const { return _mm512_mul_##SFX(v, o.v); }                          \
    Vec operator-(const Vec& o) const { return _mm512_sub_##SFX(v, o.v); }                          \
    Vec relu() const { return _mm512_max_##SFX(_mm512_setzero_##SFX(), v); }                       \
    /* lanes where !(z > 0) (z <= 0 or NaN) become v * 0: 0, or NaN where v is NaN or inf */      \
    Vec times_positive(const Vec& z) const {                                                        \
      const R zero = _mm512_setzero_##SFX();                                                        \
      return _mm512_mask_mul_##SFX(v, _mm512_cmp_##SFX##_mask(z.v, zero, _CMP_NGT_UQ), v, zero);   \
    }                                                                                               \
  };                                                                                                \
  template <>                                                                                       \
  inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {                          \
    return _mm512_fmadd_##SFX(a.v, b.v, c.v);                                                       \
  }                                                                                                 \
  template <>                                                                                       \
  inline Vec<T> fnmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {                         \
    return _mm512_fnmadd_##SFX(a.v, b.v, c.v);                                                      \
  }

RJA_DEFINE_VEC(float, __m512, ps, __mmask16)
RJA_DEFINE_VEC(double, __m512d, pd, __mmask8)
#undef RJA_DEFINE_VEC
#elif defined(RJA_AVX2)
#define RJA_DEFINE_VEC(T, R, SFX)                                                                   \
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
    Vec relu() const { return _mm256_max_##SFX(_mm256_setzero_##SFX(), v); }                       \
    Vec times_positive(const Vec& z) const {                                                        \
      const R gt = _mm256_cmp_##SFX(z.v, _mm256_setzero_##SFX(), _CMP_GT_OQ);                       \
      return _mm256_mul_##SFX(v, _mm256_and_##SFX(gt, _mm256_set1_##SFX(T(1))));                    \
    }                                                                                               \
  };                                                                                                \
  template <>                                                                                       \
  inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {                          \
    return _mm256_fmadd_##SFX(a.v, b.v, c.v);                                                       \
  }                                                                                                 \
  template <>                                                                                       \
  inline Vec<T> fnmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {                         \
    return _mm256_fnmadd_##SFX(a.v, b.v, c.v);                                                      \
  }

RJA_DEFINE_VEC(float, __m256, ps)
RJA_DEFINE_VEC(double, __m256d, pd)
#undef RJA_DEFINE_VEC
#endif

template <typename T>
constexpr int64_t kLanes = Vec<T>::size();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- tanh ---------------------------------------------------------------------------------------

template <typename T>
inline Vec<T> vec_tanh(Vec<T> x) {
  return x.map([](T a) { return std::tanh(a); });  // float64, and float32 without AVX2
}

// float32 tanh = x P(x^2) / Q(x^2) with P, Q of degree 4, fitted by minimising the relative error
// on [0, 9] (Lawson-weighted least squares); about twice as cheap as SLEEF's. All coefficients
// are positive, so Horner's scheme is well conditioned. For |x| >= 9 tanh rounds to +-1 in
// float32: x^2 is clamped at 81 (one operation, where clamping x costs two; it also keeps x = inf
// from becoming inf / inf), so x P(81) / Q(81) >= 1 there and the final clamp gives +-1. Each
// operand order of min/max lets NaN through. Error against float64
// tanh, measured over every float32 in [0, 9] (the code is odd-symmetric; beyond 9 it returns +-1,
// as tanh rounds): at most 3.113e-7 absolute and 5.223 ulp of the float32 spacing at the exact
// value, both at x = 8.790288 (tests/test_cpu_tanh.py samples the sweep; RJA_FULL_TANH_SWEEP=1
// repeats it in full).
#define RJA_TANH_BODY(PFX, SFX)                                                                     \
  const auto one = PFX##_set1_##SFX(1.0f);                                                          \
  const auto x = xv.v;                                                                              \
  const auto s = PFX##_min_##SFX(PFX##_set1_##SFX(81.0f), PFX##_mul_##SFX(x, x));                   \
  auto p = PFX##_set1_##SFX(1.3355366618172937e-08f);                                               \
  p = PFX##_fmadd_##SFX(p, s, PFX##_set1_##SFX(2.0609589590817132e-05f));                           \
  p = PFX##_fmadd_##SFX(p, s, PFX##_set1_##SFX(3.4956188062856865e-03f));                           \
  p = PFX##_fmadd_##SFX(p, s, PFX##_set1_##SFX(1.3381051412499304e-01f));                           \
  p = PFX##_fmadd_##SFX(p, s, PFX##_set1_##SFX(9.9999997944839991e-01f));                           \
  auto q = PFX##_set1_##SFX(7.7768466057864805e-07f);                                               \
  q = PFX##_fmadd_##SFX(q, s, PFX##_set1_##SFX(3.2856851029685615e-04f));                           \
  q = PFX##_fmadd_##SFX(q, s, PFX##_set1_##SFX(2.5877098737060105e-02f));                           \
  q = PFX##_fmadd_##SFX(q, s, PFX##_set1_##SFX(4.6714367006913515e-01f));                           \
  q = PFX##_fmadd_##SFX(q, s, one);                                                                 \
  /* The approximation may overshoot 1 by an ulp near saturation; tanh never does. */              \
  const auto t = PFX##_div_##SFX(PFX##_mul_##SFX(x, p), q);                                         \
  return PFX##_max_##SFX(PFX##_set1_##SFX(-1.0f), PFX##_min_##SFX(one, t));

#if defined(RJA_AVX512)
template <>
inline Vec<float> vec_tanh<float>(Vec<float> xv) { RJA_TANH_BODY(_mm512, ps) }
#elif defined(RJA_AVX2)
template <>
inline Vec<float> vec_tanh<float>(Vec<float> xv) { RJA_TANH_BODY(_mm256, ps) }
#endif
#undef RJA_TANH_BODY

// tanh accurate to about half an ulp of float32, for the few tanh whose error the backward
// amplifies: relu(tanh(G)) (h_tanh) has the derivative (1 - H^2), and where tanh(G) is near +-1 an
// absolute error of 5 ulp in H is a large relative error in 1 - H^2. Evaluated in float64:
// tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) (range-reduced by powers of 2, Taylor degree 9,
// relative error < 1e-11), and tanh x = x below 1e-5, where that is exact to float32 precision.
// About 5x the cost of vec_tanh; used on L x d elements per sample and modality, not dm x d.
template <typename T>
inline Vec<T> vec_tanh_accurate(Vec<T> x) {
  return x.map([](T a) { return std::tanh(a); });
}

#if defined(RJA_AVX512) || defined(RJA_AVX2)
#if defined(RJA_AVX512)
#define RJA_PD(OP) _mm512_##OP##_pd
using rja_pd = __m512d;
#else
#define RJA_PD(OP) _mm256_##OP##_pd
using rja_pd = __m256d;
#endif
// tanh of float64 lanes via exp, as described above.
inline rja_pd tanh_pd(rja_pd x) {
  const rja_pd sign = RJA_PD(set1)(-0.0);
  const rja_pd a = RJA_PD(min)(RJA_PD(set1)(20.0), RJA_PD(andnot)(sign, x));  // |x|, NaN kept
  const rja_pd y = RJA_PD(mul)(RJA_PD(set1)(-2.0), a);                           // in [-40, 0]
#if defined(RJA_AVX512)
  const rja_pd n = _mm512_roundscale_pd(RJA_PD(mul)(y, RJA_PD(set1)(1.4426950408889634)), 0);
#else
  const rja_pd n = _mm256_round_pd(RJA_PD(mul)(y, RJA_PD(set1)(1.4426950408889634)), 0);
#endif
  rja_pd r = RJA_PD(fnmadd)(n, RJA_PD(set1)(6.93147180369123816490e-01), y);
  r = RJA_PD(fnmadd)(n, RJA_PD(set1)(1.90821492927058770002e-10), r);              // |r| <= ln2 / 2
  rja_pd p = RJA_PD(set1)(1.0 / 362880);
  for (const double c : {1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0}) {
    p = RJA_PD(fmadd)(p, r, RJA_PD(set1)(c));
  }
#if defined(RJA_AVX512)
  const rja_pd e = _mm512_scalef_pd(p, n);
#else
  const __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)),
                                                          _mm256_set1_epi64x(1023)), 52);
  const rja_pd e = RJA_PD(mul)(p, _mm256_castsi256_pd(bits));
#endif
  const rja_pd one = RJA_PD(set1)(1.0);
  rja_pd t = RJA_PD(div)(RJA_PD(sub)(one, e), RJA_PD(add)(one, e));
#if defined(RJA_AVX512)
  t = _mm512_mask_mov_pd(t, _mm512_cmp_pd_mask(a, RJA_PD(set1)(1e-5), _CMP_LT_OQ), a);
#else
  t = _mm256_blendv_pd(t, a, _mm256_cmp_pd(a, RJA_PD(set1)(1e-5), _CMP_LT_OQ));
#endif
  return RJA_PD(or)(t, RJA_PD(and)(sign, x));  // the sign of x (tanh is odd)
}
#undef RJA_PD

template <>
inline Vec<float> vec_tanh_accurate<float>(Vec<float> x) {
#if defined(RJA_AVX512)
  const __m512d lo = tanh_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(x.v)));
  const __m512d hi = tanh_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(x.v, 1)));
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
#else
  const __m256d lo = tanh_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x.v)));
  const __m256d hi = tanh_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1)));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
#endif
}
#endif

// ---- GEMM ---------------------------------------------------------------------------------------

// An epilogue transforms each accumulator vector just before it is stored at `out`.
struct NoEpilogue {
  template <typename V, typename T>
  void operator()(V&, const T*) const {}
};

// out[i, 0:NR*V] (+)= sum_{kk < K} A(i, kk) * B[kk, 0:NR*V] for i < MR, with A(i, kk) =
// a[i*a_i + kk*a_k] broadcast and B's rows b + kk*b_k NR vectors wide: an outer-product update
// whose MR x NR accumulators stay in registers for the whole reduction, then pass through `epi`.
// Every loop over i and j is unrolled in full: only then does GCC keep acc[][] in registers. With
// the zeroing and epilogue loops left rolled it kept the array on the stack and copied it in and
// out around the reduction (72 extra stores per block), which cost the K = 16 tile contractions
// of the paper form ~40% of their time.
template <typename T, int MR, int NR, typename Epi>
inline void micro_kernel(int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b, int64_t b_k,
                         T* out, int64_t ld, bool accumulate, const Epi& epi) {
  constexpr int64_t V = kLanes<T>;
  Vec<T> acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? Vec<T>::loadu(out + i * ld + j * V) : Vec<T>(T(0));
  }
  int64_t kk = 0;
  for (; kk < K; ++kk) {
    Vec<T> bj[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) bj[j] = Vec<T>::loadu(b + kk * b_k + j * V);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const Vec<T> ai(a[i * a_i + kk * a_k]);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = fmadd(ai, bj[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      T* o = out + i * ld + j * V;
      epi(acc[i][j], o);
      acc[i][j].store(o);
    }
  }
}

// Register blocking: NR vectors wide, up to kMaxMr(NR) rows (accumulators + NR loads + one
// broadcast within the register file: 32 registers with AVX-512, 16 otherwise).
#if defined(RJA_AVX512)
constexpr int kMaxNr = 4;
constexpr int kMaxMr(int nr) { return nr >= 4 ? 6 : nr == 3 ? 8 : 12; }
#else
constexpr int kMaxNr = 2;
constexpr int kMaxMr(int nr) { return nr >= 2 ? 6 : 12; }
#endif

template <typename T, int NR, typename Epi>
inline void micro_rows(int rows, int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b, int64_t b_k,
                       T* out, int64_t ld, bool accumulate, const Epi& epi) {
  switch (rows) {
#define RJA_ROWS_CASE(R)                                                                            \
  case R:                                                                                           \
    if constexpr (R <= kMaxMr(NR)) micro_kernel<T, R, NR>(K, a, a_i, a_k, b, b_k, out, ld, accumulate, epi); \
    break;
    RJA_ROWS_CASE(12) RJA_ROWS_CASE(11) RJA_ROWS_CASE(10) RJA_ROWS_CASE(9) RJA_ROWS_CASE(8)
    RJA_ROWS_CASE(7) RJA_ROWS_CASE(6) RJA_ROWS_CASE(5) RJA_ROWS_CASE(4) RJA_ROWS_CASE(3)
    RJA_ROWS_CASE(2)
#undef RJA_ROWS_CASE
    default: micro_kernel<T, 1, NR>(K, a, a_i, a_k, b, b_k, out, ld, accumulate, epi); break;
  }
}

// All rows i < M of one column block NR vectors wide, in blocks of kMaxMr(NR) rows; a remainder
// under half a block is merged with the last full block and the two split evenly (too few
// accumulators hide the FMA latency poorly).
template <typename T, int NR, typename Epi>
inline void gemm_column_block(int64_t M, int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b,
                              int64_t b_k, T* out, int64_t ld, bool accumulate, const Epi& epi) {
  constexpr int64_t mr = kMaxMr(NR);
  const int64_t rem = M % mr;
  const int64_t full = M / mr - (rem > 0 && rem < mr / 2 && M > mr ? 1 : 0);
  int64_t i = 0;
  for (; i < full * mr; i += mr) {
    micro_kernel<T, mr, NR>(K, a + i * a_i, a_i, a_k, b, b_k, out + i * ld, ld, accumulate, epi);
  }
  while (i < M) {
    const int64_t left = M - i;
    const int rows = static_cast<int>(left > mr ? left - left / 2 : left);
    micro_rows<T, NR>(rows, K, a + i * a_i, a_i, a_k, b, b_k, out + i * ld, ld, accumulate, epi);
    i += rows;
  }
}

// out[i, j] (+)= sum_kk A(i, kk) * B[kk, j] for i < M and j < nv * kLanes<T>: a small GEMM whose
// output columns are whole vectors (B and out padded to that width), then `epi` on every output
// vector. Each output element is one register's chain over kk = 0, 1, ..., K-1, whatever the
// blocking: results do not depend on how a caller splits M or the columns.
template <typename T, typename Epi = NoEpilogue>
void gemm(int64_t M, int64_t nv, int64_t K, const T* a, int64_t a_i, int64_t a_k, const T* b, int64_t b_k,
          T* out, int64_t ld, bool accumulate, const Epi& epi = Epi()) {
  constexpr int64_t V = kLanes<T>;
  int64_t j = 0;
  for (; j + kMaxNr <= nv; j += kMaxNr) {
    gemm_column_block<T, kMaxNr>(M, K, a, a_i, a_k, b + j * V, b_k, out + j * V, ld, accumulate, epi);
  }
  switch (nv - j) {
#if defined(RJA_AVX512)
    case 3: gemm_column_block<T, 3>(M, K, a, a_i, a_k, b + j * V, b_k, out + j * V, ld, accumulate, epi); break;
    case 2: gemm_column_block<T, 2>(M, K, a, a_i, a_k, b + j * V, b_k, out + j * V, ld, accumulate, epi); break;
#endif
    case 1: gemm_column_block<T, 1>(M, K, a, a_i, a_k, b + j * V, b_k, out + j * V, ld, accumulate, epi); break;
    default: break;
  }
}

}  // namespace rja_cpu
