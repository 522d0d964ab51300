// Data checks for the Python boundary on CPU tensors: a single pass in C++ instead of
// several torch reductions and host round-trips per op call.
#pragma once

#include <cstdint>
#include <cstring>

namespace medmeta {

// Index of the first value outside [0, hi), or -1.
inline int64_t first_out_of_range(const int64_t* v, int64_t n, int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (v[i] < 0 || v[i] >= hi) return i;
  return -1;
}

// Index of the first value that is not > 0 (zero, negative or NaN), or -1.
template <typename T> int64_t first_not_positive(const T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!(v[i] > T(0))) return i;
  return -1;
}

// Index of the first value that is negative or not finite, or -1.
template <typename T> int64_t first_negative_or_nonfinite(const T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!(v[i] >= T(0)) || v[i] - v[i] != T(0)) return i;
  return -1;
}

template <typename T> struct FloatBits;
template <> struct FloatBits<float> {
  using U = uint32_t;
  static constexpr U kExponent = 0x7f800000u;
};
template <> struct FloatBits<double> {
  using U = uint64_t;
  static constexpr U kExponent = 0x7ff0000000000000ull;
};

// Index of the first value that is NaN or infinite, or -1. Blocks are screened with a
// branch-free OR over the exponent bits (vectorizes; an early-exit loop does not), and
// only a block that holds a bad value is searched element by element.
template <typename T> int64_t first_nonfinite(const T* v, int64_t n) {
  using U = typename FloatBits<T>::U;
  constexpr U kExp = FloatBits<T>::kExponent;
  constexpr int64_t kBlock = 4096;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = n - start < kBlock ? n : start + kBlock;
    U bad = 0;
    for (int64_t i = start; i < end; ++i) {
      U bits;
      std::memcpy(&bits, v + i, sizeof bits);
      bad |= static_cast<U>((bits & kExp) == kExp);
    }
    if (bad)
      for (int64_t i = start; i < end; ++i)
        if (v[i] - v[i] != T(0)) return i;
  }
  return -1;
}

}  // namespace medmeta
