// CUDA kernels of the fused prototypical loss. Forward: one launch computes a tile of
// query rows of an episode against all its prototypes (cuda.cuh pairwise::forward_pass,
// a pass per 32 classes), writes dist and lse, and reduces the tile's NLL and hits; a
// tiny second launch combines the tiles of an episode when Q needs more than one tile.
// Backward: the gradient of every distance is recomputed from dist/lse/targets inside
// the shared register-tiled kernel (no [B,Q,N] round trip), one launch for both inputs,
// preceded by a norm pass only for the cosine metric.
#include "ops/protoloss/protoloss.h"

#include "common/cuda.cuh"
#include "common/sizes.h"
#include "ops/distance/pairwise_cuda.cuh"

namespace medmeta {

namespace {

using namespace cuda;
using cuda::pairwise::ForwardShape;
using cuda::pairwise::kThreads;

// Block = (episode b, tile of kRowsPerBlock queries). Per-tile sums are reduced in a fixed
// order, so the loss is deterministic. With one tile per episode the block writes the
// loss itself; otherwise it leaves (nll, hits) in `partial` [B, qtiles, 2].
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads)
    protoloss_forward_kernel(const T* __restrict__ queries, const T* __restrict__ protos,
                             const int64_t* __restrict__ targets, T* __restrict__ loss, T* __restrict__ accuracy,
                             acc_t<T>* dist, acc_t<T>* __restrict__ lse, acc_t<T>* __restrict__ partial, int Q, int N,
                             int64_t D, Metric metric, acc_t<T> inv_t, int qtiles) {
  using A = acc_t<T>;
  constexpr int R = ForwardShape<NT, A>::R;
  constexpr int kRows = ForwardShape<NT, A>::kRowsPerBlock;
  __shared__ A ys[NT * pairwise::kChunk];
  __shared__ A yy_s[NT];
  __shared__ A nll_s[kRows];
  __shared__ A hit_s[kRows];

  const int tile = static_cast<int>(blockIdx.x % qtiles);
  const int64_t b = blockIdx.x / qtiles;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int q_first = tile * kRows + warp * R;

  for (int n0 = 0; n0 < N; n0 += NT) {
    A dot[R], xx[R], yy;
    pairwise::forward_pass<NT, R>(queries + b * Q * D, protos + b * N * D, q_first, Q, n0, N, D, ys, yy_s, dot, xx,
                                  yy);
    const int n = n0 + lane;
    if (lane < NT && n < N) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int q = q_first + r;
        if (q < Q) dist[(b * Q + q) * N + n] = distance_from_dot(metric, dot[r], xx[r], yy);
      }
    }
  }
  // The warp's own dist rows are complete; __syncwarp orders them before the reads below.
  __syncwarp();

  // Soft-max statistics: lane r owns query q_first + r (same formulas as the CPU: row_stats).
  if (lane < R) {
    const int q = q_first + lane;
    A nll = A(0), hit = A(0);
    if (q < Q) {
      const int64_t row = b * Q + q;
      const A* d = dist + row * N;
      const RowStats<A> st = row_stats(d, static_cast<int64_t>(N), inv_t);
      lse[row] = st.lse;
      const int64_t t = targets[row];
      if (t >= 0 && t < N) {
        nll = st.lse + d[t] * inv_t;
        hit = st.argmin == t ? A(1) : A(0);
      } else {
        nll = quiet_nan<A>();  // an out-of-range target poisons its episode's loss, never memory
      }
    }
    nll_s[warp * R + lane] = nll;
    hit_s[warp * R + lane] = hit;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    A nll = A(0), hits = A(0);
    for (int i = 0; i < kRows; ++i) {
      nll += nll_s[i];
      hits += hit_s[i];
    }
    if (qtiles == 1) {
      loss[b] = from_acc<T>(nll / A(Q));
      accuracy[b] = from_acc<T>(hits / A(Q));
    } else {
      partial[2 * (b * qtiles + tile)] = nll;
      partial[2 * (b * qtiles + tile) + 1] = hits;
    }
  }
}

