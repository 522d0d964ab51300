// pairwise_distance (csrc/ops/distance): distance_forward_kernel (classes per pass NT = 8, 16,
// 32), backward_kernel with the distance coefficients and, for the cosine metric,
// sq_norms_kernel; against distance_{forward,backward}_cpu in float64.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "check.h"
#include "ops/distance/distance.h"

using namespace check;
using medmeta::Metric;

namespace {

constexpr int kDevice = 1;

struct Options {
  bool grad_x = true, grad_y = true;
  bool degenerate = false;  // class 0 of a zero norm (cosine), a zero distance (euclidean)
};

void distance_case(const std::string& name, DType dt, EpisodeShape s, Metric m, Options opt = {}) {
  const auto [B, Q, N, D] = s;
  Rng rng(name);
  Vec x = rng.uniform(B * Q * D), y = rng.uniform(B * N * D);
  if (opt.degenerate && B * N * D > 0 && m == Metric::Cosine)
    for (std::int64_t d = 0; d < D; ++d) y[d] = 0.0;  // a zero-norm class: the norm floor
  if (opt.degenerate && B * Q * N * D > 0 && (m == Metric::SqEuclidean || m == Metric::Euclidean))
    for (std::int64_t d = 0; d < D; ++d) x[d] = y[d];  // a zero distance: the clamp at 0
  x = rounded(dt, x);
  y = rounded(dt, y);

  Vec out(B * Q * N, std::nan("")), ws(medmeta::distance_workspace_elems(B, Q, N));
  medmeta::distance_forward_cpu(DType::Float64, x.data(), y.data(), out.data(), ws.data(), B, Q, N, D, m);
  Buffer xd(dt, x), yd(dt, y), od(dt, B * Q * N), wsd(acc_of(dt), medmeta::distance_workspace_elems(B, Q, N));
  on_device(kDevice, [&] {
    medmeta::distance_forward_cuda(caller(kDevice), dt, xd.data(), yd.data(), od.data(), wsd.data(), B, Q, N, D, m);
  });
  compare(name + " out", od.values(), out, dt);

  // Backward from the CUDA forward's distances on both sides (so it is checked on its own).
  const Vec g = rounded(dt, rng.uniform(B * Q * N)), d_dev = od.values();
  Vec gx(B * Q * D, std::nan("")), gy(B * N * D, std::nan(""));
  medmeta::distance_backward_cpu(DType::Float64, g.data(), x.data(), y.data(), d_dev.data(),
                                 opt.grad_x ? gx.data() : nullptr, opt.grad_y ? gy.data() : nullptr, ws.data(), B, Q,
                                 N, D, m);
  Buffer gd(dt, g), gxd(dt, B * Q * D), gyd(dt, B * N * D);
  Buffer wsb(acc_of(dt), medmeta::distance_workspace_elems(B, Q, N));
  on_device(kDevice, [&] {
    medmeta::distance_backward_cuda(caller(kDevice), dt, gd.data(), xd.data(), yd.data(), od.data(),
                                    opt.grad_x ? gxd.data() : nullptr, opt.grad_y ? gyd.data() : nullptr, wsb.data(),
                                    B, Q, N, D, m);
  });
  // Euclidean and cosine gradients divide by distances and norms: a few more roundings.
  const double f = m == Metric::Euclidean || m == Metric::Cosine ? 4.0 : 1.0;
  compare(name + " grad_x", gxd.values(), gx, dt, f);
  compare(name + " grad_y", gyd.values(), gy, dt, f);
}

std::string label(DType dt, EpisodeShape s, Metric m, const char* extra = "") {
  char buf[160];
  std::snprintf(buf, sizeof buf, "distance %s B%lld Q%lld N%lld D%lld %s%s", short_name(dt),
                static_cast<long long>(s.B), static_cast<long long>(s.Q), static_cast<long long>(s.N),
                static_cast<long long>(s.D), kMetric[static_cast<int>(m)], extra);
  return buf;
}

void add_case(DType dt, EpisodeShape s, Metric m, Options opt = {}, const char* extra = "") {
  const std::string name = label(dt, s, m, extra);
  add("distance", name, [=] { distance_case(name, dt, s, m, opt); });
}

}  // namespace

void register_distance() {
  const Metric metrics[] = {Metric::SqEuclidean, Metric::Euclidean, Metric::Cosine, Metric::Dot};
  for (const DType dt : kDtypes) {
    // One block per launch, every metric: NT = 8, a partial class pass, D below one chunk;
    // a zero-norm class (cosine: the norm floor) or a zero distance (the clamp at 0).
    Options degenerate;
    degenerate.degenerate = true;
    for (const Metric m : metrics) add_case(dt, {1, 5, 3, 37}, m, degenerate, " degenerate");
    // Two query tiles (32 rows a block in 4-byte accumulators, 16 in float64) whose last
    // has idle warps, NT = 16 with 4 classes past N, two D chunks with a tail.
    add_case(dt, {1, 33, 12, 150}, Metric::SqEuclidean);
    // NT = 32 in three class passes (the last with 6 classes), two query tiles in float64;
    // backward: three class chunks of the reduction for grad_x, two row tiles of grad_x.
    add_case(dt, {1, 9, 70, 129}, dt == DType::Float64 ? Metric::Cosine : Metric::Dot);
    // Backward over two D tiles (D > 128) and two row tiles of grad_y (N > 32), 2 episodes;
    // cosine: sq_norms_kernel over 9 blocks of rows with a tail, D past its 64-column step.
    add_case(dt, {2, 3, 33, 131}, Metric::Cosine);
  }
  // Every part of the block index at once: 2 episodes x 2 query tiles x 2 class passes.
  add_case(DType::Float64, {2, 9, 33, 10}, Metric::Euclidean);
  // Episodes of one row and one class, and one feature.
  add_case(DType::Float64, {3, 1, 1, 1}, Metric::Dot);
  // Only one gradient requested.
  add_case(DType::Float32, {1, 40, 9, 40}, Metric::Euclidean, {true, false}, " grad_x only");
  add_case(DType::Float32, {1, 40, 9, 40}, Metric::SqEuclidean, {false, true}, " grad_y only");
  // Empty inputs: D = 0 still defines the distances; no queries or no classes: the other
  // gradient is 0 * rows; an empty batch.
  for (const Metric m : metrics) add_case(DType::Float32, {1, 3, 2, 0}, m);
  add_case(DType::Float32, {1, 0, 2, 5}, Metric::SqEuclidean);
  add_case(DType::Float32, {1, 2, 0, 5}, Metric::Cosine);
  add_case(DType::Float16, {0, 2, 3, 5}, Metric::Dot);
}
