// CPU kernels of masked average pooling as blocked matrix products. Per episode b, with the
// contraction index k = (s, p) over the shots' pixels:
//   forward      sums[c,d]      = sum_k masks[c,k] feat[d,k]           (both rows contiguous in p)
//   grad_feat    gfeat[s,d,p]   = sum_c gs[c,d] masks[s,c,p]
//   grad_masks   gmasks[s,c,p]  = sum_d gs[c,d] feat[s,d,p] - k[c]
// each computed by a register tile of SIMD accumulators (3 classes × 4 channels, or 4 rows ×
// 3 vectors of pixels) over a block of the shared index small enough that
// the operand reused by the neighbouring tiles stays in L1/L2. Float32 sums in float32,
// float64 in float64, as in every CPU kernel of the project.
#include "ops/masked_prototypes/masked_prototypes.h"

#include <cstring>
#include <limits>
#include <vector>

#include "common/cpu.h"
#include "common/math.h"
#include "common/simd.h"

namespace medmeta {

namespace {

// ---------------------------------------------------------------- forward

constexpr int64_t kDTile = 4;            // feature channels per forward register tile
constexpr int64_t kForwardBlock = 4096;  // bytes of a row per contraction block (reduced once per block)

// Classes per forward register tile: 3 (3×4 accumulators), 2+2 rather than 3+1 for the last four.
MEDMETA_INLINE int64_t class_tile(int64_t left) { return left == 4 ? 2 : std::min<int64_t>(3, left); }

// out[i*os + j] += sum_{p<n} m[i*ms + p] * f[j*fs + p] for i < CT, j < DT: the CT mask vectors
// held, the DT feature vectors streamed (CT·DT + CT + 1 <= 16 AVX2 registers: no spills).
template <int CT, int DT, typename T>
MEDMETA_INLINE void dot_tile(const T* __restrict m, int64_t ms, const T* __restrict f, int64_t fs, int64_t n,
                             T* __restrict out, int64_t os) {
  constexpr int W = kLanes<T>;
  Vec<T> acc[CT][DT];
  MEDMETA_UNROLL
  for (int i = 0; i < CT; ++i) {
    MEDMETA_UNROLL
    for (int j = 0; j < DT; ++j) acc[i][j] = Vec<T>{};
  }
  int64_t p = 0;
  for (; p + W <= n; p += W) {
    Vec<T> mv[CT];
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) mv[i] = MEDMETA_VLOAD(T, m + i * ms + p);
    MEDMETA_UNROLL
    for (int j = 0; j < DT; ++j) {
      const Vec<T> fv = MEDMETA_VLOAD(T, f + j * fs + p);
      MEDMETA_UNROLL
      for (int i = 0; i < CT; ++i) acc[i][j] += mv[i] * fv;
    }
  }
  MEDMETA_UNROLL
  for (int i = 0; i < CT; ++i) {
    MEDMETA_UNROLL
    for (int j = 0; j < DT; ++j) {
      T s = hsum<T>(acc[i][j]);
      for (int64_t q = p; q < n; ++q) s += m[i * ms + q] * f[j * fs + q];
      out[i * os + j] += s;
    }
  }
}

template <int CT, typename T>
MEDMETA_INLINE void dot_tile_d(int64_t dt, const T* m, int64_t ms, const T* f, int64_t fs, int64_t n, T* out,
                               int64_t os) {
  switch (dt) {
    case 4: return dot_tile<CT, 4>(m, ms, f, fs, n, out, os);
    case 3: return dot_tile<CT, 3>(m, ms, f, fs, n, out, os);
    case 2: return dot_tile<CT, 2>(m, ms, f, fs, n, out, os);
    default: return dot_tile<CT, 1>(m, ms, f, fs, n, out, os);
  }
}

// sum_{p<n} x[p], in four vector accumulators.
template <typename T> MEDMETA_INLINE T row_sum(const T* __restrict x, int64_t n) {
  constexpr int W = kLanes<T>;
  Vec<T> a0{}, a1{}, a2{}, a3{};
  int64_t p = 0;
  for (; p + 4 * W <= n; p += 4 * W) {
    a0 += MEDMETA_VLOAD(T, x + p);
    a1 += MEDMETA_VLOAD(T, x + p + W);
    a2 += MEDMETA_VLOAD(T, x + p + 2 * W);
    a3 += MEDMETA_VLOAD(T, x + p + 3 * W);
  }
  for (; p + W <= n; p += W) a0 += MEDMETA_VLOAD(T, x + p);
  a0 += a1;
  a2 += a3;
  a0 += a2;
  T s = hsum<T>(a0);
  for (; p < n; ++p) s += x[p];
  return s;
}

// mass[r] for rows r = (b, c); only when there is no channel (D == 0) and so no forward task.
template <typename T>
MEDMETA_CPU_CLONES void mass_rows(const T* masks, T* mass, int64_t S, int64_t C, int64_t HW, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / C, c = r % C;
    T s = 0;
    for (int64_t i = 0; i < S; ++i) s += row_sum(masks + ((b * S + i) * C + c) * HW, HW);
    mass[r] = s;
  }
}