// One warp per episode: lane l sums tiles l, l + 32, ... in order, then a butterfly; the
// assignment is fixed, so the result is deterministic.
template <typename T>
__global__ void __launch_bounds__(256)
    protoloss_finalize_kernel(const acc_t<T>* __restrict__ partial, T* __restrict__ loss, T* __restrict__ accuracy,
                              int64_t B, int qtiles, int Q) {
  using A = acc_t<T>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (b >= B) return;  // warp-uniform
  A nll = A(0), hits = A(0);
  for (int t = lane; t < qtiles; t += 32) {
    nll += partial[2 * (b * qtiles + t)];
    hits += partial[2 * (b * qtiles + t) + 1];
  }
  nll = warp_sum(nll);
  hits = warp_sum(hits);
  if (lane == 0) {
    loss[b] = from_acc<T>(nll / A(Q));
    accuracy[b] = from_acc<T>(hits / A(Q));
  }
}

template <typename T, int NT>
void launch_forward(const T* queries, const T* protos, const int64_t* targets, T* loss, T* accuracy, acc_t<T>* dist,
                    acc_t<T>* lse, acc_t<T>* partial, int64_t B, int Q, int N, int64_t D, Metric metric,
                    acc_t<T> inv_t, cudaStream_t stream) {
  const int64_t qtiles = ceil_div(Q, ForwardShape<NT, acc_t<T>>::kRowsPerBlock);
  const unsigned grid = grid_1d(B * qtiles, "protoloss_forward_kernel");
  protoloss_forward_kernel<T, NT><<<grid, kThreads, 0, stream>>>(queries, protos, targets, loss, accuracy, dist, lse,
                                                                 partial, Q, N, D, metric, inv_t,
                                                                 static_cast<int>(qtiles));
  check_launch("protoloss_forward_kernel");
  if (qtiles > 1) {
    protoloss_finalize_kernel<T><<<grid_1d(ceil_div(B, 8), "protoloss_finalize_kernel"), 256, 0, stream>>>(
        partial, loss, accuracy, B, static_cast<int>(qtiles), Q);
    check_launch("protoloss_finalize_kernel");
  }
}

// d loss_b / d dist[b,q,n] = -(softmax - onehot(target)) / T * grad_loss[b] / Q, as on the
// CPU, then the metric's derivative. An out-of-range target has no one-hot term.
template <typename T> struct ProtoCoef {
  using A = acc_t<T>;
  const T* grad_loss;       // [B]
  const int64_t* targets;   // [B,Q]
  const A* dist;            // [B,Q,N]
  const A* lse;             // [B,Q]
  const A* xx;              // [B*Q] squared norms, or null when the metric does not need them
  const A* yy;              // [B*N]
  int Q, N;
  Metric metric;
  A inv_t;

  // Episode-bound view: pointer offsets and the upstream scale are computed once per block.
  struct Episode {
    const int64_t* targets;
    const A* dist;
    const A* lse;
    const A* xx;
    const A* yy;
    int N;
    Metric metric;
    A inv_t, scale;
    __device__ __forceinline__ DistanceGrad<A> operator()(int q, int n) const {
      const A d = dist[static_cast<int64_t>(q) * N + n];
      const A p = m_exp(-d * inv_t - lse[q]);
      const A g = scale * (p - (n == targets[q] ? A(1) : A(0)));
      return distance_grad(metric, g, d, xx != nullptr ? xx[q] : A(0), yy != nullptr ? yy[n] : A(0));
    }
  };
  __device__ __forceinline__ Episode episode(int64_t b) const {
    return {targets + b * Q,
            dist + b * Q * N,
            lse + b * Q,
            xx != nullptr ? xx + b * Q : nullptr,
            yy != nullptr ? yy + b * N : nullptr,
            N,
            metric,
            inv_t,
            -(inv_t / A(Q)) * to_acc(grad_loss[b])};  // same association as the CPU kernel
  }
};

