// Batched pairwise distances between episode rows: x [B,Q,D], y [B,N,D] -> out [B,Q,N].
// All buffers are contiguous and of dtype `dt`. `workspace`: B*(Q+N) elements of the
// accumulation type (float64 for float64, float32 otherwise) for the squared row norms, read
// only by the CUDA backward with the cosine metric; the other entries ignore it (may be null).
#pragma once

#include <cstdint>

#include "common/types.h"

namespace medmeta {

inline int64_t distance_workspace_elems(int64_t B, int64_t Q, int64_t N) { return B * (Q + N); }

void distance_forward_cpu(DType dt, const void* x, const void* y, void* out, void* workspace, int64_t B,
                          int64_t Q, int64_t N, int64_t D, Metric metric);
// grad_out and out [B,Q,N]; grad_x [B,Q,D] and grad_y [B,N,D] are written when not null.
void distance_backward_cpu(DType dt, const void* grad_out, const void* x, const void* y, const void* out,
                           void* grad_x, void* grad_y, void* workspace, int64_t B, int64_t Q, int64_t N,
                           int64_t D, Metric metric);

#if defined(MEDMETA_WITH_CUDA)
void distance_forward_cuda(Device dev, DType dt, const void* x, const void* y, void* out, void* workspace,
                           int64_t B, int64_t Q, int64_t N, int64_t D, Metric metric);
void distance_backward_cuda(Device dev, DType dt, const void* grad_out, const void* x, const void* y,
                            const void* out, void* grad_x, void* grad_y, void* workspace, int64_t B, int64_t Q,
                            int64_t N, int64_t D, Metric metric);
#endif

}  // namespace medmeta