// Tasks t = (b, tile of kDTile channels); a thread's tasks of one episode share each block of
// the episode's masks: for each (shot, pixel block), every channel tile × class tile. Each
// thread sums the mask blocks it reads into the class masses it divides by (the thread that
// holds an episode's first tile writes them out).
template <typename T>
MEDMETA_CPU_CLONES void forward_tasks(const T* feat, const T* masks, T* mass, T* out, int64_t S, int64_t C, int64_t D,
                                 int64_t HW, int64_t tiles, int64_t t0, int64_t t1) {
  const int64_t block = kForwardBlock / int64_t(sizeof(T));
  std::vector<T> total(C);
  for (int64_t b = t0 / tiles; b * tiles < t1; ++b) {
    const int64_t d_lo = (std::max(t0, b * tiles) - b * tiles) * kDTile;
    const int64_t d_hi = std::min(D, (std::min(t1, (b + 1) * tiles) - b * tiles) * kDTile);
    T* o = out + b * C * D;
    for (int64_t c = 0; c < C; ++c) std::fill(o + c * D + d_lo, o + c * D + d_hi, T(0));
    std::fill(total.begin(), total.end(), T(0));
    for (int64_t s = 0; s < S; ++s) {
      const T* fs = feat + (b * S + s) * D * HW;
      const T* ms = masks + (b * S + s) * C * HW;
      for (int64_t p0 = 0; p0 < HW; p0 += block) {
        const int64_t n = std::min(block, HW - p0);
        for (int64_t c = 0; c < C; ++c) total[c] += row_sum(ms + c * HW + p0, n);
        for (int64_t d0 = d_lo; d0 < d_hi; d0 += kDTile) {
          const int64_t dt = std::min(kDTile, d_hi - d0);
          const T* f = fs + d0 * HW + p0;
          for (int64_t c0 = 0; c0 < C;) {
            const int64_t ct = class_tile(C - c0);
            const T* m = ms + c0 * HW + p0;
            T* oc = o + c0 * D + d0;
            if (ct == 3)
              dot_tile_d<3>(dt, m, HW, f, HW, n, oc, D);
            else if (ct == 2)
              dot_tile_d<2>(dt, m, HW, f, HW, n, oc, D);
            else
              dot_tile_d<1>(dt, m, HW, f, HW, n, oc, D);
            c0 += ct;
          }
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      T* oc = o + c * D;
      if (total[c] != T(0))
        for (int64_t d = d_lo; d < d_hi; ++d) oc[d] /= total[c];
      else  // NaN: the mean of no pixels
        std::fill(oc + d_lo, oc + d_hi, std::numeric_limits<T>::quiet_NaN());
      if (d_lo == 0) mass[b * C + c] = total[c];
    }
  }
}

// ---------------------------------------------------------------- backward

constexpr int64_t kRowTile = 4;          // grad_feat rows per register tile
constexpr int64_t kFeatBlock = 1920;     // bytes of a row per grad_feat pixel block (20 × 3 vectors)...
constexpr int64_t kFeatMaskBytes = 16384; // ...at most, so that the block's C mask rows stay in L1
constexpr int64_t kMaskBlock = 960;      // bytes of a row per grad_masks pixel block (10 × 3 vectors)
constexpr int64_t kMaskDepth = 16;       // channels per grad_masks contraction block
constexpr int64_t kMaskClassTile = 4;    // classes per grad_masks register tile

// out[i*os + p] = sum_{c<C} g[i*C + c] * m[c*ms + p] for i < RT, p < n: RT × 3 vectors of
// accumulators (12 for RT = 4), each loaded mask vector used RT times.
template <int RT, typename T>
MEDMETA_INLINE void combine_rows(const T* __restrict g, int64_t C, const T* __restrict m, int64_t ms, int64_t n,
                                 T* __restrict out, int64_t os) {
  constexpr int W = kLanes<T>;
  int64_t p = 0;
  for (; p + 3 * W <= n; p += 3 * W) {
    Vec<T> acc0[RT], acc1[RT], acc2[RT];
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) acc0[i] = Vec<T>{}, acc1[i] = Vec<T>{}, acc2[i] = Vec<T>{};
    for (int64_t c = 0; c < C; ++c) {
      const T* mc = m + c * ms + p;
      const Vec<T> m0 = MEDMETA_VLOAD(T, mc), m1 = MEDMETA_VLOAD(T, mc + W), m2 = MEDMETA_VLOAD(T, mc + 2 * W);
      MEDMETA_UNROLL
      for (int i = 0; i < RT; ++i) {
        const T gi = g[i * C + c];
        acc0[i] += m0 * gi;
        acc1[i] += m1 * gi;
        acc2[i] += m2 * gi;
      }
    }
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) {
      T* o = out + i * os + p;
      MEDMETA_VSTORE(T, o, acc0[i]);
      MEDMETA_VSTORE(T, o + W, acc1[i]);
      MEDMETA_VSTORE(T, o + 2 * W, acc2[i]);
    }
  }
  for (; p + W <= n; p += W) {
    Vec<T> acc[RT];
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) acc[i] = Vec<T>{};
    for (int64_t c = 0; c < C; ++c) {
      const Vec<T> m0 = MEDMETA_VLOAD(T, m + c * ms + p);
      MEDMETA_UNROLL
      for (int i = 0; i < RT; ++i) acc[i] += m0 * g[i * C + c];
    }
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) MEDMETA_VSTORE(T, out + i * os + p, acc[i]);
  }
  for (; p < n; ++p) {
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) {
      T s = 0;
      for (int64_t c = 0; c < C; ++c) s += g[i * C + c] * m[c * ms + p];
      out[i * os + p] = s;
    }
  }
}

