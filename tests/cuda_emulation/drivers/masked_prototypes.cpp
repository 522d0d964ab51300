// masked_prototypes (csrc/ops/masked_prototypes): masked_forward_kernel with 4, 2 or 1
// channels a block (chosen from the device's multiprocessor count: the emulated devices have
// 132, 1 and 4), masked_backward_kernel (C <= 8) and the fallbacks masked_grad_feat_kernel /
// masked_grad_masks_kernel (C > 8); against masked_prototypes_{forward,backward}_cpu.
#include <cmath>
#include <cstdio>
#include <string>

#include "check.h"
#include "ops/masked_prototypes/masked_prototypes.h"

using namespace check;

namespace {

struct Shape {
  std::int64_t B, S, C, D, HW;
};

struct Options {
  int device = 0;         // 0: 132 multiprocessors, 1: one, 2: four
  bool empty_class = false;  // class 0 has no mask anywhere: NaN prototype, no gradient
  bool grad_feat = true, grad_masks = true;
  bool cuda_forward = true;  // false: the backward takes the CPU forward's outputs (a cheap
                             // way to a backward shape whose forward grid is large)
};

void masked_case(const std::string& name, DType dt, Shape s, Options opt) {
  const auto [B, S, C, D, HW] = s;
  Rng rng(name);
  const Vec f = rounded(dt, rng.uniform(B * S * D * HW));
  Vec m = rng.uniform(B * S * C * HW, 0.0, 1.0);
  if (opt.empty_class && C > 0)
    for (std::int64_t bs = 0; bs < B * S; ++bs)
      for (std::int64_t p = 0; p < HW; ++p) m[bs * C * HW + p] = 0.0;
  m = rounded(dt, m);
  const DType a = acc_of(dt);
  const int dev = opt.device;

  Vec out(B * C * D, std::nan("")), mass(B * C, std::nan(""));
  medmeta::masked_prototypes_forward_cpu(DType::Float64, f.data(), m.data(), out.data(), mass.data(), B, S, C, D, HW);
  Buffer fd(dt, f), md(dt, m), od(dt, B * C * D), massd(a, B * C);
  if (opt.cuda_forward) {
    on_device(dev, [&] {
      medmeta::masked_prototypes_forward_cuda(caller(dev), dt, fd.data(), md.data(), od.data(), massd.data(), B, S, C,
                                              D, HW);
    });
    compare(name + " out", od.values(), out, dt);
    compare(name + " mass", massd.values(), mass, a);
  } else {
    od.assign(out);
    massd.assign(mass);
  }

  // Backward from the same prototypes and masses on both sides (the CUDA forward's).
  const Vec g = rounded(dt, rng.uniform(B * C * D)), o_dev = od.values(), mass_dev = massd.values();
  Vec gf(B * S * D * HW, std::nan("")), gm(B * S * C * HW, std::nan(""));
  medmeta::masked_prototypes_backward_cpu(DType::Float64, g.data(), f.data(), m.data(), o_dev.data(), mass_dev.data(),
                                          opt.grad_feat ? gf.data() : nullptr, opt.grad_masks ? gm.data() : nullptr,
                                          B, S, C, D, HW);
  Buffer gd(dt, g), gfd(dt, B * S * D * HW), gmd(dt, B * S * C * HW);
  on_device(dev, [&] {
    medmeta::masked_prototypes_backward_cuda(caller(dev), dt, gd.data(), fd.data(), md.data(), od.data(),
                                             massd.data(), opt.grad_feat ? gfd.data() : nullptr,
                                             opt.grad_masks ? gmd.data() : nullptr, B, S, C, D, HW);
  });
  compare(name + " grad_feat", gfd.values(), gf, dt, 2.0);
  compare(name + " grad_masks", gmd.values(), gm, dt, 2.0);
}

void add_case(DType dt, Shape s, Options opt = {}, const char* extra = "") {
  char buf[160];
  std::snprintf(buf, sizeof buf, "masked_prototypes %s B%lld S%lld C%lld D%lld HW%lld dev%d%s", short_name(dt),
                static_cast<long long>(s.B), static_cast<long long>(s.S), static_cast<long long>(s.C),
                static_cast<long long>(s.D), static_cast<long long>(s.HW), opt.device, extra);
  const std::string name = buf;
  add("masked_prototypes", name, [=] { masked_case(name, dt, s, opt); });
}

}  // namespace

void register_masked_prototypes() {
  for (const DType dt : kDtypes) {
    // One multiprocessor: 4 channels a block, the second tile partial; 3 of 4 classes of the
    // group; 70 pixels (a partial tile of 64 in backward); an empty class.
    add_case(dt, {1, 2, 3, 6, 70}, {1, true}, " empty class");
    // 2 channels a block (D = 3: the second tile partial).
    add_case(dt, {1, 2, 2, 3, 65}, {1});
    // 132 multiprocessors: one channel a block; 9 classes: three forward class groups (the
    // last of one class) and the fallback backward kernels, with an empty class; 300 pixels
    // (two per thread in forward).
    add_case(dt, {1, 1, 9, 2, 300}, {0, true}, " empty class");
  }
  // Two episodes, 4 channels a block, the last tile of one channel.
  add_case(DType::Float64, {2, 1, 3, 5, 33}, {1});
  // 4 channels a block over two class groups (4 + 2).
  add_case(DType::BFloat16, {1, 1, 6, 5, 40}, {1});
  // Backward over two episodes of two shots (the episode of a shot's block), fused and
  // fallback kernels (backward only: forward grids of 2 x 2 shots cost more than they add).
  add_case(DType::Float32, {2, 2, 3, 4, 70}, {1, true, true, true, false}, " backward only, empty class");
  add_case(DType::Float64, {2, 2, 9, 3, 20}, {0, true, true, true, false}, " backward only, empty class");
  // Two D chunks of 128 in the fused backward kernel (backward only: the forward would take
  // 33 blocks).
  add_case(DType::Float32, {1, 1, 2, 130, 20}, {2, false, true, true, false}, " backward only");
  add_case(DType::BFloat16, {1, 2, 3, 129, 70}, {2, true, true, true, false}, " backward only, empty class");
  // One gradient requested, fused and fallback backward kernels.
  add_case(DType::Float64, {1, 2, 3, 4, 40}, {2, false, true, false}, " grad_feat only");
  add_case(DType::Float32, {1, 2, 3, 4, 40}, {2, false, false, true}, " grad_masks only");
  add_case(DType::Float32, {1, 1, 10, 3, 20}, {0, false, false, true}, " grad_masks only");
  // Empty inputs: no channels (the masses are still written), no pixels, no shots, no classes.
  add_case(DType::Float32, {1, 1, 3, 0, 10}, {1});
  add_case(DType::Float32, {1, 1, 9, 0, 10}, {0});
  add_case(DType::Float16, {1, 2, 3, 4, 0}, {1});
  add_case(DType::Float32, {1, 0, 3, 4, 10}, {1});
  add_case(DType::Float64, {1, 2, 0, 4, 10}, {1});
}
