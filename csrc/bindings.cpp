// pybind11 module medmeta._C: one function per kernel entry. Arguments are raw data
// pointers (integers from torch's data_ptr() or numpy's ctypes.data), sizes, dtype and
// metric codes, and the device: index < 0 for the CPU, else a CUDA ordinal and the
// caller's stream. Every binding checks its sizes before it reads any data (common/sizes.h:
// negative sizes, element counts past 2^56, the CUDA kernels' row limit, also in builds
// without CUDA). The GIL is released for every kernel and data scan (call_guard: after the
// arguments are converted to C++ values, until the result is converted back), so other
// Python threads run meanwhile; no binding keeps state between calls.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <utility>
#include <vector>

#include "common/cpu.h"
#include "common/sizes.h"
#include "common/validate.h"
#include "ops/distance/distance.h"
#include "ops/inner_update/inner_update.h"
#include "ops/masked_prototypes/masked_prototypes.h"
#include "ops/protoloss/protoloss.h"
#include "ops/prototypes/prototypes.h"

#if defined(MEDMETA_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;
using std::int64_t;
using std::uintptr_t;


namespace {

using namespace medmeta;

template <typename P> P* ptr(uintptr_t p) { return reinterpret_cast<P*>(p); }

Device device_of(int index, uintptr_t stream) { return Device{index, stream}; }

// The data checks the forward bindings run on CPU as part of their call (one
// crossing from Python instead of a kernel call plus a scan call each): -1, or the flat
// index of the first offending value. CUDA data is not read here (the Python layer checks
// it with torch reductions), nor is any data when `check` is false.
int64_t first_bad_label(const Device& dev, bool check, uintptr_t labels, int64_t n, int64_t hi) {
  return check && dev.is_cpu() ? first_out_of_range(ptr<const int64_t>(labels), n, hi) : -1;
}

int64_t first_nonfinite_rate(const Device& dev, bool check, int dt, const std::vector<uintptr_t>& lrs,
                             const std::vector<int64_t>& numels) {
  if (!check || !dev.is_cpu()) return -1;
  for (size_t k = 0; k < lrs.size(); ++k) {
    if (lrs[k] == 0) continue;  // the scalar rate
    const int64_t bad = DType(dt) == DType::Float64 ? first_nonfinite(ptr<const double>(lrs[k]), numels[k])
                                                    : first_nonfinite(ptr<const float>(lrs[k]), numels[k]);
    if (bad >= 0) return static_cast<int64_t>(k);
  }
  return -1;
}

// Every tensor of an inner_update call: see check_update_tensor; their total stays below 2^56.
void check_update_sizes(const char* op, const std::vector<uintptr_t>& lrs, const std::vector<int64_t>& numels,
                        const std::vector<int64_t>& lr_numels) {
  int64_t total = 0;
  for (size_t k = 0; k < numels.size(); ++k) {
    total += check_update_tensor(op, k, numels[k], lrs[k] != 0, lr_numels[k]);
    MEDMETA_CHECK(total <= kMaxElements, std::string(op) + ": the tensors hold more than 2^56 elements");
  }
}

int64_t first_empty_class(const Device& dev, bool check, int dt, uintptr_t mass, int64_t n) {
  if (!check || !dev.is_cpu()) return -1;
  return DType(dt) == DType::Float64 ? first_not_positive(ptr<const double>(mass), n)
                                      : first_not_positive(ptr<const float>(mass), n);
}

#if defined(MEDMETA_WITH_CUDA)
#define MEDMETA_ON_DEVICE(dev, name, ...) \
  ((dev).is_cpu() ? name##_cpu(__VA_ARGS__) : name##_cuda((dev), __VA_ARGS__))
#else
#define MEDMETA_ON_DEVICE(dev, name, ...) \
  ((dev).is_cpu() ? name##_cpu(__VA_ARGS__) : fail("this build of medmeta._C has no CUDA kernels"))
#endif

const char* cpu_isa() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "x86-64 baseline";
#else
  return "generic";
#endif
}

int cuda_device_count() {
#if defined(MEDMETA_WITH_CUDA)
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

// The CUDA version the installed driver supports (1000 * major + 10 * minor; 0 without a
// driver or without CUDA kernels). Needs no context, so it is safe to call on any machine.
int cuda_driver_version() {
#if defined(MEDMETA_WITH_CUDA)
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
#else
  return 0;
#endif
}

py::dict build_info() {
  py::dict d;
#if defined(MEDMETA_WITH_CUDA)
  d["cuda"] = true;
  d["cuda_archs"] = MEDMETA_CUDA_ARCHS;
  d["cuda_runtime"] = CUDART_VERSION;  // linked statically: the kernels need a driver for this version
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
  d["cuda_runtime"] = 0;
#endif
#if defined(MEDMETA_WITH_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#if defined(MEDMETA_SANITIZE)
  d["sanitize"] = true;  // ASan + UBSan: a test build, loaded with the runtimes preloaded
#else
  d["sanitize"] = false;
#endif
  d["cpu_isa"] = cpu_isa();
  d["cpu_dtypes"] = py::make_tuple("float32", "float64");
  d["cuda_dtypes"] = py::make_tuple("float32", "float64", "float16", "bfloat16");
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "medmeta native core: framework-agnostic CPU (OpenMP) and CUDA kernels over raw pointers";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("build_info", &build_info, "What this build contains: CUDA (and its archs), OpenMP, CPU ISA.");
  m.def("cuda_device_count", &cuda_device_count, nogil);
  m.def("cuda_driver_version", &cuda_driver_version, nogil,
        "CUDA version of the installed driver (1000 * major + 10 * minor), 0 if none or no CUDA build.");
  m.attr("inner_update_chunk_bytes") = kInnerUpdateChunkBytes;
  m.def("num_threads", &cpu_num_threads, "Threads the CPU kernels use.");
  m.def("set_num_threads", &set_cpu_num_threads, py::arg("n"), "Threads for the CPU kernels (<= 0: OpenMP default).");

  // CPU data check of the prototypes' weights (index, or -1 when all are fine). dt: 0 float32, 1 float64.
  // The other data checks run inside the forward bindings below.
  m.def("first_negative_or_nonfinite", [](uintptr_t v, int64_t n, int dt) {
    checked_numel("first_negative_or_nonfinite", "v", {{"n", n}});
    return dt == 1 ? first_negative_or_nonfinite(ptr<const double>(v), n)
                   : first_negative_or_nonfinite(ptr<const float>(v), n);
  }, py::arg("v"), py::arg("n"), py::arg("dt"), nogil);

  m.def(
      "distance_forward",
      [](int dev, uintptr_t stream, int dt, uintptr_t x, uintptr_t y, uintptr_t out, uintptr_t ws, int64_t B,
         int64_t Q, int64_t N, int64_t D, int metric) {
        check_pairwise_sizes("pairwise_distance", dev >= 0, B, Q, N, D);
        MEDMETA_ON_DEVICE(device_of(dev, stream), distance_forward, DType(dt), ptr<const void>(x),
                          ptr<const void>(y), ptr<void>(out), ptr<void>(ws), B, Q, N, D, Metric(metric));
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("x"), py::arg("y"), py::arg("out"),
      py::arg("ws"), py::arg("B"), py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("metric"), nogil);
  m.def(
      "distance_backward",
      [](int dev, uintptr_t stream, int dt, uintptr_t g, uintptr_t x, uintptr_t y, uintptr_t out, uintptr_t gx,
         uintptr_t gy, uintptr_t ws, int64_t B, int64_t Q, int64_t N, int64_t D, int metric) {
        check_pairwise_sizes("pairwise_distance", dev >= 0, B, Q, N, D);
        MEDMETA_ON_DEVICE(device_of(dev, stream), distance_backward, DType(dt), ptr<const void>(g),
                          ptr<const void>(x), ptr<const void>(y), ptr<const void>(out), ptr<void>(gx),
                          ptr<void>(gy), ptr<void>(ws), B, Q, N, D, Metric(metric));
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("g"), py::arg("x"), py::arg("y"),
      py::arg("out"), py::arg("gx"), py::arg("gy"), py::arg("ws"), py::arg("B"), py::arg("Q"), py::arg("N"),
      py::arg("D"), py::arg("metric"), nogil);

  m.def(
      "protoloss_forward",
      [](int dev, uintptr_t stream, int dt, uintptr_t q, uintptr_t p, uintptr_t t, uintptr_t loss, uintptr_t acc,
         uintptr_t dist, uintptr_t lse, uintptr_t ws, int64_t B, int64_t Q, int64_t N, int64_t D, int metric,
         double inv_t, bool check) {
        check_pairwise_sizes("prototypical_loss", dev >= 0, B, Q, N, D);
        const Device device = device_of(dev, stream);
        const int64_t bad = first_bad_label(device, check, t, B * Q, N);
        if (bad >= 0) return bad;  // nothing computed
        MEDMETA_ON_DEVICE(device, protoloss_forward, DType(dt), ptr<const void>(q), ptr<const void>(p),
                          ptr<const int64_t>(t), ptr<void>(loss), ptr<void>(acc), ptr<void>(dist), ptr<void>(lse),
                          ptr<void>(ws), B, Q, N, D, Metric(metric), inv_t);
        return int64_t{-1};
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("q"), py::arg("p"), py::arg("t"),
      py::arg("loss"), py::arg("acc"), py::arg("dist"), py::arg("lse"), py::arg("ws"), py::arg("B"),
      py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("metric"), py::arg("inv_t"), py::arg("check") = false, nogil,
      "Returns -1, or (CPU, check) the flat index of the first target outside [0, N): nothing is computed then.");
  m.def(
      "protoloss_backward",
      [](int dev, uintptr_t stream, int dt, uintptr_t gl, uintptr_t q, uintptr_t p, uintptr_t t, uintptr_t dist,
         uintptr_t lse, uintptr_t gq, uintptr_t gp, uintptr_t ws, int64_t B, int64_t Q, int64_t N, int64_t D,
         int metric, double inv_t) {
        check_pairwise_sizes("prototypical_loss", dev >= 0, B, Q, N, D);
        MEDMETA_ON_DEVICE(device_of(dev, stream), protoloss_backward, DType(dt), ptr<const void>(gl),
                          ptr<const void>(q), ptr<const void>(p), ptr<const int64_t>(t), ptr<const void>(dist),
                          ptr<const void>(lse), ptr<void>(gq), ptr<void>(gp), ptr<void>(ws), B, Q, N, D,
                          Metric(metric), inv_t);
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("gl"), py::arg("q"), py::arg("p"),
      py::arg("t"), py::arg("dist"), py::arg("lse"), py::arg("gq"), py::arg("gp"), py::arg("ws"), py::arg("B"),
      py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("metric"), py::arg("inv_t"), nogil);

  m.def(
      "prototypes_forward",
      [](int dev, uintptr_t stream, int dt, uintptr_t emb, uintptr_t labels, uintptr_t w, uintptr_t out,
         uintptr_t wsum, int64_t B, int64_t S, int64_t N, int64_t D, bool check) {
        check_prototypes_sizes(dev >= 0, B, S, N, D);
        const Device device = device_of(dev, stream);
        const int64_t bad = first_bad_label(device, check, labels, B * S, N);
        if (bad >= 0) return std::pair<int64_t, int64_t>{bad, -1};  // nothing computed
        MEDMETA_ON_DEVICE(device, prototypes_forward, DType(dt), ptr<const void>(emb), ptr<const int64_t>(labels),
                          ptr<const void>(w), ptr<void>(out), ptr<void>(wsum), B, S, N, D);
        return std::pair<int64_t, int64_t>{-1, first_empty_class(device, check, dt, wsum, B * N)};
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("emb"), py::arg("labels"), py::arg("w"),
      py::arg("out"), py::arg("wsum"), py::arg("B"), py::arg("S"), py::arg("N"), py::arg("D"), py::arg("check") = false,
      nogil,
      "Returns (bad label, empty class), each -1 or, on CPU with check, the flat index of the first label "
      "outside [0, N) (nothing is computed then) and of the first (episode, class) with no positive weight.");
  m.def(
      "prototypes_backward",
      [](int dev, uintptr_t stream, int dt, uintptr_t g, uintptr_t emb, uintptr_t labels, uintptr_t w,
         uintptr_t out, uintptr_t wsum, uintptr_t gemb, uintptr_t gw, int64_t B, int64_t S, int64_t N, int64_t D) {
        check_prototypes_sizes(dev >= 0, B, S, N, D);
        MEDMETA_ON_DEVICE(device_of(dev, stream), prototypes_backward, DType(dt), ptr<const void>(g),
                          ptr<const void>(emb), ptr<const int64_t>(labels), ptr<const void>(w),
                          ptr<const void>(out), ptr<const void>(wsum), ptr<void>(gemb), ptr<void>(gw), B, S, N, D);
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("g"), py::arg("emb"), py::arg("labels"),
      py::arg("w"), py::arg("out"), py::arg("wsum"), py::arg("gemb"), py::arg("gw"), py::arg("B"),
      py::arg("S"), py::arg("N"), py::arg("D"), nogil);

  m.def(
      "masked_prototypes_forward",
      [](int dev, uintptr_t stream, int dt, uintptr_t feat, uintptr_t masks, uintptr_t out, uintptr_t mass,
         int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW, bool check) {
        check_masked_prototypes_sizes(dev >= 0, B, S, C, D, HW);
        const Device device = device_of(dev, stream);
        MEDMETA_ON_DEVICE(device, masked_prototypes_forward, DType(dt), ptr<const void>(feat),
                          ptr<const void>(masks), ptr<void>(out), ptr<void>(mass), B, S, C, D, HW);
        return first_empty_class(device, check, dt, mass, B * C);
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("feat"), py::arg("masks"), py::arg("out"),
      py::arg("mass"), py::arg("B"), py::arg("S"), py::arg("C"), py::arg("D"), py::arg("HW"), py::arg("check") = false,
      nogil, "Returns -1, or (CPU, check) the flat index of the first (episode, class) with no positive mass.");
  m.def(
      "masked_prototypes_backward",
      [](int dev, uintptr_t stream, int dt, uintptr_t g, uintptr_t feat, uintptr_t masks, uintptr_t out,
         uintptr_t mass, uintptr_t gfeat, uintptr_t gmasks, int64_t B, int64_t S, int64_t C, int64_t D,
         int64_t HW) {
        check_masked_prototypes_sizes(dev >= 0, B, S, C, D, HW);
        MEDMETA_ON_DEVICE(device_of(dev, stream), masked_prototypes_backward, DType(dt), ptr<const void>(g),
                          ptr<const void>(feat), ptr<const void>(masks), ptr<const void>(out),
                          ptr<const void>(mass), ptr<void>(gfeat), ptr<void>(gmasks), B, S, C, D, HW);
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("g"), py::arg("feat"), py::arg("masks"),
      py::arg("out"), py::arg("mass"), py::arg("gfeat"), py::arg("gmasks"), py::arg("B"), py::arg("S"),
      py::arg("C"), py::arg("D"), py::arg("HW"), nogil);

  m.def(
      "inner_update_forward",
      [](int dev, uintptr_t stream, int dt, const std::vector<uintptr_t>& params,
         const std::vector<uintptr_t>& grads, const std::vector<uintptr_t>& lrs, const std::vector<uintptr_t>& outs,
         const std::vector<int64_t>& numels, const std::vector<int64_t>& lr_numels, double lr_scalar, bool check) {
        const size_t n = params.size();
        MEDMETA_CHECK(grads.size() == n && lrs.size() == n && outs.size() == n && numels.size() == n &&
                          lr_numels.size() == n,
                      "inner_update_forward: all lists must have one entry per tensor");
        check_update_sizes("inner_update_forward", lrs, numels, lr_numels);
        const Device device = device_of(dev, stream);
        const int64_t bad = first_nonfinite_rate(device, check, dt, lrs, lr_numels);
        if (bad >= 0) return bad;  // nothing computed
        std::vector<UpdateTensor> ts(n);
        for (size_t k = 0; k < n; ++k)
          ts[k] = {ptr<const void>(params[k]), ptr<const void>(grads[k]), ptr<const void>(lrs[k]),
                   ptr<void>(outs[k]),        numels[k],                 lr_numels[k]};
        MEDMETA_ON_DEVICE(device, inner_update_forward, DType(dt), ts.data(), static_cast<int64_t>(n), lr_scalar);
        return int64_t{-1};
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("params"), py::arg("grads"), py::arg("lrs"),
      py::arg("outs"), py::arg("numels"), py::arg("lr_numels"), py::arg("lr_scalar"), py::arg("check") = false,
      nogil,
      "Returns -1, or (CPU, check) the index of the first rate tensor holding a NaN or infinity: nothing is "
      "computed then.");
  m.def(
      "inner_update_backward",
      [](int dev, uintptr_t stream, int dt, const std::vector<uintptr_t>& grad_outs,
         const std::vector<uintptr_t>& grads, const std::vector<uintptr_t>& lrs,
         const std::vector<uintptr_t>& grad_grads, const std::vector<uintptr_t>& grad_lrs,
         const std::vector<int64_t>& numels, const std::vector<int64_t>& lr_numels, double lr_scalar,
         const std::vector<uintptr_t>& partials) {
        const size_t n = grad_outs.size();
        MEDMETA_CHECK(grads.size() == n && lrs.size() == n && grad_grads.size() == n && grad_lrs.size() == n &&
                          numels.size() == n && lr_numels.size() == n && (partials.empty() || partials.size() == n),
                      "inner_update_backward: all lists must have one entry per tensor");
        check_update_sizes("inner_update_backward", lrs, numels, lr_numels);
        std::vector<UpdateGradTensor> ts(n);
        for (size_t k = 0; k < n; ++k)
          ts[k] = {ptr<const void>(grad_outs[k]),
                   ptr<const void>(grads[k]),
                   ptr<const void>(lrs[k]),
                   ptr<void>(grad_grads[k]),
                   ptr<void>(grad_lrs[k]),
                   numels[k],
                   lr_numels[k],
                   partials.empty() ? nullptr : ptr<void>(partials[k])};
        MEDMETA_ON_DEVICE(device_of(dev, stream), inner_update_backward, DType(dt), ts.data(),
                          static_cast<int64_t>(n), lr_scalar);
      },
      py::arg("dev"), py::arg("stream"), py::arg("dt"), py::arg("grad_outs"), py::arg("grads"), py::arg("lrs"),
      py::arg("grad_grads"), py::arg("grad_lrs"), py::arg("numels"), py::arg("lr_numels"),
      py::arg("lr_scalar"), py::arg("partials"), nogil);
}