// Tasks t = ((b, s), tile of kRowTile channels): grad_feat[b,s,d,:] = sum_c gt[b,d,c] * masks[b,s,c,:].
template <typename T>
MEDMETA_CPU_CLONES void grad_feat_tasks(const T* gt, const T* masks, T* gfeat, int64_t S, int64_t C, int64_t D,
                                   int64_t HW, int64_t tiles, int64_t t0, int64_t t1) {
  // whole register tiles of pixels (3 vectors), as many as the L1 share of the masks holds
  constexpr int64_t step = 3 * kLanes<T>, size = int64_t(sizeof(T));
  const int64_t fit = kFeatMaskBytes / (std::max<int64_t>(C, 1) * size);
  const int64_t block = std::max(step, std::min(kFeatBlock / size, fit) / step * step);
  // The block's mask rows, copied contiguously: rows HW apart (a power of two for square
  // maps) would share the same few L1 sets and evict each other.
  std::vector<T> packed(C * block);
  for (int64_t r = t0 / tiles; r * tiles < t1; ++r) {  // r = b * S + s
    const int64_t b = r / S;
    const int64_t d_lo = (std::max(t0, r * tiles) - r * tiles) * kRowTile;
    const int64_t d_hi = std::min(D, (std::min(t1, (r + 1) * tiles) - r * tiles) * kRowTile);
    for (int64_t p0 = 0; p0 < HW; p0 += block) {
      const int64_t n = std::min(block, HW - p0);
      const T* mr = masks + r * C * HW + p0;
      for (int64_t c = 0; c < C; ++c) std::copy(mr + c * HW, mr + c * HW + n, packed.data() + c * n);
      const T* m = packed.data();
      for (int64_t d0 = d_lo; d0 < d_hi; d0 += kRowTile) {
        const T* g = gt + (b * D + d0) * C;
        T* o = gfeat + (r * D + d0) * HW + p0;
        switch (std::min(kRowTile, d_hi - d0)) {
          case 4: combine_rows<4>(g, C, m, n, n, o, HW); break;
          case 3: combine_rows<3>(g, C, m, n, n, o, HW); break;
          case 2: combine_rows<2>(g, C, m, n, n, o, HW); break;
          default: combine_rows<1>(g, C, m, n, n, o, HW); break;
        }
      }
    }
  }
}

