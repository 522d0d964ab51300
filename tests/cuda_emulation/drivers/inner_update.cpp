// The fused inner-loop update (csrc/ops/inner_update): inner_update_forward_kernel,
// inner_update_backward_kernel and inner_update_rate_kernel, over batches of up to 36 tensors,
// for every learning-rate mode, 16-byte vector and scalar paths, in place, with and without
// the `partials` scratch of a single learned rate's gradient; against
// inner_update_{forward,backward}_cpu in float64. The single-rate gradient's reduction order
// is checked to be independent of the thread schedule (bitwise, both thread orders).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "ops/inner_update/inner_update.h"

using namespace check;
using medmeta::UpdateGradTensor;
using medmeta::UpdateTensor;

namespace {

constexpr int kDevice = 2;

enum class Rate {
  Scalar,    // lr == nullptr: lr_scalar
  Learned,   // one learned rate for the tensor (lr_numel == 1), MAML++
  Shared,    // per-element rates shared by the task rows (lr_numel == numel / rows), Meta-SGD
  Full,      // one rate per element (lr_numel == numel)
};

struct Tensor {
  std::int64_t rows, cols;  // numel = rows * cols
  Rate rate;
};

enum class Which { All, Param, Grad, Lr, Out, GradOut, GradGrad };
const char* const kWhich[] = {"", " (param only)", " (grad only)", " (lr only)", " (out only)", " (grad_out only)",
                              " (grad_grad only)"};

struct Options {
  std::size_t misalign = 0;  // elements between a 64-byte boundary and the tensors' data ...
  Which which = Which::All;  // ... of every buffer, or of one of them
  bool in_place = false;     // out == param
  bool partials = true;      // scratch for the single learned rates' per-block sums
  bool grad_grad = true, grad_lr = true;
  bool nonzero_grad_lr = true;  // grad_lr starts from a value the update adds to
};

std::int64_t lr_numel(const Tensor& t) {
  switch (t.rate) {
    case Rate::Scalar: return 0;
    case Rate::Learned: return 1;
    case Rate::Shared: return t.cols;
    case Rate::Full: return t.rows * t.cols;
  }
  return 0;
}

// Device-side buffers of one tensor.
struct DeviceTensor {
  Buffer param, grad, lr, out, grad_out, grad_grad, grad_lr, partials;
};

// The CUDA backward over the device tensors.
void run_backward(DType dt, const std::vector<Tensor>& ts, std::vector<DeviceTensor>& dev, const Options& opt) {
  std::vector<UpdateGradTensor> bu(ts.size());
  for (std::size_t k = 0; k < ts.size(); ++k) {
    const bool has_lr = ts[k].rate != Rate::Scalar;
    DeviceTensor& d = dev[k];
    bu[k] = {d.grad_out.data(), d.grad.data(), has_lr ? d.lr.data() : nullptr,
             opt.grad_grad ? d.grad_grad.data() : nullptr, opt.grad_lr ? d.grad_lr.data() : nullptr,
             ts[k].rows * ts[k].cols, lr_numel(ts[k]),
             opt.partials && ts[k].rate == Rate::Learned ? d.partials.data() : nullptr};
  }
  on_device(kDevice, [&] {
    medmeta::inner_update_backward_cuda(caller(kDevice), dt, bu.data(), static_cast<std::int64_t>(bu.size()), 0.1);
  });
}

void inner_case(const std::string& name, DType dt, const std::vector<Tensor>& ts, Options opt) {
  Rng rng(name);
  const std::size_t K = ts.size();
  const DType a = acc_of(dt);
  std::vector<Vec> p(K), g(K), lr(K), go(K), glr0(K), out(K), gg(K), glr(K);
  std::vector<DeviceTensor> dev;
  std::vector<UpdateTensor> fc(K), fu(K);
  std::vector<UpdateGradTensor> bc(K);
  for (std::size_t k = 0; k < K; ++k) {
    const std::int64_t n = ts[k].rows * ts[k].cols, ln = lr_numel(ts[k]);
    const std::size_t lr_len = static_cast<std::size_t>(std::max<std::int64_t>(ln, 1));
    p[k] = rounded(dt, rng.uniform(n));
    g[k] = rounded(dt, rng.uniform(n));
    lr[k] = rounded(dt, rng.uniform(lr_len, 0.01, 0.5));
    go[k] = rounded(dt, rng.uniform(n));
    glr0[k] = rounded(a, opt.nonzero_grad_lr ? rng.uniform(lr_len) : Vec(lr_len, 0.0));
    out[k] = Vec(n, std::nan(""));
    gg[k] = Vec(n, std::nan(""));
    glr[k] = glr0[k];
    const auto mis = [&](Which w) { return opt.which == Which::All || opt.which == w ? opt.misalign : 0; };
    dev.push_back({Buffer(dt, p[k], mis(Which::Param)), Buffer(dt, g[k], mis(Which::Grad)),
                   Buffer(dt, lr[k], mis(Which::Lr)), Buffer(dt, n, mis(Which::Out)),
                   Buffer(dt, go[k], mis(Which::GradOut)), Buffer(dt, n, mis(Which::GradGrad)), Buffer(a, glr0[k]),
                   Buffer(a, medmeta::inner_update_partials(n, static_cast<std::int64_t>(size_of(dt))))});
    const bool has_lr = ts[k].rate != Rate::Scalar;
    fc[k] = {p[k].data(), g[k].data(), has_lr ? lr[k].data() : nullptr, out[k].data(), n, ln};
    DeviceTensor& d = dev.back();
    fu[k] = {d.param.data(), d.grad.data(), has_lr ? d.lr.data() : nullptr,
             opt.in_place ? d.param.data() : d.out.data(), n, ln};
    bc[k] = {go[k].data(), g[k].data(), has_lr ? lr[k].data() : nullptr, opt.grad_grad ? gg[k].data() : nullptr,
             opt.grad_lr ? glr[k].data() : nullptr, n, ln};
  }

  medmeta::inner_update_forward_cpu(DType::Float64, fc.data(), static_cast<std::int64_t>(K), 0.1);
  on_device(kDevice, [&] {
    medmeta::inner_update_forward_cuda(caller(kDevice), dt, fu.data(), static_cast<std::int64_t>(K), 0.1);
  });
  medmeta::inner_update_backward_cpu(DType::Float64, bc.data(), static_cast<std::int64_t>(K), 0.1);
  run_backward(dt, ts, dev, opt);

  // One comparison per output kind over all tensors (the first mismatch names its tensor).
  Vec got_out, ref_out, got_gg, ref_gg, got_glr, ref_glr;
  for (std::size_t k = 0; k < K; ++k) {
    const Vec o = (opt.in_place ? dev[k].param : dev[k].out).values();
    got_out.insert(got_out.end(), o.begin(), o.end());
    ref_out.insert(ref_out.end(), out[k].begin(), out[k].end());
    const Vec ggv = dev[k].grad_grad.values();
    got_gg.insert(got_gg.end(), ggv.begin(), ggv.end());
    ref_gg.insert(ref_gg.end(), gg[k].begin(), gg[k].end());
    const Vec gl = dev[k].grad_lr.values();
    got_glr.insert(got_glr.end(), gl.begin(), gl.end());
    ref_glr.insert(ref_glr.end(), glr[k].begin(), glr[k].end());
  }
  compare(name + " out", got_out, ref_out, dt);
  compare(name + " grad_grad", got_gg, ref_gg, dt);
  compare(name + " grad_lr", got_glr, ref_glr, a, 2.0);
}

// A single learned rate's gradient (partials, then the rate kernel) is bitwise the same in
// both thread orders: its reduction order does not depend on the schedule.
void schedule_case(const std::string& name, DType dt, const std::vector<Tensor>& ts, bool partials) {
  const DType a = acc_of(dt);
  std::vector<std::vector<DeviceTensor>> runs(2);
  Options opt;
  opt.partials = partials;
  for (int r = 0; r < 2; ++r) {
    Rng same(name);
    for (const Tensor& t : ts) {
      const std::int64_t n = t.rows * t.cols;
      const Vec g = rounded(dt, same.uniform(n)), go = rounded(dt, same.uniform(n));
      runs[r].push_back({Buffer(dt, 0), Buffer(dt, g), Buffer(dt, Vec{0.1}), Buffer(dt, 0), Buffer(dt, go),
                         Buffer(dt, n), Buffer(a, Vec{0.0}),
                         Buffer(a, medmeta::inner_update_partials(n, static_cast<std::int64_t>(size_of(dt))))});
    }
    emu::set_order(r == 0 ? emu::Order::Ascending : emu::Order::Descending);
    run_backward(dt, ts, runs[r], opt);
  }
  emu::set_order(emu::Order::Alternating);
  bool same = true;
  for (std::size_t k = 0; k < ts.size(); ++k) same = same && runs[0][k].grad_lr.same_bits(runs[1][k].grad_lr);
  expect(name, same, "grad_lr differs between the two thread orders");
}

std::vector<Tensor> with_rate(std::vector<Tensor> ts, Rate r) {
  for (Tensor& t : ts) t.rate = r;
  return ts;
}

const char* const kRate[] = {"scalar", "learned", "shared", "full"};

void add_case(DType dt, const char* what, const std::vector<Tensor>& ts, Options opt = {}) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "inner_update %s %s: %zu tensors%s%s%s%s", short_name(dt), what, ts.size(),
                opt.misalign ? (opt.misalign == 1 ? ", misaligned by 1" : ", misaligned by 3") : "",
                opt.misalign ? kWhich[static_cast<int>(opt.which)] : "", opt.in_place ? ", in place" : "",
                opt.partials ? "" : ", no partials");
  const std::string name = buf;
  add("inner_update", name, [=] { inner_case(name, dt, ts, opt); });
}

}  // namespace

