// Shared types of the medmeta native core: dtype and metric codes, the device
// a call runs on, and argument checks that raise Python ValueError via pybind11.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace medmeta {

// Codes shared with python/medmeta/ops/_native.py; keep in sync.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };
enum class Metric : int { SqEuclidean = 0, Euclidean = 1, Cosine = 2, Dot = 3 };

// Where a kernel runs: index < 0 is the CPU, otherwise a CUDA device ordinal and
// the caller's stream (a cudaStream_t as an integer; 0 is the legacy stream).
struct Device {
  int index = -1;
  std::uintptr_t stream = 0;
  bool is_cpu() const { return index < 0; }
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument("medmeta: " + msg); }

#define MEDMETA_CHECK(cond, msg) \
  do {                           \
    if (!(cond)) ::medmeta::fail(msg); \
  } while (0)

}  // namespace medmeta