// out[i*os + p] += sum_{d<depth} g[d*C + i] * f[d*fs + p] for i < CT, p < n: CT × 3 vectors of
// accumulators, each loaded feature vector used CT times.
template <int CT, typename T>
MEDMETA_INLINE void accumulate_rows(const T* __restrict g, int64_t C, const T* __restrict f, int64_t fs, int64_t depth,
                                    int64_t n, T* __restrict out, int64_t os) {
  constexpr int W = kLanes<T>;
  int64_t p = 0;
  for (; p + 3 * W <= n; p += 3 * W) {
    Vec<T> acc0[CT], acc1[CT], acc2[CT];
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      const T* o = out + i * os + p;
      acc0[i] = MEDMETA_VLOAD(T, o);
      acc1[i] = MEDMETA_VLOAD(T, o + W);
      acc2[i] = MEDMETA_VLOAD(T, o + 2 * W);
    }
    for (int64_t d = 0; d < depth; ++d) {
      const T* fd = f + d * fs + p;
      const Vec<T> f0 = MEDMETA_VLOAD(T, fd), f1 = MEDMETA_VLOAD(T, fd + W), f2 = MEDMETA_VLOAD(T, fd + 2 * W);
      MEDMETA_UNROLL
      for (int i = 0; i < CT; ++i) {
        const T gi = g[d * C + i];
        acc0[i] += f0 * gi;
        acc1[i] += f1 * gi;
        acc2[i] += f2 * gi;
      }
    }
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      T* o = out + i * os + p;
      MEDMETA_VSTORE(T, o, acc0[i]);
      MEDMETA_VSTORE(T, o + W, acc1[i]);
      MEDMETA_VSTORE(T, o + 2 * W, acc2[i]);
    }
  }
  for (; p + W <= n; p += W) {
    Vec<T> acc[CT];
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) acc[i] = MEDMETA_VLOAD(T, out + i * os + p);
    for (int64_t d = 0; d < depth; ++d) {
      const Vec<T> f0 = MEDMETA_VLOAD(T, f + d * fs + p);
      MEDMETA_UNROLL
      for (int i = 0; i < CT; ++i) acc[i] += f0 * g[d * C + i];
    }
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) MEDMETA_VSTORE(T, out + i * os + p, acc[i]);
  }
  for (; p < n; ++p) {
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      T s = out[i * os + p];
      for (int64_t d = 0; d < depth; ++d) s += g[d * C + i] * f[d * fs + p];
      out[i * os + p] = s;
    }
  }
}

