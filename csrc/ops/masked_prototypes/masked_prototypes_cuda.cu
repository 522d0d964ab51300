// CUDA kernels of masked average pooling (PANet prototypes). Forward: a block per
// (episode, DB feature channels) streams the episode's pixels once, coalesced along HW,
// accumulating the DB x C masked sums and the C mask masses in registers, then reduces
// them in a fixed order (deterministic; every block recomputes the masses it needs).
// Backward (C <= 8): a block per (episode, shot, 64-pixel tile) reads each feature value
// once to produce grad_feat and grad_masks together; more classes use two plain kernels.
#include "ops/masked_prototypes/masked_prototypes.h"

#include "common/cuda.cuh"
#include "common/sizes.h"

namespace medmeta {

namespace {

using namespace cuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kForwardClasses = 4;  // classes held in registers per forward pass
constexpr int kClassGroup = 8;      // classes handled by the fused backward kernel

// Block = (episode b, channels [d0, d0 + DB)); a pass per group of kForwardClasses classes.
template <typename T, int DB>
__global__ void __launch_bounds__(kThreads, 2)
    masked_forward_kernel(const T* __restrict__ feat, const T* __restrict__ masks, T* __restrict__ out,
                          acc_t<T>* __restrict__ mass, int64_t S, int C, int64_t D, int64_t HW, int64_t dtiles) {
  using A = acc_t<T>;
  constexpr int kCG = kForwardClasses;
  constexpr int kVals = DB * kCG + kCG;  // masked sums, then masses
  __shared__ A red_s[kWarps][kVals];
  __shared__ A fin_s[kVals];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t b = blockIdx.x / dtiles;
  const int64_t d0 = (blockIdx.x % dtiles) * DB;
  const int nd = static_cast<int>(max(static_cast<int64_t>(0), min(static_cast<int64_t>(DB), D - d0)));

  for (int c0 = 0; c0 < C; c0 += kCG) {
    const int nc = min(kCG, C - c0);
    A acc[DB][kCG], ms[kCG];
#pragma unroll
    for (int c = 0; c < kCG; ++c) {
      ms[c] = A(0);
#pragma unroll
      for (int i = 0; i < DB; ++i) acc[i][c] = A(0);
    }
    for (int64_t s = 0; s < S; ++s) {
      const T* f = feat + ((b * S + s) * D + d0) * HW;
      const T* m = masks + ((b * S + s) * C + c0) * HW;
#pragma unroll 2
      for (int64_t p = tid; p < HW; p += kThreads) {
        A mv[kCG];
#pragma unroll
        for (int c = 0; c < kCG; ++c) {
          mv[c] = c < nc ? to_acc(m[c * HW + p]) : A(0);
          ms[c] += mv[c];
        }
#pragma unroll
        for (int i = 0; i < DB; ++i) {
          if (i < nd) {
            const A fv = to_acc(f[i * HW + p]);
#pragma unroll
            for (int c = 0; c < kCG; ++c) acc[i][c] += fv * mv[c];
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < DB; ++i)
#pragma unroll
      for (int c = 0; c < kCG; ++c) {
        const A v = warp_sum(acc[i][c]);
        if (lane == 0) red_s[warp][i * kCG + c] = v;
      }
#pragma unroll
    for (int c = 0; c < kCG; ++c) {
      const A v = warp_sum(ms[c]);
      if (lane == 0) red_s[warp][DB * kCG + c] = v;
    }
    __syncthreads();
    if (tid < kVals) {
      A t = A(0);
      for (int w = 0; w < kWarps; ++w) t += red_s[w][tid];
      fin_s[tid] = t;
    }
    __syncthreads();
    if (tid < DB * kCG) {
      const int i = tid / kCG, c = tid % kCG;
      if (i < nd && c < nc) {
        const A msum = fin_s[DB * kCG + c];
        out[(b * C + c0 + c) * D + d0 + i] = from_acc<T>(msum != A(0) ? fin_s[tid] / msum : quiet_nan<A>());
      }
    }
    if (d0 == 0 && tid < nc) mass[b * C + c0 + tid] = fin_s[DB * kCG + tid];
    __syncthreads();  // red_s / fin_s are reused by the next class group
  }
}

// Backward, C <= kClassGroup. Block = (episode b, shot s, tile of kPix pixels); thread =
// (pixel, slice of the channels). Per channel d: grad_feat[d,p] = sum_c gs[c,d] m[c,p] and
// grad_masks[c,p] += gs[c,d] (feat[d,p] - out[c,d]), gs = grad_out / mass; an empty class
// (mass 0, NaN prototype) contributes nothing: gs = 0 and out is read as 0 (0 * NaN is NaN).
constexpr int kPix = 64;
constexpr int kSlices = kThreads / kPix;
constexpr int kDChunk = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    masked_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ feat, const T* __restrict__ masks,
                           const T* __restrict__ out, const acc_t<T>* __restrict__ mass, T* __restrict__ grad_feat,
                           T* __restrict__ grad_masks, int64_t S, int C, int64_t D, int64_t HW, int64_t ptiles) {
  using A = acc_t<T>;
  constexpr int kCG = kClassGroup;
  __shared__ A gs_s[kDChunk][kCG];
  __shared__ A o_s[kDChunk][kCG];
  __shared__ A red_s[kSlices][kCG][kPix];

  const int tid = threadIdx.x;
  const int px = tid % kPix, slice = tid / kPix;  // a warp = 32 consecutive pixels of one slice
  int64_t id = blockIdx.x;
  const int64_t pt = id % ptiles;
  id /= ptiles;
  const int64_t bs = id;  // b * S + s
  const int64_t b = bs / S;
  const int64_t p = pt * kPix + px;
  const bool pok = p < HW;
  const T* frow = feat + bs * D * HW;
  T* gfrow = grad_feat != nullptr ? grad_feat + bs * D * HW : nullptr;
  const bool need_masks = grad_masks != nullptr;

  A m[kCG], acc[kCG];
#pragma unroll
  for (int c = 0; c < kCG; ++c) {
    m[c] = (c < C && pok) ? to_acc(masks[(bs * C + c) * HW + p]) : A(0);
    acc[c] = A(0);
  }

  for (int64_t dc0 = 0; dc0 < D; dc0 += kDChunk) {
    const int dn = static_cast<int>(min(static_cast<int64_t>(kDChunk), D - dc0));
    __syncthreads();  // the previous chunk has been consumed
    for (int e = tid; e < dn * C; e += kThreads) {
      const int dd = e / C, c = e % C;
      const int64_t bc = b * C + c;
      const A msum = mass[bc];
      const bool empty = msum == A(0);
      gs_s[dd][c] = empty ? A(0) : to_acc(grad_out[bc * D + dc0 + dd]) * (A(1) / msum);
      o_s[dd][c] = empty ? A(0) : to_acc(out[bc * D + dc0 + dd]);
    }
    __syncthreads();
#pragma unroll 4
    for (int dd = slice; dd < dn; dd += kSlices) {
      const int64_t d = dc0 + dd;
      if (gfrow != nullptr) {
        A gf = A(0);
#pragma unroll
        for (int c = 0; c < kCG; ++c)
          if (c < C) gf += gs_s[dd][c] * m[c];
        if (pok) gfrow[d * HW + p] = from_acc<T>(gf);
      }
      if (need_masks) {
        const A f = pok ? to_acc(frow[d * HW + p]) : A(0);
#pragma unroll
        for (int c = 0; c < kCG; ++c)
          if (c < C) acc[c] += gs_s[dd][c] * (f - o_s[dd][c]);
      }
    }
  }

  if (need_masks) {  // block-uniform
#pragma unroll
    for (int c = 0; c < kCG; ++c) red_s[slice][c][px] = acc[c];
    __syncthreads();
    if (slice == 0 && pok) {
      for (int c = 0; c < C; ++c) {
        A t = A(0);
#pragma unroll
        for (int k = 0; k < kSlices; ++k) t += red_s[k][c][px];
        grad_masks[(bs * C + c) * HW + p] = from_acc<T>(t);
      }
    }
  }
}

// Fallbacks for C > kClassGroup: one thread per output element, grid-stride.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    masked_grad_feat_kernel(const T* __restrict__ grad_out, const T* __restrict__ masks,
                            const acc_t<T>* __restrict__ mass, T* __restrict__ grad_feat, int64_t total, int64_t S,
                            int C, int64_t D, int64_t HW) {
  using A = acc_t<T>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t p = idx % HW, t = idx / HW;
    const int64_t d = t % D, bs = t / D, b = bs / S;
    A gf = A(0);
    for (int c = 0; c < C; ++c) {
      const A msum = mass[b * C + c];
      const A inv = msum != A(0) ? A(1) / msum : A(0);
      gf += to_acc(grad_out[(b * C + c) * D + d]) * inv * to_acc(masks[(bs * C + c) * HW + p]);
    }
    grad_feat[idx] = from_acc<T>(gf);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    masked_grad_masks_kernel(const T* __restrict__ grad_out, const T* __restrict__ feat, const T* __restrict__ out,
                             const acc_t<T>* __restrict__ mass, T* __restrict__ grad_masks, int64_t total, int64_t S,
                             int C, int64_t D, int64_t HW) {
  using A = acc_t<T>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t p = idx % HW, t = idx / HW;
    const int64_t c = t % C, bs = t / C, b = bs / S;
    const A msum = mass[b * C + c];
    if (msum == A(0)) {  // an empty class: its NaN prototype depends on no input
      grad_masks[idx] = from_acc<T>(A(0));
      continue;
    }
    const A inv = A(1) / msum;
    const T* f = feat + bs * D * HW + p;
    const T* g = grad_out + (b * C + c) * D;
    const T* o = out + (b * C + c) * D;
    A s = A(0);
    for (int64_t d = 0; d < D; ++d) s += to_acc(g[d]) * inv * (to_acc(f[d * HW]) - to_acc(o[d]));
    grad_masks[idx] = from_acc<T>(s);
  }
}

template <typename T, int DB>
void launch_forward(const T* feat, const T* masks, T* out, acc_t<T>* mass, int64_t B, int64_t S, int C, int64_t D,
                    int64_t HW, cudaStream_t stream) {
  const int64_t dtiles = std::max<int64_t>(1, ceil_div(D, DB));  // one tile at D == 0 writes the masses
  masked_forward_kernel<T, DB><<<grid_1d(B * dtiles, "masked_forward_kernel"), kThreads, 0, stream>>>(
      feat, masks, out, mass, S, C, D, HW, dtiles);
  check_launch("masked_forward_kernel");
}

void check_sizes(int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  check_masked_prototypes_sizes(true, B, S, C, D, HW);  // classes are ints in the kernels
}

unsigned stride_grid(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(total, kThreads), int64_t(1) << 20));
}

}  // namespace

