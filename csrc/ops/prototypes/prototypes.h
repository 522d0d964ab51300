// Class prototypes: the (weighted) mean embedding of each class's support examples.
//   emb [B,S,D] (dtype dt), labels [B,S] int64 in [0,N) (labels outside are ignored),
//   weights [B,S] (dtype dt) or null for plain means
//   -> out [B,N,D] (dtype dt) and wsum [B,N] (accumulation type: float64 for float64,
//      else float32), the total weight (count) of each class. A class with wsum == 0
//      gets a NaN prototype (the mean of no examples, as torch's mean of an empty set) and
//      passes no gradient to grad_emb / grad_weights; the Python layer reports it as an
//      error unless value checks are off.
#pragma once

#include <cstdint>

#include "common/types.h"

namespace medmeta {

void prototypes_forward_cpu(DType dt, const void* emb, const int64_t* labels, const void* weights, void* out,
                            void* wsum, int64_t B, int64_t S, int64_t N, int64_t D);
// grad_out [B,N,D]; grad_emb [B,S,D] and grad_weights [B,S] are written when not null.
void prototypes_backward_cpu(DType dt, const void* grad_out, const void* emb, const int64_t* labels,
                             const void* weights, const void* out, const void* wsum, void* grad_emb,
                             void* grad_weights, int64_t B, int64_t S, int64_t N, int64_t D);

#if defined(MEDMETA_WITH_CUDA)
void prototypes_forward_cuda(Device dev, DType dt, const void* emb, const int64_t* labels, const void* weights,
                             void* out, void* wsum, int64_t B, int64_t S, int64_t N, int64_t D);
void prototypes_backward_cuda(Device dev, DType dt, const void* grad_out, const void* emb, const int64_t* labels,
                              const void* weights, const void* out, const void* wsum, void* grad_emb,
                              void* grad_weights, int64_t B, int64_t S, int64_t N, int64_t D);
#endif

}  // namespace medmeta
