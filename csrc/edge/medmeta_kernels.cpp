// The C interface of medmeta_kernels.h over the training core's CPU kernels: argument checks,
// and C++ exceptions turned into an error code and a per-thread message (none cross the C ABI).
#include "edge/medmeta_kernels.h"

#include <exception>
#include <string>

#include "common/sizes.h"
#include "common/validate.h"
#include "ops/distance/distance.h"
#include "ops/prototypes/prototypes.h"

namespace {

thread_local std::string last_error;

template <typename F> int guarded(F&& body) {
  try {
    body();
    last_error.clear();
    return MEDMETA_OK;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "medmeta: unknown error";
  }
  return MEDMETA_ERROR;
}

void check_sizes(std::initializer_list<int64_t> sizes, const char* fn) {
  for (int64_t s : sizes) MEDMETA_CHECK(s >= 0, std::string(fn) + ": sizes must be >= 0");
}

// A buffer of the sizes `dims`: its element count must not overflow (an error, not undefined
// behaviour), and a non-empty buffer must not be NULL.
void check_buffer(const char* fn, const char* what, const void* p, std::initializer_list<medmeta::SizeArg> dims) {
  const int64_t n = medmeta::checked_numel(fn, what, dims);
  MEDMETA_CHECK(n == 0 || p != nullptr, std::string(fn) + ": " + what + " is NULL");
}

}  // namespace

extern "C" {

int medmeta_kernels_abi_version(void) { return MEDMETA_KERNELS_ABI_VERSION; }

const char* medmeta_last_error(void) { return last_error.c_str(); }

int medmeta_class_prototypes_f32(const float* embeddings, const int64_t* labels, int64_t n_examples,
                                 int64_t n_classes, int64_t dim, float* prototypes, float* counts) {
  return guarded([&] {
    const char* fn = "medmeta_class_prototypes_f32";
    check_sizes({n_examples, n_classes, dim}, fn);
    check_buffer(fn, "embeddings", embeddings, {{"n_examples", n_examples}, {"dim", dim}});
    check_buffer(fn, "labels", labels, {{"n_examples", n_examples}});
    check_buffer(fn, "prototypes", prototypes, {{"n_classes", n_classes}, {"dim", dim}});
    check_buffer(fn, "counts", counts, {{"n_classes", n_classes}});
    int64_t bad = medmeta::first_out_of_range(labels, n_examples, n_classes);
    MEDMETA_CHECK(bad < 0, "medmeta_class_prototypes_f32: label " + std::to_string(bad < 0 ? 0 : labels[bad]) +
                               " at index " + std::to_string(bad) + " is outside [0, " +
                               std::to_string(n_classes) + ")");
    medmeta::prototypes_forward_cpu(medmeta::DType::Float32, embeddings, labels, nullptr, prototypes, counts, 1,
                                    n_examples, n_classes, dim);
  });
}

int medmeta_pairwise_distances_f32(const float* x, const float* y, int64_t batch, int64_t n_x,
                                   int64_t n_y, int64_t dim, int metric, float* out, float* workspace) {
  return guarded([&] {
    const char* fn = "medmeta_pairwise_distances_f32";
    check_sizes({batch, n_x, n_y, dim}, fn);
    check_buffer(fn, "x", x, {{"batch", batch}, {"n_x", n_x}, {"dim", dim}});
    check_buffer(fn, "y", y, {{"batch", batch}, {"n_y", n_y}, {"dim", dim}});
    check_buffer(fn, "out", out, {{"batch", batch}, {"n_x", n_x}, {"n_y", n_y}});
    MEDMETA_CHECK(metric >= MEDMETA_SQEUCLIDEAN && metric <= MEDMETA_DOT,
                  "medmeta_pairwise_distances_f32: metric must be 0..3, got " + std::to_string(metric));
    if (batch * n_x * n_y == 0) return;
    medmeta::distance_forward_cpu(medmeta::DType::Float32, x, y, out, workspace, batch, n_x, n_y, dim,
                                  medmeta::Metric(metric));
  });
}

}  // extern "C"
