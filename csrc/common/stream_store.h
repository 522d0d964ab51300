// Non-temporal ("streaming") stores for outputs larger than the caches: written around the
// caches, they skip the read-for-ownership a normal store of a line not in cache costs (a
// fresh output otherwise moves through memory twice: read, then written back). Outputs that
// fit in cache keep normal stores, so that the next op finds them there.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace medmeta {

// Outputs at least this large (bytes, all tensors of a call) are written with streaming stores.
constexpr int64_t kStreamingStoreBytes = int64_t{8} << 20;

// dst[0, n) = src[0, n), the aligned middle with streaming stores (x86 SSE2; memcpy elsewhere).
template <typename T> inline void stream_copy(T* dst, const T* src, int64_t n) {
#if defined(__SSE2__)
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "stream_copy: float or double");
  int64_t head = static_cast<int64_t>((16 - reinterpret_cast<std::uintptr_t>(dst) % 16) % 16);
  if (head % sizeof(T) != 0) {  // not alignable to 16 bytes: plain stores
    std::memcpy(dst, src, n * sizeof(T));
    return;
  }
  head = std::min<int64_t>(n, head / static_cast<int64_t>(sizeof(T)));
  std::memcpy(dst, src, head * sizeof(T));
  constexpr int64_t kLane = 16 / sizeof(T);
  int64_t i = head;
  for (; i + kLane <= n; i += kLane) {
    __m128i v;
    std::memcpy(&v, src + i, 16);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), v);
  }
  std::memcpy(dst + i, src + i, (n - i) * sizeof(T));
#else
  std::memcpy(dst, src, n * sizeof(T));
#endif
}

// Orders this thread's streaming stores before what follows (call once after the last).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace medmeta
