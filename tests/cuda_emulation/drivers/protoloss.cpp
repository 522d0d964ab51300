// The fused prototypical loss (csrc/ops/protoloss): protoloss_forward_kernel (NT = 8, 16, 32),
// protoloss_finalize_kernel (more than one query tile), backward_kernel with the loss
// coefficients and, for cosine, sq_norms_kernel; against protoloss_{forward,backward}_cpu.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "ops/protoloss/protoloss.h"

using namespace check;
using medmeta::Metric;

namespace {

constexpr int kDevice = 2;

void protoloss_case(const std::string& name, DType dt, EpisodeShape s, Metric m, double temperature, bool bad_target) {
  const auto [B, Q, N, D] = s;
  Rng rng(name);
  const Vec q = rounded(dt, rng.uniform(B * Q * D)), p = rounded(dt, rng.uniform(B * N * D));
  std::vector<std::int64_t> t(B * Q);
  for (auto& v : t) v = rng.integer(0, N - 1);
  if (bad_target && B * Q > 1) {
    t[0] = N;  // out of range: a NaN loss for episode 0, no one-hot term in its gradient
    t[1] = -1;
  }
  const double inv_t = 1.0 / temperature;
  const std::int64_t ws_elems = medmeta::protoloss_workspace_elems(B, Q, N);

  Vec loss(B, std::nan("")), acc(B, std::nan("")), dist(B * Q * N, std::nan("")), lse(B * Q, std::nan(""));
  Vec ws(ws_elems);
  medmeta::protoloss_forward_cpu(DType::Float64, q.data(), p.data(), t.data(), loss.data(), acc.data(), dist.data(),
                                 lse.data(), ws.data(), B, Q, N, D, m, inv_t);
  const DType a = acc_of(dt);
  Buffer qd(dt, q), pd(dt, p), lossd(dt, B), accd(dt, B), distd(a, B * Q * N), lsed(a, B * Q), wsd(a, ws_elems);
  on_device(kDevice, [&] {
    medmeta::protoloss_forward_cuda(caller(kDevice), dt, qd.data(), pd.data(), t.data(), lossd.data(), accd.data(),
                                    distd.data(), lsed.data(), wsd.data(), B, Q, N, D, m, inv_t);
  });
  compare(name + " loss", lossd.values(), loss, dt, 2.0);
  compare(name + " accuracy", accd.values(), acc, dt);
  compare(name + " dist", distd.values(), dist, a);
  compare(name + " lse", lsed.values(), lse, a);

  // Backward from the CUDA forward's saved dist and lse on both sides.
  const Vec gl = rounded(dt, rng.uniform(B)), dist_dev = distd.values(), lse_dev = lsed.values();
  Vec gq(B * Q * D, std::nan("")), gp(B * N * D, std::nan(""));
  medmeta::protoloss_backward_cpu(DType::Float64, gl.data(), q.data(), p.data(), t.data(), dist_dev.data(),
                                  lse_dev.data(), gq.data(), gp.data(), ws.data(), B, Q, N, D, m, inv_t);
  Buffer gld(dt, gl), gqd(dt, B * Q * D), gpd(dt, B * N * D), wsb(a, ws_elems);
  on_device(kDevice, [&] {
    medmeta::protoloss_backward_cuda(caller(kDevice), dt, gld.data(), qd.data(), pd.data(), t.data(), distd.data(),
                                     lsed.data(), gqd.data(), gpd.data(), wsb.data(), B, Q, N, D, m, inv_t);
  });
  const double f = m == Metric::Euclidean || m == Metric::Cosine ? 4.0 : 2.0;
  compare(name + " grad_queries", gqd.values(), gq, dt, f);
  compare(name + " grad_protos", gpd.values(), gp, dt, f);
}

void add_case(DType dt, EpisodeShape s, Metric m, double temperature = 1.0, bool bad_target = false) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "protoloss %s B%lld Q%lld N%lld D%lld %s T%g%s", short_name(dt),
                static_cast<long long>(s.B), static_cast<long long>(s.Q), static_cast<long long>(s.N),
                static_cast<long long>(s.D), kMetric[static_cast<int>(m)], temperature,
                bad_target ? " bad targets" : "");
  const std::string name = buf;
  add("protoloss", name, [=] { protoloss_case(name, dt, s, m, temperature, bad_target); });
}

