/* medmeta's edge kernels: a plain C interface to the native CPU kernels of the training core
 * (csrc/ops/prototypes, csrc/ops/distance), for the torch-free edge runtime (loaded with
 * ctypes by medmeta.edge.kernels) and for device integrators calling them from C or C++.
 *
 * Buffers are contiguous float32 (labels int64), owned by the caller. Every function returns
 * MEDMETA_OK (0) or MEDMETA_ERROR; medmeta_last_error() then says why (per thread). No
 * function allocates memory the caller must free, and none keeps a pointer after it returns.
 */
#ifndef MEDMETA_KERNELS_H
#define MEDMETA_KERNELS_H

#include <stdint.h>

#if defined(_WIN32) && defined(MEDMETA_KERNELS_EXPORT)
#define MEDMETA_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MEDMETA_API __attribute__((visibility("default")))
#else
#define MEDMETA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MEDMETA_KERNELS_ABI_VERSION 1
#define MEDMETA_OK 0
#define MEDMETA_ERROR 1

/* Metric codes, as in medmeta.ops.pairwise_distance ("dot" is the negative inner product). */
enum medmeta_metric { MEDMETA_SQEUCLIDEAN = 0, MEDMETA_EUCLIDEAN = 1, MEDMETA_COSINE = 2, MEDMETA_DOT = 3 };

/* The ABI version this library implements (MEDMETA_KERNELS_ABI_VERSION when it was built). */
MEDMETA_API int medmeta_kernels_abi_version(void);

/* The message of this thread's last failed call ("" when none). */
MEDMETA_API const char* medmeta_last_error(void);

/* Class means (Snell et al. 2017): embeddings [n_examples, dim], labels [n_examples] in
 * [0, n_classes) -> prototypes [n_classes, dim] and counts [n_classes] (examples per class;
 * a class with none gets a NaN prototype). Labels outside [0, n_classes) are an error. */
MEDMETA_API int medmeta_class_prototypes_f32(const float* embeddings, const int64_t* labels, int64_t n_examples,
                                 int64_t n_classes, int64_t dim, float* prototypes, float* counts);

/* Distances between rows: x [batch, n_x, dim] and y [batch, n_y, dim] -> out [batch, n_x, n_y].
 * workspace: unused (the row norms are computed per tile); may be NULL. */
MEDMETA_API int medmeta_pairwise_distances_f32(const float* x, const float* y, int64_t batch, int64_t n_x,
                                   int64_t n_y, int64_t dim, int metric, float* out, float* workspace);

#ifdef __cplusplus
}
#endif

#endif /* MEDMETA_KERNELS_H */
