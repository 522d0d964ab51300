// Data checks for the Python boundary on CPU tensors: a single pass in C++ instead of
// several torch reductions and host round-trips per op call.
#pragma once

#include <cstdint>

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

// Index of the first value that is NaN or infinite, or -1.
template <typename T> int64_t first_nonfinite(const T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (v[i] - v[i] != T(0)) return i;
  return -1;
}

}  // namespace medmeta
