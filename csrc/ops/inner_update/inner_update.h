// Fused multi-tensor inner-loop update of the MAML family: for every tensor k of a
// parameter list (each [T,...] for T tasks), out_k = param_k - lr_k * grad_k, in one
// pass / one launch over all tensors. out may alias param (the in-place first-order form).
// lr_k is the scalar `lr_scalar` when lr is null, else lr[i % lr_numel]: lr_numel == 1
// (a learned per-layer rate, MAML++), numel / T (per-element rates shared by the tasks,
// Meta-SGD) or numel (one rate per element and task).
#pragma once

#include <cstdint>

#include "common/types.h"

namespace medmeta {

struct UpdateTensor {
  const void* param;
  const void* grad;
  const void* lr;  // null: use lr_scalar
  void* out;
  int64_t numel;
  int64_t lr_numel;
};

// grad_grad = -lr * grad_out (skipped when null);
// grad_lr[j] += -sum_{i % lr_numel == j} grad[i] * grad_out[i], in the accumulation type
// (float64 for float64, else float32), zero-initialised by the caller (skipped when null).
// Every sum is taken in a fixed order, so results are bitwise reproducible run to run.
struct UpdateGradTensor {
  const void* grad_out;
  const void* grad;
  const void* lr;  // null: use lr_scalar
  void* grad_grad;
  void* grad_lr;
  int64_t numel;
  int64_t lr_numel;
  // CUDA, a single learned rate (lr_numel == 1) with grad_lr: caller-sized scratch for
  // inner_update_partials(numel, element bytes) accumulation-type values, the per-block sums
  // that a second kernel adds in block order. Null: one block per tensor reduces it (also
  // deterministic, slower for large tensors). Ignored on the CPU.
  void* partials = nullptr;
};

// Bytes of a tensor per CUDA block of a single-rate update (one partial sum each).
constexpr int64_t kInnerUpdateChunkBytes = 16384;

inline int64_t inner_update_partials(int64_t numel, int64_t element_bytes) {
  return (numel * element_bytes + kInnerUpdateChunkBytes - 1) / kInnerUpdateChunkBytes;
}

void inner_update_forward_cpu(DType dt, const UpdateTensor* tensors, int64_t count, double lr_scalar);
void inner_update_backward_cpu(DType dt, const UpdateGradTensor* tensors, int64_t count, double lr_scalar);

#if defined(MEDMETA_WITH_CUDA)
void inner_update_forward_cuda(Device dev, DType dt, const UpdateTensor* tensors, int64_t count, double lr_scalar);
void inner_update_backward_cuda(Device dev, DType dt, const UpdateGradTensor* tensors, int64_t count,
                                double lr_scalar);
#endif

}  // namespace medmeta
