// CPU kernels of pairwise_distance: OpenMP over (episode, block of 4 queries), with
// dot products vectorised per ISA clone and the metric applied from shared math.
#include "ops/distance/distance.h"

#include "ops/distance/distance_cpu.h"

namespace medmeta {

namespace {

template <typename T>
void forward(const void* x, const void* y, void* out, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m) {
  cpu::distances(static_cast<const T*>(x), static_cast<const T*>(y), static_cast<T*>(out), B, Q, N, D, m,
                 [](int64_t, int64_t, int64_t) {});
}

template <typename T>
void backward(const void* g, const void* x, const void* y, const void* out, void* gx, void* gy, int64_t B,
              int64_t Q, int64_t N, int64_t D, Metric m) {
  const T* gt = static_cast<const T*>(g);
  cpu::distance_backward([gt, N](int64_t r, int64_t n) { return gt[r * N + n]; }, static_cast<const T*>(x),
                         static_cast<const T*>(y), static_cast<const T*>(out), static_cast<T*>(gx),
                         static_cast<T*>(gy), B, Q, N, D, m);
}

[[noreturn]] void bad_dtype(DType dt) {
  fail(std::string("pairwise_distance on CPU supports float32 and float64, got ") + dtype_name(dt));
}

}  // namespace

void distance_forward_cpu(DType dt, const void* x, const void* y, void* out, void* /*workspace*/, int64_t B,
                          int64_t Q, int64_t N, int64_t D, Metric metric) {
  if (B * Q * N == 0) return;
  switch (dt) {
    case DType::Float32: return forward<float>(x, y, out, B, Q, N, D, metric);
    case DType::Float64: return forward<double>(x, y, out, B, Q, N, D, metric);
    default: bad_dtype(dt);
  }
}

void distance_backward_cpu(DType dt, const void* grad_out, const void* x, const void* y, const void* out,
                           void* grad_x, void* grad_y, void* /*workspace*/, int64_t B, int64_t Q, int64_t N,
                           int64_t D, Metric metric) {
  if (B * D == 0) return;
  switch (dt) {
    case DType::Float32: return backward<float>(grad_out, x, y, out, grad_x, grad_y, B, Q, N, D, metric);
    case DType::Float64: return backward<double>(grad_out, x, y, out, grad_x, grad_y, B, Q, N, D, metric);
    default: bad_dtype(dt);
  }
}

}  // namespace medmeta
