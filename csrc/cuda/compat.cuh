// What the kernel source needs from CUDA, in two builds: nvcc (the real thing) and the host
// compiler with RJA_EMULATE (csrc/emu/emu.h, which checks every memory access and barrier).
//
// Kernels reach memory only through Ptr<T> (a raw pointer under nvcc, a bounds-checked view under
// the emulator), slice() (a named sub-buffer), reinterpret_slice() (one of another element type)
// and the RJA_*_SHARED macros. nvcuda::wmma is <mma.h> under nvcc, csrc/emu/wmma.h emulated.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef RJA_EMULATE

#include "../emu/emu.h"

#define RJA_DEVICE inline
#define RJA_HOST_DEVICE inline

namespace rja {
using emu::Ptr;
using emu::reinterpret_slice;
using emu::slice;
template <class T>
Ptr<T> make_ptr(T* p, std::int64_t n, const char* name) {
  return Ptr<T>(p, n, name);
}
}  // namespace rja

#define RJA_DYNAMIC_SHARED(T, name) ::emu::Ptr<T> name = ::emu::dynamic_shared<T>(#name)
#define RJA_STATIC_SHARED(T, name, count) \
  static const char name##_declaration_ = 0; \
  ::emu::Ptr<T> name = ::emu::static_shared<T>(&name##_declaration_, (count), #name)

#else  // nvcc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#define RJA_DEVICE __device__ __forceinline__
#define RJA_HOST_DEVICE __host__ __device__ __forceinline__

namespace rja {
template <class T>
using Ptr = T*;
template <class T>
RJA_HOST_DEVICE T* slice(T* p, std::int64_t off, std::int64_t /*n*/, const char* /*name*/) {
  return p + off;
}
template <class U, class T>
RJA_HOST_DEVICE U* reinterpret_slice(T* p, std::int64_t off, std::int64_t /*n*/, const char* /*name*/) {
  return reinterpret_cast<U*>(p + off);
}
template <class T>
inline T* make_ptr(T* p, std::int64_t /*n*/, const char* /*name*/) {
  return p;
}
}  // namespace rja

// One untyped declaration for every kernel: typed `extern __shared__` arrays of different template
// instantiations would conflict. 32-byte aligned for WMMA tiles.
#define RJA_DYNAMIC_SHARED(T, name)                                    \
  extern __shared__ __align__(32) unsigned char rja_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(rja_dynamic_shared_)
#define RJA_STATIC_SHARED(T, name, count) \
  __shared__ T name##_storage_[count];    \
  T* name = name##_storage_

#endif

// WMMA with bfloat16 and tf32 operands needs sm_80 (setup.py builds for 8.0 and 9.0). A device pass
// for an older architecture compiles the CUDA-core path for every element type instead
// (tensor_cores(), tf32_tensor_cores()).
#if defined(RJA_EMULATE) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RJA_WMMA 1
#else
#define RJA_WMMA 0
#endif

namespace rja {

// Loads and stores of the three element types; arithmetic is always float.
RJA_DEVICE float to_float(float v) { return v; }
RJA_DEVICE float to_float(__half v) { return __half2float(v); }
RJA_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class K>
RJA_DEVICE K from_float(float v);
template <>
RJA_DEVICE float from_float<float>(float v) {
  return v;
}
template <>
RJA_DEVICE __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
RJA_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 16 bytes of T: the unit of a vectorised (128-bit) load or store, one instruction for a thread
// where a scalar loop would issue 4 (float) or 8 (16-bit types).
template <class T>
struct alignas(16) Vector {
  static constexpr int n = 16 / int(sizeof(T));
  T x[n];
};

// Whether p may be accessed as a Vector: 16-byte aligned. load_vector and store_vector need it
// (and the 16 bytes in bounds: the emulator checks both).
#ifdef RJA_EMULATE
template <class T>
RJA_DEVICE bool aligned_16(Ptr<T> p) {
  return ::emu::address_aligned_16(p);
}
template <class T>
RJA_DEVICE Vector<std::remove_const_t<T>> load_vector(Ptr<T> p) {
  Vector<std::remove_const_t<T>> v;
  std::memcpy(v.x, ::emu::vector_address(p, "vector load"), 16);
  return v;
}
template <class T>
RJA_DEVICE void store_vector(Ptr<T> p, const Vector<T>& v) {
  std::memcpy(::emu::vector_address(p, "vector store"), v.x, 16);
}
#else
template <class T>
RJA_DEVICE bool aligned_16(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}
// Through uint4, which nvcc turns into one ld/st .v4 whatever T is.
template <class T>
RJA_DEVICE Vector<std::remove_const_t<T>> load_vector(const T* p) {
  const uint4 bits = *reinterpret_cast<const uint4*>(p);
  Vector<std::remove_const_t<T>> v;
  memcpy(v.x, &bits, 16);
  return v;
}
template <class T>
RJA_DEVICE void store_vector(T* p, const Vector<T>& v) {
  uint4 bits;
  memcpy(&bits, v.x, 16);
  *reinterpret_cast<uint4*>(p) = bits;
}
#endif

}  // namespace rja

namespace rja {

// What a barrier across the blocks of a grid needs (common.cuh, Group::barrier): an atomic add, a
// device-wide fence and a load that sees other blocks' writes while the thread spins on it (under
// the emulator it yields, so that the other blocks run).
RJA_DEVICE unsigned atomic_add(Ptr<unsigned> p, unsigned v) { return atomicAdd(&p[0], v); }
RJA_DEVICE void thread_fence() { __threadfence(); }
#ifdef RJA_EMULATE
RJA_DEVICE unsigned volatile_load(Ptr<unsigned> p) { return ::emu::volatile_load(&p[0]); }
#else
RJA_DEVICE unsigned volatile_load(Ptr<unsigned> p) { return *reinterpret_cast<volatile unsigned*>(p); }
#endif

}  // namespace rja

// Block-stride loop: thread t takes indices t, t + blockDim.x, ... below n. Two loops with the same
// n give every thread the same indices, which is what lets a thread update "its" elements of a
// buffer in several loops without a barrier in between.
#define RJA_BLOCK_LOOP(i, n) for (int i = int(threadIdx.x); i < (n); i += int(blockDim.x))
// The same over [first, last): a block's share of a range cut among several blocks.
#define RJA_RANGE_LOOP(i, first, last) \
  for (int i = int(first) + int(threadIdx.x); i < int(last); i += int(blockDim.x))

// Unroll hint for nvcc; the host compiler of the emulated build decides for itself.
#ifdef RJA_EMULATE
#define RJA_UNROLL
#else
#define RJA_UNROLL _Pragma("unroll")
#endif
