/* Checks a built edge kernel library from C, on any target (run under QEMU for aarch64):
 * loads it with dlopen, computes class prototypes and distances of a small example and
 * compares them with values worked out here; also checks that a bad label is refused with a
 * message. Usage: kernels_check path/to/libmedmeta_kernels.so  (exit status 0 = pass). */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>

typedef int (*abi_fn)(void);
typedef const char* (*err_fn)(void);
typedef int (*proto_fn)(const float*, const int64_t*, int64_t, int64_t, int64_t, float*, float*);
typedef int (*dist_fn)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int, float*, float*);

static int near(float a, float b) { return fabsf(a - b) <= 1e-5f * (1.0f + fabsf(b)); }

int main(int argc, char** argv) {
  if (argc != 2) return fprintf(stderr, "usage: %s LIBRARY\n", argv[0]), 2;
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) return fprintf(stderr, "dlopen: %s\n", dlerror()), 1;
  abi_fn abi = (abi_fn)dlsym(lib, "medmeta_kernels_abi_version");
  err_fn last_error = (err_fn)dlsym(lib, "medmeta_last_error");
  proto_fn protos = (proto_fn)dlsym(lib, "medmeta_class_prototypes_f32");
  dist_fn dists = (dist_fn)dlsym(lib, "medmeta_pairwise_distances_f32");
  if (!abi || !last_error || !protos || !dists) return fprintf(stderr, "missing symbols\n"), 1;
  if (abi() != 1) return fprintf(stderr, "ABI %d, expected 1\n", abi()), 1;

  /* 4 examples of 3 dims in 2 classes -> prototypes (1,2,3) and (5,5,5) */
  const float emb[12] = {0, 2, 3, 2, 2, 3, 4, 4, 4, 6, 6, 6};
  const int64_t labels[4] = {0, 0, 1, 1};
  float proto[6], counts[2];
  if (protos(emb, labels, 4, 2, 3, proto, counts) != 0) return fprintf(stderr, "%s\n", last_error()), 1;
  const float want[6] = {1, 2, 3, 5, 5, 5};
  for (int i = 0; i < 6; ++i)
    if (!near(proto[i], want[i])) return fprintf(stderr, "prototype[%d] = %g, expected %g\n", i, proto[i], want[i]), 1;
  if (!near(counts[0], 2) || !near(counts[1], 2)) return fprintf(stderr, "counts wrong\n"), 1;

  /* squared euclidean distances from the 4 examples to the 2 prototypes */
  float d[8], ws[6];
  if (dists(emb, proto, 1, 4, 2, 3, 0, d, ws) != 0) return fprintf(stderr, "%s\n", last_error()), 1;
  for (int q = 0; q < 4; ++q)
    for (int n = 0; n < 2; ++n) {
      float s = 0;
      for (int k = 0; k < 3; ++k) s += (emb[3 * q + k] - want[3 * n + k]) * (emb[3 * q + k] - want[3 * n + k]);
      if (!near(d[2 * q + n], s)) return fprintf(stderr, "distance[%d,%d] = %g, expected %g\n", q, n, d[2 * q + n], s), 1;
    }

  const int64_t bad[4] = {0, 5, 1, 1};
  if (protos(emb, bad, 4, 2, 3, proto, counts) == 0) return fprintf(stderr, "bad label accepted\n"), 1;
  printf("ok: %s (%s)\n", argv[1], last_error());
  return 0;
}
