// 32-byte SIMD vectors for the CPU kernels' register tiles: GCC/Clang vector extensions of
// 8 float or 4 double lanes, one AVX register (two SSE ones in the baseline clone of
// MEDMETA_CPU_CLONES), with a plain-array fallback for other compilers. Loads and stores are
// macros, so that no vector crosses a function boundary by value (no ABI warnings in the
// baseline clone); loops over a compile-time count of accumulators are unrolled
// (MEDMETA_UNROLL), so that the accumulator arrays live in registers.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu.h"

namespace medmeta {

#if defined(__GNUC__)
template <typename T> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4), may_alias));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8), may_alias));
};
#define MEDMETA_VLOAD(T, p) (*reinterpret_cast<const typename ::medmeta::VecOf<T>::unaligned*>(p))
#define MEDMETA_VSTORE(T, p, v) (*reinterpret_cast<typename ::medmeta::VecOf<T>::unaligned*>(p) = (v))
#define MEDMETA_UNROLL MEDMETA_PRAGMA(GCC unroll 16)
#else
template <typename T> struct VecOf {
  struct type {
    T v[32 / sizeof(T)];
    T& operator[](int i) { return v[i]; }
    const T& operator[](int i) const { return v[i]; }
    type& operator+=(const type& o) {
      for (int i = 0; i < int(32 / sizeof(T)); ++i) v[i] += o.v[i];
      return *this;
    }
    type operator*(const type& o) const {
      type r;
      for (int i = 0; i < int(32 / sizeof(T)); ++i) r.v[i] = v[i] * o.v[i];
      return r;
    }
    type operator*(T x) const {
      type r;
      for (int i = 0; i < int(32 / sizeof(T)); ++i) r.v[i] = v[i] * x;
      return r;
    }
  };
  static type load(const T* p) {
    type r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static void store(T* p, const type& v) { std::memcpy(p, &v, sizeof v); }
};
#define MEDMETA_VLOAD(T, p) (::medmeta::VecOf<T>::load(p))
#define MEDMETA_VSTORE(T, p, v) (::medmeta::VecOf<T>::store((p), (v)))
#define MEDMETA_UNROLL
#endif
template <typename T> using Vec = typename VecOf<T>::type;

template <typename T> constexpr int kLanes = int(32 / sizeof(T));

// Sum of the lanes, pairwise.
template <typename T> MEDMETA_INLINE T hsum(const Vec<T>& v) {
  if constexpr (kLanes<T> == 8)
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
  else
    return (v[0] + v[2]) + (v[1] + v[3]);
}

}  // namespace medmeta
