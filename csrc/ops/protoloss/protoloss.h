// Fused prototypical loss: distances, log-softmax over classes and the negative
// log-likelihood of the target in one pass, per episode (Snell et al. 2017).
//   queries [B,Q,D], protos [B,N,D] (dtype dt), targets [B,Q] int64 in [0,N)
//   -> loss [B] and accuracy [B] (dtype dt): the mean NLL and the top-1 accuracy over Q.
// Saved for backward, in the accumulation type (float64 for float64, else float32):
//   dist [B,Q,N] (the distances) and lse [B,Q] (log-sum-exp of the logits -dist/T).
// workspace, in the accumulation type: the forward needs 2*B*Q elements (per-query NLL and hits
// on the CPU, per-tile sums on CUDA); the backward needs B*(Q+N) on CUDA with the cosine metric
// (row norms) and none otherwise. protoloss_workspace_elems is enough for either.
#pragma once

#include <cstdint>

#include "common/types.h"

namespace medmeta {

inline int64_t protoloss_workspace_elems(int64_t B, int64_t Q, int64_t N) {
  return 2 * B * Q > B * (Q + N) ? 2 * B * Q : B * (Q + N);
}

void protoloss_forward_cpu(DType dt, const void* queries, const void* protos, const int64_t* targets, void* loss,
                           void* accuracy, void* dist, void* lse, void* workspace, int64_t B, int64_t Q, int64_t N,
                           int64_t D, Metric metric, double inv_temperature);
// grad_loss [B] (dtype dt); grad_queries [B,Q,D] and grad_protos [B,N,D] are written when not null.
void protoloss_backward_cpu(DType dt, const void* grad_loss, const void* queries, const void* protos,
                            const int64_t* targets, const void* dist, const void* lse, void* grad_queries,
                            void* grad_protos, void* workspace, int64_t B, int64_t Q, int64_t N, int64_t D,
                            Metric metric, double inv_temperature);

#if defined(MEDMETA_WITH_CUDA)
void protoloss_forward_cuda(Device dev, DType dt, const void* queries, const void* protos, const int64_t* targets,
                            void* loss, void* accuracy, void* dist, void* lse, void* workspace, int64_t B,
                            int64_t Q, int64_t N, int64_t D, Metric metric, double inv_temperature);
void protoloss_backward_cuda(Device dev, DType dt, const void* grad_loss, const void* queries, const void* protos,
                             const int64_t* targets, const void* dist, const void* lse, void* grad_queries,
                             void* grad_protos, void* workspace, int64_t B, int64_t Q, int64_t N, int64_t D,
                             Metric metric, double inv_temperature);
#endif

}  // namespace medmeta
