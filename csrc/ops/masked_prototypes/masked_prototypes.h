// Masked average pooling for few-shot segmentation (Wang et al. 2019, PANet):
//   feat [B,S,D,HW], masks [B,S,C,HW] (dtype dt, soft or binary)
//   -> out [B,C,D] (dtype dt): sum_{s,p} feat[b,s,:,p] * masks[b,s,c,p] / mass[b,c],
//      mass [B,C] (accumulation type: float64 for float64, else float32) = sum_{s,p} masks[b,s,c,p].
// A class with mass == 0 gets a NaN prototype (the mean of no pixels) and passes no gradient
// to grad_feat / grad_masks; the Python layer reports it as an error unless value checks are off.
#pragma once

#include <cstdint>

#include "common/types.h"

namespace medmeta {

void masked_prototypes_forward_cpu(DType dt, const void* feat, const void* masks, void* out, void* mass, int64_t B,
                                   int64_t S, int64_t C, int64_t D, int64_t HW);
// grad_out [B,C,D]; grad_feat [B,S,D,HW] and grad_masks [B,S,C,HW] are written when not null.
void masked_prototypes_backward_cpu(DType dt, const void* grad_out, const void* feat, const void* masks,
                                    const void* out, const void* mass, void* grad_feat, void* grad_masks,
                                    int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW);

#if defined(MEDMETA_WITH_CUDA)
void masked_prototypes_forward_cuda(Device dev, DType dt, const void* feat, const void* masks, void* out,
                                    void* mass, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW);
void masked_prototypes_backward_cuda(Device dev, DType dt, const void* grad_out, const void* feat,
                                     const void* masks, const void* out, const void* mass, void* grad_feat,
                                     void* grad_masks, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW);
#endif

}  // namespace medmeta
