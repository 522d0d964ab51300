// CPU kernels of masked average pooling: each (episode, feature channel) task reads
// its feature planes once and dots them with every class mask of the episode.
#include "ops/masked_prototypes/masked_prototypes.h"

#include <limits>
#include <vector>

#include "common/cpu.h"
#include "common/math.h"

namespace medmeta {

namespace {

constexpr int64_t kPixelChunk = 2048;  // pixels per backward task for grad_masks

template <typename T>
MEDMETA_CPU_CLONES void mass_rows(const T* masks, T* mass, int64_t S, int64_t C, int64_t HW, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / C, c = r % C;
    T s = 0;
    for (int64_t i = 0; i < S; ++i) {
      const T* m = masks + ((b * S + i) * C + c) * HW;
      MEDMETA_SIMD_REDUCE(s)
      for (int64_t p = 0; p < HW; ++p) s += m[p];
    }
    mass[r] = s;
  }
}

// Tasks t = (b, d): out[b, c, d] = sum_{s,p} feat[b,s,d,p] * masks[b,s,c,p] / mass[b,c].
// Each feature row is read once for up to four classes (the masks stay in L1).
template <typename T>
MEDMETA_CPU_CLONES void forward_tasks(const T* feat, const T* masks, const T* mass, T* out, int64_t S, int64_t C,
                                      int64_t D, int64_t HW, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / D, d = t % D;
    for (int64_t c = 0; c < C;) {
      const int64_t width = C - c >= 4 ? 4 : (C - c >= 2 ? 2 : 1);
      T sums[4] = {0, 0, 0, 0};
      for (int64_t i = 0; i < S; ++i) {
        const T* f = feat + ((b * S + i) * D + d) * HW;
        const T* m = masks + ((b * S + i) * C + c) * HW;
        T part[4];
        if (width == 4)
          dot4_row(m, m + HW, m + 2 * HW, m + 3 * HW, f, HW, part);
        else if (width == 2)
          dot2_row(m, m + HW, f, HW, part);
        else
          part[0] = dot_row(f, m, HW);
        for (int64_t k = 0; k < width; ++k) sums[k] += part[k];
      }
      for (int64_t k = 0; k < width; ++k) {
        const T total = mass[b * C + c + k];
        out[(b * C + c + k) * D + d] = total != T(0) ? sums[k] / total : std::numeric_limits<T>::quiet_NaN();
      }
      c += width;
    }
  }
}

// Rows r = (b, s, d): grad_feat[b,s,d,:] = sum_c gs[b,c,d] * masks[b,s,c,:].
template <typename T>
MEDMETA_CPU_CLONES void grad_feat_rows(const T* gs, const T* masks, T* gfeat, int64_t S, int64_t C, int64_t D,
                                       int64_t HW, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / (S * D), s = (r / D) % S, d = r % D;
    T* o = gfeat + r * HW;
    std::fill(o, o + HW, T(0));
    for (int64_t c = 0; c < C; ++c) axpy_row(gs[(b * C + c) * D + d], masks + ((b * S + s) * C + c) * HW, o, HW);
  }
}

// Tasks t = ((b, s, c), pixel chunk): grad_masks[b,s,c,p] = sum_d gs[b,c,d] * feat[b,s,d,p] - k[b,c].
template <typename T>
MEDMETA_CPU_CLONES void grad_mask_tasks(const T* gs, const T* k, const T* feat, T* gmask, int64_t S, int64_t C,
                                        int64_t D, int64_t HW, int64_t chunks, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = t / chunks, p0 = (t % chunks) * kPixelChunk, w = std::min(kPixelChunk, HW - p0);
    const int64_t b = r / (S * C), s = (r / C) % S, c = r % C;
    T* o = gmask + r * HW + p0;
    const T* g = gs + (b * C + c) * D;
    std::fill(o, o + w, -k[b * C + c]);
    const T* f = feat + (b * S + s) * D * HW + p0;
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) {
      const T g0 = g[d], g1 = g[d + 1], g2 = g[d + 2], g3 = g[d + 3];
      const T* f0 = f + d * HW;
      MEDMETA_SIMD
      for (int64_t p = 0; p < w; ++p) o[p] += g0 * f0[p] + g1 * f0[HW + p] + g2 * f0[2 * HW + p] + g3 * f0[3 * HW + p];
    }
    for (; d < D; ++d) axpy_row(g[d], f + d * HW, o, w);
  }
}