// Tasks t = ((b, s), pixel block): grad_masks[b,s,c,p] = sum_d gt[b,d,c] * feat[b,s,d,p] - k[b,c],
// over blocks of kMaskDepth channels (their feature rows stay in L1 for every class tile).
template <typename T>
MEDMETA_CPU_CLONES void grad_mask_tasks(const T* gt, const T* k, const T* feat, T* gmask, int64_t S, int64_t C,
                                   int64_t D, int64_t HW, int64_t blocks, int64_t t0, int64_t t1) {
  const int64_t block = kMaskBlock / int64_t(sizeof(T));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = t / blocks, p0 = (t % blocks) * block, n = std::min(block, HW - p0);
    const int64_t b = r / S;
    T* o = gmask + r * C * HW + p0;
    for (int64_t c = 0; c < C; ++c) std::fill(o + c * HW, o + c * HW + n, -k[b * C + c]);
    const T* fr = feat + r * D * HW + p0;
    for (int64_t d0 = 0; d0 < D; d0 += kMaskDepth) {
      const int64_t depth = std::min(kMaskDepth, D - d0);
      const T* g = gt + (b * D + d0) * C;
      const T* f = fr + d0 * HW;
      for (int64_t c0 = 0; c0 < C; c0 += kMaskClassTile) {
        switch (std::min(kMaskClassTile, C - c0)) {
          case 4: accumulate_rows<4>(g + c0, C, f, HW, depth, n, o + c0 * HW, HW); break;
          case 3: accumulate_rows<3>(g + c0, C, f, HW, depth, n, o + c0 * HW, HW); break;
          case 2: accumulate_rows<2>(g + c0, C, f, HW, depth, n, o + c0 * HW, HW); break;
          default: accumulate_rows<1>(g + c0, C, f, HW, depth, n, o + c0 * HW, HW); break;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- drivers

// Parallel grain: about this many multiply-adds per thread before a second thread pays off.
constexpr int64_t kGrainWork = 1 << 16;

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(work_per_task, 1));
}

template <typename T>
void forward(const void* feat, const void* masks, void* out, void* mass, int64_t B, int64_t S, int64_t C, int64_t D,
             int64_t HW) {
  const T* f = static_cast<const T*>(feat);
  const T* m = static_cast<const T*>(masks);
  T* ms = static_cast<T*>(mass);
  if (D == 0) {
    parallel_for(0, B * C, grain_for(S * HW), [&](int64_t r0, int64_t r1) { mass_rows(m, ms, S, C, HW, r0, r1); });
    return;
  }
  const int64_t tiles = (D + kDTile - 1) / kDTile;
  parallel_for(0, B * tiles, grain_for(kDTile * S * HW * C), [&](int64_t t0, int64_t t1) {
    forward_tasks(f, m, ms, static_cast<T*>(out), S, C, D, HW, tiles, t0, t1);
  });
}

template <typename T>
void backward(const void* grad_out, const void* feat, const void* masks, const void* out, const void* mass,
              void* grad_feat, void* grad_masks, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  const T* g = static_cast<const T*>(grad_out);
  const T* o = static_cast<const T*>(out);
  const T* ms = static_cast<const T*>(mass);
  // gt[b,d,c] = grad_out[b,c,d] / mass[b,c] (transposed for the tiles), k[b,c] = <gs[b,c], out[b,c]>;
  // both zero for an empty class (its NaN prototype depends on no input, and must not reach k
  // through 0 * NaN).
  std::vector<T> gt(B * D * C), k(B * C);
  for (int64_t r = 0; r < B * C; ++r) {
    const int64_t b = r / C, c = r % C;
    const bool empty = ms[r] == T(0);
    const T inv = empty ? T(0) : T(1) / ms[r];
    T kk = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T gs = g[r * D + d] * inv;
      gt[(b * D + d) * C + c] = gs;
      if (!empty) kk += gs * o[r * D + d];
    }
    k[r] = kk;
  }
  if (grad_feat != nullptr) {
    const int64_t tiles = (D + kRowTile - 1) / kRowTile;
    parallel_for(0, B * S * tiles, grain_for(kRowTile * HW * std::max<int64_t>(C, 1)), [&](int64_t t0, int64_t t1) {
      grad_feat_tasks(gt.data(), static_cast<const T*>(masks), static_cast<T*>(grad_feat), S, C, D, HW, tiles, t0, t1);
    });
  }
  if (grad_masks != nullptr) {
    const int64_t block = kMaskBlock / int64_t(sizeof(T));
    const int64_t blocks = (HW + block - 1) / block;
    parallel_for(0, B * S * blocks, grain_for(std::min(block, HW) * std::max<int64_t>(C * D, 1)),
                 [&](int64_t t0, int64_t t1) {
                   grad_mask_tasks(gt.data(), k.data(), static_cast<const T*>(feat), static_cast<T*>(grad_masks), S,
                                   C, D, HW, blocks, t0, t1);
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
