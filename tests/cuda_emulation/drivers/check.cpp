#include "check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <new>

namespace check {

namespace {

constexpr std::size_t kAlign = 64;

std::uint16_t to_bf16_bits(double v) {
  const float f = static_cast<float>(v);
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<std::uint16_t>(u >> 16);
}

double from_bf16_bits(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::uint16_t to_f16_bits(double v) {
  const _Float16 h = static_cast<_Float16>(static_cast<float>(v));  // as __float2half_rn
  std::uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}

double from_f16_bits(std::uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, sizeof h);
  return static_cast<double>(h);
}

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

const char* short_name(DType dt) {
  switch (dt) {
    case DType::Float32: return "f32";
    case DType::Float64: return "f64";
    case DType::Float16: return "f16";
    case DType::BFloat16: return "bf16";
  }
  return "?";
}

std::size_t size_of(DType dt) {
  switch (dt) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    default: return 2;
  }
}

DType acc_of(DType dt) { return dt == DType::Float64 ? DType::Float64 : DType::Float32; }

double round_to(DType dt, double v) {
  switch (dt) {
    case DType::Float32: return static_cast<float>(v);
    case DType::Float64: return v;
    case DType::Float16: return from_f16_bits(to_f16_bits(v));
    case DType::BFloat16: return from_bf16_bits(to_bf16_bits(v));
  }
  return v;
}

Vec rounded(DType dt, Vec v) {
  for (double& x : v) x = round_to(dt, x);
  return v;
}

Rng::Rng(const std::string& seed) : gen_(fnv1a(seed)) {}

Vec Rng::uniform(std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  Vec v(n);
  for (double& x : v) x = u(gen_);
  return v;
}

std::int64_t Rng::integer(std::int64_t lo, std::int64_t hi) {
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(gen_);
}

Buffer::Buffer(DType dt, std::size_t n, std::size_t offset)
    : dt_(dt), n_(n), offset_(offset),
      base_(static_cast<unsigned char*>(::operator new((n + offset) * size_of(dt), std::align_val_t(kAlign)))) {
  assign(Vec(n, std::numeric_limits<double>::quiet_NaN()));
  std::memset(base_, 0, offset_ * size_of(dt_));
}

Buffer::Buffer(DType dt, const Vec& values, std::size_t offset) : Buffer(dt, values.size(), offset) { assign(values); }

Buffer::Buffer(Buffer&& other) noexcept
    : dt_(other.dt_), n_(other.n_), offset_(other.offset_), base_(other.base_) {
  other.base_ = nullptr;
}

Buffer::~Buffer() {
  if (base_ != nullptr) ::operator delete(base_, std::align_val_t(kAlign));
}

Vec Buffer::values() const {
  Vec v(n_);
  const unsigned char* p = static_cast<const unsigned char*>(data());
  for (std::size_t i = 0; i < n_; ++i) {
    switch (dt_) {
      case DType::Float32: {
        float f;
        std::memcpy(&f, p + 4 * i, 4);
        v[i] = f;
        break;
      }
      case DType::Float64: std::memcpy(&v[i], p + 8 * i, 8); break;
      case DType::Float16:
      case DType::BFloat16: {
        std::uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        v[i] = dt_ == DType::Float16 ? from_f16_bits(b) : from_bf16_bits(b);
        break;
      }
    }
  }
  return v;
}

void Buffer::assign(const Vec& values) {
  unsigned char* p = static_cast<unsigned char*>(data());
  for (std::size_t i = 0; i < n_ && i < values.size(); ++i) {
    switch (dt_) {
      case DType::Float32: {
        const float f = static_cast<float>(values[i]);
        std::memcpy(p + 4 * i, &f, 4);
        break;
      }
      case DType::Float64: std::memcpy(p + 8 * i, &values[i], 8); break;
      case DType::Float16:
      case DType::BFloat16: {
        const std::uint16_t b = dt_ == DType::Float16 ? to_f16_bits(values[i]) : to_bf16_bits(values[i]);
        std::memcpy(p + 2 * i, &b, 2);
        break;
      }
    }
  }
}

bool Buffer::same_bits(const Buffer& other) const {
  return dt_ == other.dt_ && n_ == other.n_ && std::memcmp(data(), other.data(), n_ * size_of(dt_)) == 0;
}

double tol(DType out) {
  switch (out) {
    case DType::Float64: return 1e-12;
    case DType::Float32: return 1e-5;
    case DType::Float16: return 1e-3;
    case DType::BFloat16: return 8e-3;
  }
  return 0;
}

Stats& stats() {
  static Stats s;
  return s;
}

bool compare(const std::string& what, const Vec& got, const Vec& ref, DType out, double factor) {
  Stats& st = stats();
  const double rtol = tol(out) * factor;
  ++st.comparisons;
  if (got.size() != ref.size()) {
    std::printf("FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), ref.size());
    ++st.failures;
    return false;
  }
  double scale = 1.0;
  for (const double r : ref)
    if (std::isfinite(r)) scale = std::max(scale, std::fabs(r));
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double a = got[i], b = ref[i];
    if ((std::isnan(a) && std::isnan(b)) || (std::isinf(a) && a == b)) continue;
    if (std::isinf(a) && a == round_to(out, b)) continue;  // past the range of `out`: rounds to inf
    const double bound = rtol * (scale + std::fabs(b));
    const double err = std::fabs(a - b);
    if (!(err <= bound)) {
      std::printf("FAIL %s: [%zu] = %.9g, expected %.9g (tolerance %.3g, %zu values)\n", what.c_str(), i, a, b, bound,
                  got.size());
      ++st.failures;
      return false;
    }
    worst = std::max(worst, err / bound);
  }
  double& w = st.worst[static_cast<int>(out)];
  w = std::max(w, worst * factor);  // against the plain tolerance of `out`
  return true;
}

bool compare_bits(const std::string& what, const Buffer& got, const Buffer& ref) {
  return expect(what, got.same_bits(ref), "results differ bitwise");
}

bool expect(const std::string& what, bool ok, const std::string& detail) {
  Stats& st = stats();
  ++st.comparisons;
  if (!ok) {
    std::printf("FAIL %s%s%s\n", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    ++st.failures;
  }
  return ok;
}

Device caller(int device) {
  Device d;
  d.index = device;
  d.stream = 0x5000 + static_cast<std::uintptr_t>(device);  // a handle the emulator checks, never dereferenced
  return d;
}

void on_device(int device, const std::function<void()>& call) {
  emu::expect_caller(device, caller(device).stream);
  emu::set_current_device(0);
  try {
    call();
  } catch (...) {
    emu::check_device_restored("a CUDA op that threw");
    throw;
  }
  emu::check_device_restored("a CUDA op");
}

std::string outcome(const std::function<void()>& call) {
  try {
    call();
    return "ok";
  } catch (const std::exception& e) {
    return std::string("throws: ") + e.what();
  }
}

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

void add(const std::string& group, const std::string& name, std::function<void()> run) {
  registry().push_back({group, name, std::move(run)});
}

}  // namespace check