void register_inner_update() {
  // Sizes around the 16-byte packs (V = 4 floats, 2 doubles, 8 halves) and the chunks of a
  // block (4 packs a thread: 4096 floats), rows around the batch of 4 task rows.
  const std::vector<Tensor> mix = {
      {4, 10, Rate::Scalar}, {4, 1000, Rate::Scalar}, {4, 4099, Rate::Scalar}, {4, 1, Rate::Scalar},
      {5, 16, Rate::Scalar}, {3, 2056, Rate::Scalar}, {1, 7, Rate::Scalar},
  };
  for (const DType dt : kDtypes) {
    for (const Rate r : {Rate::Scalar, Rate::Learned, Rate::Shared, Rate::Full}) {
      const auto ts = with_rate(mix, r);
      add_case(dt, kRate[static_cast<int>(r)], ts);
      Options mis;
      mis.misalign = dt == DType::Float16 ? 3 : 1;  // the scalar (non-vector) paths
      add_case(dt, kRate[static_cast<int>(r)], ts, mis);
    }
    // Every mode in one launch (blocks of different kinds side by side).
    add_case(dt, "mixed rates", {{4, 10, Rate::Scalar}, {4, 1000, Rate::Learned}, {4, 4099, Rate::Shared},
                                 {2, 600, Rate::Full}, {6, 8, Rate::Learned}});
  }
  Options in_place;
  in_place.in_place = true;
  add_case(DType::Float32, "scalar", with_rate(mix, Rate::Scalar), in_place);
  add_case(DType::Float32, "shared", with_rate(mix, Rate::Shared), in_place);
  add_case(DType::Float16, "full", with_rate(mix, Rate::Full), in_place);

  // More tensors than one launch takes (36): two forward and backward batches, two launches
  // of the rate kernel; with and without partials.
  std::vector<Tensor> many;
  for (int k = 0; k < 40; ++k) many.push_back({2, 5 + k % 7, static_cast<Rate>(k % 4)});
  for (const DType dt : kDtypes) add_case(dt, "mixed rates", many);
  const auto many_learned = with_rate(many, Rate::Learned);
  add_case(DType::Float32, "learned", many_learned);
  Options no_partials;
  no_partials.partials = false;
  add_case(DType::Float32, "learned", many_learned, no_partials);

  // A single learned rate over a large tensor: 15 per-block partial sums (60000 floats), 8
  // in float64's 16 KiB chunks...; without partials one block reduces all 60000 elements.
  const std::vector<Tensor> big = {{3, 20000, Rate::Learned}, {2, 3000, Rate::Learned}, {1, 5, Rate::Learned}};
  for (const DType dt : kDtypes) {
    add_case(dt, "learned, large", big);
    add_case(dt, "learned, large", big, no_partials);
  }
  for (const DType dt : {DType::Float32, DType::BFloat16}) {
    for (const bool partials : {true, false}) {
      const std::string name = std::string("inner_update ") + short_name(dt) +
                               " learned: grad_lr bitwise the same in both thread orders" +
                               (partials ? "" : ", no partials");
      add("inner_update", name, [=] { schedule_case(name, dt, big, partials); });
    }
  }

  // One misaligned buffer turns the 16-byte vector path off exactly when the kernel reads or
  // writes it (a vector access to it would be a misaligned typed access, which UBSan reports):
  // grad only matters for a rate gradient, lr only for per-element rates (row length 2056: a
  // multiple of every pack).
  const std::vector<Tensor> aligned_rows = {{3, 2056, Rate::Scalar}, {2, 4096, Rate::Learned},
                                            {3, 2056, Rate::Shared}, {1, 2056, Rate::Full}};
  for (const Which w : {Which::Param, Which::Grad, Which::Lr, Which::Out, Which::GradOut, Which::GradGrad}) {
    Options one;
    one.misalign = 1;
    one.which = w;
    add_case(w == Which::Grad || w == Which::Lr ? DType::Float16 : DType::Float32, "mixed rates", aligned_rows, one);
  }

  // Gradients not requested: no grad_grad; no grad_lr (nothing to reduce for learned rates).
  Options no_gg;
  no_gg.grad_grad = false;
  add_case(DType::Float32, "mixed rates, no grad_grad", many, no_gg);
  Options no_glr;
  no_glr.grad_lr = false;
  add_case(DType::Float64, "mixed rates, no grad_lr", many, no_glr);
  // Learned rates without partials or grad_grad: the first backward kernel has nothing to do
  // (no launch), the rate kernel reduces every tensor itself.
  Options rate_only = no_partials;
  rate_only.grad_grad = false;
  add_case(DType::BFloat16, "learned, no grad_grad", big, rate_only);

  // Zero-size tensors among others (including per-element rates of a [T, 0] parameter), and an
  // empty list.
  const std::vector<Tensor> zeros = {{4, 0, Rate::Scalar}, {0, 5, Rate::Learned}, {2, 3, Rate::Learned},
                                     {3, 0, Rate::Shared}, {0, 4, Rate::Full},    {2, 9, Rate::Shared}};
  for (const DType dt : {DType::Float32, DType::Float16}) add_case(dt, "zero-size tensors", zeros);
  // 57 tensors, every third of size zero: 38 tensors to update, in two batches that skip the
  // empty ones.
  std::vector<Tensor> sparse;
  for (int k = 0; k < 57; ++k) sparse.push_back({2, k % 3 == 0 ? 0 : 3 + k % 5, static_cast<Rate>(k % 4)});
  add_case(DType::Float32, "zero-size tensors", sparse);
  add_case(DType::Float64, "no tensors", {});
}
