// CPU kernels of prototypes: one pass over the support embeddings per (episode,
// D-tile) task, accumulating each example into its class row (no one-hot matrix).
#include "ops/prototypes/prototypes.h"

#include <limits>
#include <vector>

#include "common/cpu.h"
#include "common/math.h"

namespace medmeta {

namespace {

constexpr int64_t kTile = 512;  // D-columns per task: keeps a task's class rows in L1/L2

template <typename T>
MEDMETA_CPU_CLONES void forward_tasks(const T* emb, const int64_t* labels, const T* weights, T* out, T* wsum,
                                      int64_t S, int64_t N, int64_t D, int64_t tiles, int64_t t0, int64_t t1) {
  std::vector<T> total(N);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / tiles, d0 = (t % tiles) * kTile, w = std::min(kTile, D - d0);
    T* o = out + b * N * D + d0;
    for (int64_t n = 0; n < N; ++n) std::fill(o + n * D, o + n * D + w, T(0));
    std::fill(total.begin(), total.end(), T(0));
    for (int64_t s = 0; s < S; ++s) {
      const int64_t l = labels[b * S + s];
      if (l < 0 || l >= N) continue;
      const T ws = weights != nullptr ? weights[b * S + s] : T(1);
      total[l] += ws;
      axpy_row(ws, emb + (b * S + s) * D + d0, o + l * D, w);
    }
    for (int64_t n = 0; n < N; ++n) {  // zero total weight: NaN, the mean of no examples
      const T inv = total[n] != T(0) ? T(1) / total[n] : std::numeric_limits<T>::quiet_NaN();
      MEDMETA_SIMD
      for (int64_t i = 0; i < w; ++i) o[n * D + i] *= inv;
    }
    if (d0 == 0)
      for (int64_t n = 0; n < N; ++n) wsum[b * N + n] = total[n];
  }
}

template <typename T>
MEDMETA_CPU_CLONES void backward_rows(const T* g, const T* emb, const int64_t* labels, const T* weights,
                                      const T* out, const T* wsum, T* gemb, T* gw, int64_t S, int64_t N, int64_t D,
                                      int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / S, l = labels[r];
    const bool valid = l >= 0 && l < N && wsum[b * N + l] != T(0);
    const T inv = valid ? T(1) / wsum[b * N + l] : T(0);
    const T* gr = g + (b * N + (valid ? l : 0)) * D;
    if (gemb != nullptr) {
      if (valid)
        scale_row((weights != nullptr ? weights[r] : T(1)) * inv, gr, gemb + r * D, D);
      else
        std::fill(gemb + r * D, gemb + (r + 1) * D, T(0));
    }
    if (gw != nullptr) {
      T s = 0;
      if (valid) {
        const T* e = emb + r * D;
        const T* o = out + (b * N + l) * D;
        MEDMETA_SIMD_REDUCE(s)
        for (int64_t i = 0; i < D; ++i) s += gr[i] * (e[i] - o[i]);
      }
      gw[r] = s * inv;
    }
  }
}

template <typename T>
void forward(const void* emb, const int64_t* labels, const void* weights, void* out, void* wsum, int64_t B,
             int64_t S, int64_t N, int64_t D) {
  const int64_t tiles = std::max<int64_t>(1, (D + kTile - 1) / kTile);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(S * std::min(D, kTile), 1));
  parallel_for(0, B * tiles, grain, [&](int64_t t0, int64_t t1) {
    forward_tasks(static_cast<const T*>(emb), labels, static_cast<const T*>(weights), static_cast<T*>(out),
                  static_cast<T*>(wsum), S, N, D, tiles, t0, t1);
  });
}

template <typename T>
void backward(const void* g, const void* emb, const int64_t* labels, const void* weights, const void* out,
              const void* wsum, void* gemb, void* gw, int64_t B, int64_t S, int64_t N, int64_t D) {
  parallel_for(0, B * S, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    backward_rows(static_cast<const T*>(g), static_cast<const T*>(emb), labels, static_cast<const T*>(weights),
                  static_cast<const T*>(out), static_cast<const T*>(wsum), static_cast<T*>(gemb),
                  static_cast<T*>(gw), S, N, D, r0, r1);
  });
}

[[noreturn]] void bad_dtype(DType dt) {
  fail(std::string("prototypes on CPU supports float32 and float64, got ") + dtype_name(dt));
}

}  // namespace

void prototypes_forward_cpu(DType dt, const void* emb, const int64_t* labels, const void* weights, void* out,
                            void* wsum, int64_t B, int64_t S, int64_t N, int64_t D) {
  if (B * N == 0) return;
  switch (dt) {
    case DType::Float32: return forward<float>(emb, labels, weights, out, wsum, B, S, N, D);
    case DType::Float64: return forward<double>(emb, labels, weights, out, wsum, B, S, N, D);
    default: bad_dtype(dt);
  }
}

void prototypes_backward_cpu(DType dt, const void* grad_out, const void* emb, const int64_t* labels,
                             const void* weights, const void* out, const void* wsum, void* grad_emb,
                             void* grad_weights, int64_t B, int64_t S, int64_t N, int64_t D) {
  if (B * S == 0) return;
  switch (dt) {
    case DType::Float32:
      return backward<float>(grad_out, emb, labels, weights, out, wsum, grad_emb, grad_weights, B, S, N, D);
    case DType::Float64:
      return backward<double>(grad_out, emb, labels, weights, out, wsum, grad_emb, grad_weights, B, S, N, D);
    default: bad_dtype(dt);
  }
}

}  // namespace medmeta
