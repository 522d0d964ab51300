// prototypes (csrc/ops/prototypes): prototypes_forward_kernel (dynamic shared memory sized by
// the host, columns per block 32/64/96/128, class passes, support chunks) and
// prototypes_backward_kernel; against prototypes_{forward,backward}_cpu in float64.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "ops/prototypes/prototypes.h"

using namespace check;

namespace {

constexpr int kDevice = 1;

struct Shape {
  std::int64_t B, S, N, D;
};

enum class Labels {
  Cyclic,  // s % N: every class has examples when S >= N
  Random,  // some classes may have none (NaN prototypes)
  Bad,     // Random, plus labels -1, N and 2^40, which are ignored
};

struct Options {
  bool weighted = true;
  Labels labels = Labels::Cyclic;
  bool grad_emb = true, grad_weights = true;
};

void prototypes_case(const std::string& name, DType dt, Shape s, Options opt) {
  const auto [B, S, N, D] = s;
  Rng rng(name);
  const Vec e = rounded(dt, rng.uniform(B * S * D)), w = rounded(dt, rng.uniform(B * S, 0.1, 2.0));
  std::vector<std::int64_t> labels(B * S);
  for (std::int64_t i = 0; i < B * S; ++i)
    labels[i] = opt.labels == Labels::Cyclic ? i % std::max<std::int64_t>(N, 1) : rng.integer(0, N - 1);
  if (opt.labels == Labels::Bad && B * S >= 3) {
    labels[0] = -1;
    labels[1] = N;
    labels[2] = std::int64_t(1) << 40;
  }
  const void* wc = opt.weighted ? w.data() : nullptr;

  Vec out(B * N * D, std::nan("")), wsum(B * N, std::nan(""));
  medmeta::prototypes_forward_cpu(DType::Float64, e.data(), labels.data(), wc, out.data(), wsum.data(), B, S, N, D);
  Buffer ed(dt, e), wd(dt, w), od(dt, B * N * D), wsd(acc_of(dt), B * N);
  on_device(kDevice, [&] {
    medmeta::prototypes_forward_cuda(caller(kDevice), dt, ed.data(), labels.data(), opt.weighted ? wd.data() : nullptr,
                                     od.data(), wsd.data(), B, S, N, D);
  });
  compare(name + " out", od.values(), out, dt);
  compare(name + " wsum", wsd.values(), wsum, acc_of(dt));

  // Backward from the CUDA forward's prototypes and weight sums on both sides.
  const Vec g = rounded(dt, rng.uniform(B * N * D)), o_dev = od.values(), ws_dev = wsd.values();
  Vec ge(B * S * D, std::nan("")), gw(B * S, std::nan(""));
  medmeta::prototypes_backward_cpu(DType::Float64, g.data(), e.data(), labels.data(), wc, o_dev.data(), ws_dev.data(),
                                   opt.grad_emb ? ge.data() : nullptr, opt.grad_weights ? gw.data() : nullptr, B, S,
                                   N, D);
  Buffer gd(dt, g), ged(dt, B * S * D), gwd(dt, B * S);
  on_device(kDevice, [&] {
    medmeta::prototypes_backward_cuda(caller(kDevice), dt, gd.data(), ed.data(), labels.data(),
                                      opt.weighted ? wd.data() : nullptr, od.data(), wsd.data(),
                                      opt.grad_emb ? ged.data() : nullptr, opt.grad_weights ? gwd.data() : nullptr, B,
                                      S, N, D);
  });
  compare(name + " grad_emb", ged.values(), ge, dt);
  compare(name + " grad_weights", gwd.values(), gw, dt, 2.0);
}

void add_case(DType dt, Shape s, Options opt = {}, const char* extra = "") {
  char buf[160];
  std::snprintf(buf, sizeof buf, "prototypes %s B%lld S%lld N%lld D%lld%s%s", short_name(dt),
                static_cast<long long>(s.B), static_cast<long long>(s.S), static_cast<long long>(s.N),
                static_cast<long long>(s.D), opt.weighted ? " weighted" : "", extra);
  const std::string name = buf;
  add("prototypes", name, [=] { prototypes_case(name, dt, s, opt); });
}

}  // namespace

void register_prototypes() {
  for (const DType dt : kDtypes) {
    // 64 columns a block (4 slices of the support rows), two episodes.
    add_case(dt, {2, 10, 5, 33});
    // 128 columns and two D tiles (the second partial), two support chunks of 256, unweighted.
    add_case(dt, {1, 300, 7, 130}, {false});
    // 32 columns (8 slices) and more classes than fit in shared memory at once: 2 passes in
    // 4-byte accumulators, 3 in float64.
    add_case(dt, {1, 60, 50, 20});
    // 96 columns (64 threads only stage), out-of-range labels, classes without examples.
    add_case(dt, {1, 12, 16, 96}, {true, Labels::Bad}, " bad labels, empty classes");
  }
  // Two class passes over two support chunks each (the labels restaged per pass).
  add_case(DType::Float64, {1, 300, 30, 20}, {false, Labels::Random}, " random labels");
  // One gradient requested; a partial warp of support rows (S = 13).
  add_case(DType::Float32, {1, 13, 4, 40}, {true, Labels::Cyclic, true, false}, " grad_emb only");
  add_case(DType::Float64, {1, 13, 4, 40}, {true, Labels::Cyclic, false, true}, " grad_weights only");
  // Empty inputs: D = 0 still defines the weight sums; no support rows (NaN prototypes, zero
  // sums); no classes; an empty batch.
  add_case(DType::Float32, {2, 10, 3, 0});
  add_case(DType::Float16, {1, 0, 3, 4});
  add_case(DType::Float32, {1, 10, 0, 4});
  add_case(DType::Float64, {0, 10, 3, 4});
}