void masked_prototypes_forward_cuda(Device dev, DType dt, const void* feat, const void* masks, void* out,
                                    void* mass, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  if (B == 0 || C == 0) return;  // S or HW == 0 still define mass (zeros) and out (NaN)
  check_sizes(B, S, C, D, HW);   // after the empty-input return: the CPU accepts any empty input
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "masked_prototypes", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T* f = static_cast<const T*>(feat);
    const T* m = static_cast<const T*>(masks);
    T* o = static_cast<T*>(out);
    A* ms = static_cast<A*>(mass);
    const int c = static_cast<int>(C);
    // Fewer channels per block when that is what it takes to give every SM two blocks.
    const int64_t want = 2 * static_cast<int64_t>(sm_count());
    if (B * ceil_div(D, 4) >= want) return launch_forward<T, 4>(f, m, o, ms, B, S, c, D, HW, stream);
    if (B * ceil_div(D, 2) >= want) return launch_forward<T, 2>(f, m, o, ms, B, S, c, D, HW, stream);
    return launch_forward<T, 1>(f, m, o, ms, B, S, c, D, HW, stream);
  });
}

void masked_prototypes_backward_cuda(Device dev, DType dt, const void* grad_out, const void* feat,
                                     const void* masks, const void* out, const void* mass, void* grad_feat,
                                     void* grad_masks, int64_t B, int64_t S, int64_t C, int64_t D, int64_t HW) {
  if (B == 0 || S == 0 || HW == 0 || (grad_feat == nullptr && grad_masks == nullptr)) return;
  check_sizes(B, S, C, D, HW);
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "masked_prototypes", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T* g = static_cast<const T*>(grad_out);
    const T* f = static_cast<const T*>(feat);
    const T* m = static_cast<const T*>(masks);
    const T* o = static_cast<const T*>(out);
    const A* ms = static_cast<const A*>(mass);
    T* gf = static_cast<T*>(grad_feat);
    T* gm = static_cast<T*>(grad_masks);
    const int c = static_cast<int>(C);
    if (C <= kClassGroup) {
      const int64_t ptiles = ceil_div(HW, kPix);
      masked_backward_kernel<T><<<grid_1d(B * S * ptiles, "masked_backward_kernel"), kThreads, 0, stream>>>(
          g, f, m, o, ms, gf, gm, S, c, D, HW, ptiles);
      check_launch("masked_backward_kernel");
      return;
    }
    if (gf != nullptr && D > 0) {
      const int64_t total = B * S * D * HW;
      masked_grad_feat_kernel<T><<<stride_grid(total), kThreads, 0, stream>>>(g, m, ms, gf, total, S, c, D, HW);
      check_launch("masked_grad_feat_kernel");
    }
    if (gm != nullptr) {
      const int64_t total = B * S * C * HW;
      masked_grad_masks_kernel<T><<<stride_grid(total), kThreads, 0, stream>>>(g, f, o, ms, gm, total, S, c, D, HW);
      check_launch("masked_grad_masks_kernel");
    }
  });
}

}  // namespace medmeta
