// CPU execution helpers: an OpenMP parallel-for with a grain size, run-time ISA
// dispatch (AVX-512 / AVX2 / baseline clones of the hot loops) and small
// vectorisable row primitives that get inlined into each clone.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(MEDMETA_WITH_OPENMP)
#include <omp.h>
#endif

// One build serves every x86-64 CPU: GCC emits a clone per ISA and picks at load time.
// Each string is one clone (a comma inside a string names two: "avx2,fma" made an AVX2 clone
// without FMA, the one chosen on AVX2 machines). x86-64-v3 = AVX2 + FMA, v4 adds AVX-512.
// Unoptimised builds (the sanitizer builds of tests/cuda_emulation) and ASan builds
// (MEDMETA_SANITIZE: three clones would triple their compile time) get one plain version.
#if defined(__SANITIZE_ADDRESS__)
#define MEDMETA_CPU_CLONES
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__OPTIMIZE__) && __GNUC__ >= 12
#define MEDMETA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__OPTIMIZE__)
#define MEDMETA_CPU_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define MEDMETA_CPU_CLONES
#endif

#if defined(__GNUC__)
#define MEDMETA_INLINE inline __attribute__((always_inline))
#else
#define MEDMETA_INLINE inline
#endif

#define MEDMETA_PRAGMA(x) _Pragma(#x)
#if defined(MEDMETA_WITH_OPENMP)
#define MEDMETA_SIMD_REDUCE(...) MEDMETA_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define MEDMETA_SIMD MEDMETA_PRAGMA(omp simd)
#else
#define MEDMETA_SIMD_REDUCE(...)
#define MEDMETA_SIMD
#endif

namespace medmeta {

// Threads used by the CPU kernels; Python keeps it equal to torch.get_num_threads().
int cpu_num_threads();
void set_cpu_num_threads(int n);

// The threads parallel_for may use: cpu_num_threads(), 1 in serial builds (the edge library).
inline int64_t parallel_threads() {
#if defined(MEDMETA_WITH_OPENMP)
  return cpu_num_threads();
#else
  return 1;
#endif
}

// Calls f(begin, end) on contiguous chunks of [begin, end), in parallel when the
// range is larger than `grain` items. Small episodes stay on the calling thread.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  (void)grain;  // serial builds (the edge library) split nothing
#if defined(MEDMETA_WITH_OPENMP)
  const int64_t threads = std::min<int64_t>(cpu_num_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t b = begin + t * chunk, e = std::min(end, b + chunk);
      if (b < e) f(b, e);
    }
    return;
  }
#endif
  f(begin, end);
}

template <typename T> MEDMETA_INLINE T dot_row(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
  MEDMETA_SIMD_REDUCE(s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Four dot products sharing the loads of y: <x0,y>, <x1,y>, <x2,y>, <x3,y>.
template <typename T>
MEDMETA_INLINE void dot4_row(const T* __restrict x0, const T* __restrict x1, const T* __restrict x2,
                             const T* __restrict x3, const T* __restrict y, int64_t n, T* out) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  MEDMETA_SIMD_REDUCE(s0, s1, s2, s3)
  for (int64_t i = 0; i < n; ++i) {
    const T v = y[i];
    s0 += x0[i] * v;
    s1 += x1[i] * v;
    s2 += x2[i] * v;
    s3 += x3[i] * v;
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// Two dot products sharing the loads of y: <x0,y>, <x1,y>.
template <typename T>
MEDMETA_INLINE void dot2_row(const T* __restrict x0, const T* __restrict x1, const T* __restrict y, int64_t n,
                             T* out) {
  T s0 = 0, s1 = 0;
  MEDMETA_SIMD_REDUCE(s0, s1)
  for (int64_t i = 0; i < n; ++i) {
    s0 += x0[i] * y[i];
    s1 += x1[i] * y[i];
  }
  out[0] = s0;
  out[1] = s1;
}

// y += a * x
template <typename T> MEDMETA_INLINE void axpy_row(T a, const T* __restrict x, T* __restrict y, int64_t n) {
  MEDMETA_SIMD
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y = a * x
template <typename T> MEDMETA_INLINE void scale_row(T a, const T* __restrict x, T* __restrict y, int64_t n) {
  MEDMETA_SIMD
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
}

}  // namespace medmeta