void check_sizes(int64_t B, int64_t Q, int64_t N, int64_t D) {
  check_pairwise_sizes("prototypical_loss", true, B, Q, N, D);  // rows are ints in the kernels
}

}  // namespace

void protoloss_forward_cuda(Device dev, DType dt, const void* queries, const void* protos, const int64_t* targets,
                            void* loss, void* accuracy, void* dist, void* lse, void* workspace, int64_t B, int64_t Q,
                            int64_t N, int64_t D, Metric metric, double inv_temperature) {
  if (B == 0) return;  // before the size checks, as on the CPU
  check_sizes(B, Q, N, D);
  MEDMETA_CHECK(N > 0, "prototypical_loss needs at least one class");
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "prototypical_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (Q == 0) {  // no queries: loss = accuracy = 0 (as on the CPU); dist and lse are empty
      zero_async(loss, B * sizeof(T), stream);
      zero_async(accuracy, B * sizeof(T), stream);
      return;
    }
    const T* qt = static_cast<const T*>(queries);
    const T* pt = static_cast<const T*>(protos);
    T* lt = static_cast<T*>(loss);
    T* at = static_cast<T*>(accuracy);
    A* dt_ = static_cast<A*>(dist);
    A* ls = static_cast<A*>(lse);
    A* partial = static_cast<A*>(workspace);  // 2 * B * qtiles <= 2 * B * Q <= workspace elements
    const int q = static_cast<int>(Q), n = static_cast<int>(N);
    const A inv_t = static_cast<A>(inv_temperature);
    switch (pairwise::classes_per_pass(N)) {
      case 8: return launch_forward<T, 8>(qt, pt, targets, lt, at, dt_, ls, partial, B, q, n, D, metric, inv_t, stream);
      case 16:
        return launch_forward<T, 16>(qt, pt, targets, lt, at, dt_, ls, partial, B, q, n, D, metric, inv_t, stream);
      default:
        return launch_forward<T, 32>(qt, pt, targets, lt, at, dt_, ls, partial, B, q, n, D, metric, inv_t, stream);
    }
  });
}

void protoloss_backward_cuda(Device dev, DType dt, const void* grad_loss, const void* queries, const void* protos,
                             const int64_t* targets, const void* dist, const void* lse, void* grad_queries,
                             void* grad_protos, void* workspace, int64_t B, int64_t Q, int64_t N, int64_t D,
                             Metric metric, double inv_temperature) {
  // Q == 0 or N == 0 with D > 0: the other gradient is 0 * rows, written by the kernel.
  if (B == 0 || D == 0 || (grad_queries == nullptr && grad_protos == nullptr)) return;
  check_sizes(B, Q, N, D);
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "prototypical_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T* qt = static_cast<const T*>(queries);
    const T* pt = static_cast<const T*>(protos);
    ProtoCoef<T> coef{static_cast<const T*>(grad_loss),
                      targets,
                      static_cast<const A*>(dist),
                      static_cast<const A*>(lse),
                      nullptr,
                      nullptr,
                      static_cast<int>(Q),
                      static_cast<int>(N),
                      metric,
                      static_cast<A>(inv_temperature)};
    if (metric == Metric::Cosine) {
      A* xx = static_cast<A*>(workspace);
      pairwise::launch_sq_norms(qt, B * Q, pt, B * N, D, xx, stream);
      coef.xx = xx;
      coef.yy = xx + B * Q;
    }
    pairwise::launch_backward(coef, qt, pt, static_cast<T*>(grad_queries), static_cast<T*>(grad_protos), B,
                              static_cast<int>(Q), static_cast<int>(N), D, stream, "protoloss_backward_kernel");
  });
}

}  // namespace medmeta
