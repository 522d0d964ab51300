// Support of the check drivers: device buffers in the four storage types, inputs drawn per
// case and rounded through the storage type (so that the float64 CPU kernel sees exactly the
// values the CUDA kernel reads), comparisons with per-dtype tolerances, and the case registry.
// No CUDA headers: half and bfloat16 are converted here (round to nearest even), independently
// of the conversions in cuda_fp16.h / cuda_bf16.h that the kernels use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/types.h"
#include "control.h"

namespace check {

using medmeta::Device;
using medmeta::DType;
using Vec = std::vector<double>;

constexpr DType kDtypes[] = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};

const char* short_name(DType dt);  // f32, f64, f16, bf16
std::size_t size_of(DType dt);
DType acc_of(DType dt);  // the kernels' accumulation type: Float64 for Float64, else Float32
double round_to(DType dt, double v);
Vec rounded(DType dt, Vec v);

// Values drawn from a generator seeded by the case's name: a case sees the same inputs
// whichever shard or group runs it.
class Rng {
 public:
  explicit Rng(const std::string& seed);
  Vec uniform(std::size_t n, double lo = -1.0, double hi = 1.0);
  std::int64_t integer(std::int64_t lo, std::int64_t hi);  // in [lo, hi]

 private:
  std::mt19937_64 gen_;
};

// n elements of `dt` starting `offset` elements into a 64-byte aligned allocation of exactly
// the bytes needed (AddressSanitizer reports any access past the end). Filled with NaN.
class Buffer {
 public:
  Buffer(DType dt, std::size_t n, std::size_t offset = 0);
  Buffer(DType dt, const Vec& values, std::size_t offset = 0);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept;
  ~Buffer();

  void* data() { return base_ + offset_ * size_of(dt_); }
  const void* data() const { return base_ + offset_ * size_of(dt_); }
  std::size_t size() const { return n_; }
  DType dtype() const { return dt_; }
  Vec values() const;
  void assign(const Vec& values);
  bool same_bits(const Buffer& other) const;

 private:
  DType dt_;
  std::size_t n_, offset_;
  unsigned char* base_;
};

// Relative tolerance of a result stored as `out` (an accumulation-type output of a float16 op,
// such as the saved distances, is a float32 result and is held to float32's tolerance).
double tol(DType out);

// got vs ref elementwise: |got - ref| <= rtol * (max(1, max|ref|) + |ref|) with rtol =
// tol(out) * factor; NaN matches NaN and an infinity the same infinity. Counts one comparison;
// prints the first mismatch and keeps the worst error / tolerance ratio per `out`.
bool compare(const std::string& what, const Vec& got, const Vec& ref, DType out, double factor = 1.0);
bool compare_bits(const std::string& what, const Buffer& got, const Buffer& ref);  // bitwise
bool expect(const std::string& what, bool ok, const std::string& detail = "");       // one check

// The caller of a CUDA op: device `device` and a stream handle of its own. on_device() runs the
// call with that caller declared to the emulator and checks that the call left the current
// device as it found it (0).
Device caller(int device);
void on_device(int device, const std::function<void()>& call);
// "ok", or "throws: <message>"
std::string outcome(const std::function<void()>& call);

struct Case {
  std::string group, name;
  std::function<void()> run;
};
void add(const std::string& group, const std::string& name, std::function<void()> run);
std::vector<Case>& registry();

// Names of medmeta::Metric codes, for case names and messages.
inline const char* const kMetric[] = {"sqeuclidean", "euclidean", "cosine", "dot"};

// One batch of episodes of the distance-like ops: B episodes, Q queries, N rows, D features.
struct EpisodeShape {
  std::int64_t B, Q, N, D;
};

struct Stats {
  long comparisons = 0, failures = 0;
  double worst[4] = {0, 0, 0, 0};  // largest error / tolerance per output dtype (as DType codes)
};
Stats& stats();

}  // namespace check