// The CPU and CUDA kernels must agree on accepting or refusing a call.
void same_outcome(DType dt, EpisodeShape s) {
  char buf[120];
  std::snprintf(buf, sizeof buf, "protoloss %s B%lld Q%lld N%lld D%lld accepted alike", short_name(dt),
                static_cast<long long>(s.B), static_cast<long long>(s.Q), static_cast<long long>(s.N),
                static_cast<long long>(s.D));
  const std::string name = buf;
  add("protoloss", name, [=] {
    const auto [B, Q, N, D] = s;
    const DType a = acc_of(dt);
    Vec q(B * Q * D, 0.5), p(B * N * D, 0.25), loss(B), acc(B), dist(B * Q * N), lse(B * Q);
    Vec ws(medmeta::protoloss_workspace_elems(B, Q, N));
    std::vector<std::int64_t> t(B * Q, 0);
    const std::string cpu = outcome([&] {
      medmeta::protoloss_forward_cpu(DType::Float64, q.data(), p.data(), t.data(), loss.data(), acc.data(),
                                     dist.data(), lse.data(), ws.data(), B, Q, N, D, Metric::SqEuclidean, 1.0);
    });
    Buffer qd(dt, q), pd(dt, p), lossd(dt, B), accd(dt, B), distd(a, B * Q * N), lsed(a, B * Q);
    Buffer wsd(a, medmeta::protoloss_workspace_elems(B, Q, N));
    const std::string cuda = outcome([&] {
      on_device(kDevice, [&] {
        medmeta::protoloss_forward_cuda(caller(kDevice), dt, qd.data(), pd.data(), t.data(), lossd.data(),
                                        accd.data(), distd.data(), lsed.data(), wsd.data(), B, Q, N, D,
                                        Metric::SqEuclidean, 1.0);
      });
    });
    expect(name, (cpu == "ok") == (cuda == "ok"), "cpu " + cpu + ", cuda " + cuda);
  });
}

}  // namespace

void register_protoloss() {
  const Metric metrics[] = {Metric::SqEuclidean, Metric::Euclidean, Metric::Cosine, Metric::Dot};
  for (const DType dt : kDtypes) {
    // One query tile, NT = 8, every metric and two temperatures.
    for (const Metric m : metrics) add_case(dt, {1, 5, 3, 37}, m, m == Metric::Dot ? 0.5 : 2.0);
    // Two query tiles (the finalize kernel), NT = 16, out-of-range targets.
    add_case(dt, {1, 33, 10, 20}, Metric::SqEuclidean, 1.0, true);
    // NT = 32 in two class passes; two D chunks; backward: two row tiles of grad_protos.
    add_case(dt, {1, 6, 40, 130}, dt == DType::Float32 ? Metric::Cosine : Metric::Euclidean);
  }
  // The finalize kernel over 9 episodes (two blocks, the second with one live warp) ...
  add_case(DType::Float64, {9, 17, 5, 8}, Metric::SqEuclidean, 1.0);
  // ... and over 33 query tiles (lanes loop over the tiles): 16 queries a tile at NT = 8 in float64.
  add_case(DType::Float64, {1, 513, 3, 4}, Metric::Dot, 1.0);
  // No queries: loss and accuracy 0 (zero-filled on the caller's stream); D = 0; empty batch.
  add_case(DType::Float32, {2, 0, 3, 5}, Metric::SqEuclidean);
  add_case(DType::BFloat16, {1, 4, 3, 0}, Metric::Cosine);
  add_case(DType::Float32, {0, 4, 3, 5}, Metric::SqEuclidean);
  same_outcome(DType::Float32, {1, 4, 0, 5});  // no classes: refused
  same_outcome(DType::Float16, {0, 4, 0, 5});  // an empty batch: accepted
}
