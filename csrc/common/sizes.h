// Size checks at the entry points (the pybind11 bindings, the edge C interface, the CUDA host
// code), before any data is read: every size is >= 0, every buffer's element count is below
// kMaxElements (so no index or byte count computed from the sizes overflows int64), and on
// CUDA the rows of an episode fit the kernels' 32-bit row indices. The CPU kernels index
// with int64 throughout; the CUDA kernels index elements with int64 and rows (queries,
// prototypes, classes) with int, rounded up to whole tiles (a few hundred past the end).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/types.h"

namespace medmeta {

// Elements of one buffer: 2^56 (512 PiB of float64) leaves room for byte counts and for
// offset sums of a few buffers in int64; no real buffer comes near it.
constexpr int64_t kMaxElements = int64_t{1} << 56;

// Rows of one episode the CUDA kernels take (2^31 - 2^16): an int row index rounded up to a
// whole tile stays below 2^31.
constexpr int64_t kCudaMaxRows = (int64_t{1} << 31) - (int64_t{1} << 16);

struct SizeArg {
  const char* name;
  int64_t value;
};

inline std::string sizes_text(std::initializer_list<SizeArg> dims) {
  std::string s = "[";
  for (const SizeArg& d : dims) s += (s.size() > 1 ? ", " : "") + std::string(d.name) + "=" + std::to_string(d.value);
  return s + "]";
}

// The element count of buffer `what` of `op` with sizes `dims`; raises naming the size when
// one is negative, and the buffer when its count would exceed kMaxElements.
inline int64_t checked_numel(const char* op, const char* what, std::initializer_list<SizeArg> dims) {
  int64_t n = 1;
  bool too_large = false;
  for (const SizeArg& d : dims) {
    if (d.value < 0) fail(std::string(op) + ": size " + d.name + " must be >= 0, got " + std::to_string(d.value));
  }
  for (const SizeArg& d : dims) {
    if (d.value == 0) return 0;
    if (n > kMaxElements / d.value) too_large = true;
    else n *= d.value;
  }
  if (too_large || n > kMaxElements)
    fail(std::string(op) + ": " + what + " " + sizes_text(dims) + " would hold more than 2^56 elements");
  return n;
}

// `value` (size `name`: `what`, e.g. "query rows per episode") fits the CUDA kernels.
inline void check_cuda_rows(const char* op, const char* name, int64_t value, const char* what) {
  if (value > kCudaMaxRows)
    fail(std::string(op) + ": " + name + " = " + std::to_string(value) + " " + what +
         " exceed the CUDA kernels' limit of " + std::to_string(kCudaMaxRows) +
         " (32-bit row indices); split the episode or run it on the CPU");
}

// pairwise_distance and prototypical_loss: x [B,Q,D], y [B,N,D], out [B,Q,N].
inline void check_pairwise_sizes(const char* op, bool cuda, int64_t B, int64_t Q, int64_t N, int64_t D) {
  checked_numel(op, "queries", {{"B", B}, {"Q", Q}, {"D", D}});
  checked_numel(op, "prototypes", {{"B", B}, {"N", N}, {"D", D}});
  checked_numel(op, "distances", {{"B", B}, {"Q", Q}, {"N", N}});
  if (cuda) {
    check_cuda_rows(op, "Q", Q, "query rows per episode");
    check_cuda_rows(op, "N", N, "prototype rows per episode");
  }
}

// prototypes: emb [B,S,D], labels [B,S], out [B,N,D].
inline void check_prototypes_sizes(bool cuda, int64_t B, int64_t S, int64_t N, int64_t D) {
  checked_numel("prototypes", "embeddings", {{"B", B}, {"S", S}, {"D", D}});
  checked_numel("prototypes", "prototypes", {{"B", B}, {"N", N}, {"D", D}});
  if (cuda) check_cuda_rows("prototypes", "N", N, "classes");
}

// masked_prototypes: feat [B,S,D,HW], masks [B,S,C,HW], out [B,C,D].
inline void check_masked_prototypes_sizes(bool cuda, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  checked_numel("masked_prototypes", "features", {{"B", B}, {"S", S}, {"D", D}, {"HW", HW}});
  checked_numel("masked_prototypes", "masks", {{"B", B}, {"S", S}, {"C", C}, {"HW", HW}});
  checked_numel("masked_prototypes", "prototypes", {{"B", B}, {"C", C}, {"D", D}});
  if (cuda) check_cuda_rows("masked_prototypes", "C", C, "classes");
}

// inner_update, tensor k: numel >= 0; with a rate tensor (`has_lr`), lr_numel >= 1 divides
// numel (1: one rate, numel / T: per element shared by the tasks, numel: per element and
// task); a zero-size tensor may come with any rate size. Returns numel.
inline int64_t check_update_tensor(const char* op, std::size_t k, int64_t numel, bool has_lr, int64_t lr_numel) {
  const std::string where = std::string(op) + ": tensor " + std::to_string(k);
  if (numel < 0 || lr_numel < 0) fail(where + ": sizes must be >= 0, got numel " + std::to_string(numel) +
                                      " and lr_numel " + std::to_string(lr_numel));
  if (numel > kMaxElements) fail(where + ": numel " + std::to_string(numel) + " is more than 2^56 elements");
  if (has_lr && numel > 0 && (lr_numel < 1 || numel % lr_numel != 0))
    fail(where + ": lr_numel must be 1 or divide numel " + std::to_string(numel) + ", got " +
         std::to_string(lr_numel));
  return numel;
}

}  // namespace medmeta