template <typename T>
void forward(const void* feat, const void* masks, void* out, void* mass, int64_t B, int64_t S, int64_t C, int64_t D,
             int64_t HW) {
  const T* f = static_cast<const T*>(feat);
  const T* m = static_cast<const T*>(masks);
  T* ms = static_cast<T*>(mass);
  parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(S * HW, 1)),
               [&](int64_t r0, int64_t r1) { mass_rows(m, ms, S, C, HW, r0, r1); });
  parallel_for(0, B * D, std::max<int64_t>(1, 16384 / std::max<int64_t>(S * C * HW, 1)), [&](int64_t t0, int64_t t1) {
    forward_tasks(f, m, ms, static_cast<T*>(out), S, C, D, HW, t0, t1);
  });
}

template <typename T>
void backward(const void* grad_out, const void* feat, const void* masks, const void* out, const void* mass,
              void* grad_feat, void* grad_masks, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  const T* g = static_cast<const T*>(grad_out);
  const T* o = static_cast<const T*>(out);
  const T* ms = static_cast<const T*>(mass);
  // gs = grad_out / mass, k[b,c] = <gs[b,c], out[b,c]>; both zero for an empty class (its
  // NaN prototype depends on no input, and must not reach k through 0 * NaN).
  std::vector<T> gs(B * C * D), k(B * C);
  for (int64_t r = 0; r < B * C; ++r) {
    const bool empty = ms[r] == T(0);
    const T inv = empty ? T(0) : T(1) / ms[r];
    T kk = 0;
    for (int64_t d = 0; d < D; ++d) {
      gs[r * D + d] = g[r * D + d] * inv;
      if (!empty) kk += gs[r * D + d] * o[r * D + d];
    }
    k[r] = kk;
  }
  if (grad_feat != nullptr)
    parallel_for(0, B * S * D, std::max<int64_t>(1, 16384 / std::max<int64_t>(C * HW, 1)), [&](int64_t r0, int64_t r1) {
      grad_feat_rows(gs.data(), static_cast<const T*>(masks), static_cast<T*>(grad_feat), S, C, D, HW, r0, r1);
    });
  if (grad_masks != nullptr) {
    const int64_t chunks = std::max<int64_t>(1, (HW + kPixelChunk - 1) / kPixelChunk);
    parallel_for(0, B * S * C * chunks, std::max<int64_t>(1, 16384 / std::max<int64_t>(D * kPixelChunk, 1)),
                 [&](int64_t t0, int64_t t1) {
                   grad_mask_tasks(gs.data(), k.data(), static_cast<const T*>(feat), static_cast<T*>(grad_masks), S,
                                   C, D, HW, chunks, t0, t1);
                 });
  }
}

[[noreturn]] void bad_dtype(DType dt) {
  fail(std::string("masked_prototypes on CPU supports float32 and float64, got ") + dtype_name(dt));
}

}  // namespace

void masked_prototypes_forward_cpu(DType dt, const void* feat, const void* masks, void* out, void* mass, int64_t B,
                                   int64_t S, int64_t C, int64_t D, int64_t HW) {
  if (B * C == 0) return;
  switch (dt) {
    case DType::Float32: return forward<float>(feat, masks, out, mass, B, S, C, D, HW);
    case DType::Float64: return forward<double>(feat, masks, out, mass, B, S, C, D, HW);
    default: bad_dtype(dt);
  }
}

void masked_prototypes_backward_cpu(DType dt, const void* grad_out, const void* feat, const void* masks,
                                    const void* out, const void* mass, void* grad_feat, void* grad_masks,
                                    int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  if (B * S * HW == 0) return;
  switch (dt) {
    case DType::Float32:
      return backward<float>(grad_out, feat, masks, out, mass, grad_feat, grad_masks, B, S, C, D, HW);
    case DType::Float64:
      return backward<double>(grad_out, feat, masks, out, mass, grad_feat, grad_masks, B, S, C, D, HW);
    default: bad_dtype(dt);
  }
}

}  // namespace medmeta
