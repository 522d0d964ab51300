// CUDA kernels of pairwise_distance. Forward: one launch, a block per (episode, tile of
// query rows, pass of NT classes) with the class rows staged through shared memory and
// the norms computed on the way (cuda.cuh pairwise::forward_pass). Backward: one launch
// of the shared register-tiled kernel for grad_x and grad_y together, preceded by a norm
// pass only for the cosine metric (the only metric whose gradient needs the norms).
#include "ops/distance/distance.h"

#include "common/cuda.cuh"
#include "common/sizes.h"
#include "ops/distance/pairwise_cuda.cuh"

namespace medmeta {

namespace {

using namespace cuda;
using cuda::pairwise::ForwardShape;
using cuda::pairwise::kThreads;

// Block = (episode b, query tile, class pass); passes vary fastest so that the blocks
// reading the same query rows run close together (L2 reuse).
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads)
    distance_forward_kernel(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out, int Q, int N,
                            int64_t D, Metric metric, int qtiles, int passes) {
  using A = acc_t<T>;
  constexpr int R = ForwardShape<NT, A>::R;
  __shared__ A ys[NT * pairwise::kChunk];
  __shared__ A yy_s[NT];
  int64_t id = blockIdx.x;
  const int pass = static_cast<int>(id % passes);
  id /= passes;
  const int tile = static_cast<int>(id % qtiles);
  const int64_t b = id / qtiles;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int q_first = tile * ForwardShape<NT, A>::kRowsPerBlock + warp * R;
  const int n0 = pass * NT;

  A dot[R], xx[R], yy;
  pairwise::forward_pass<NT, R>(x + b * Q * D, y + b * N * D, q_first, Q, n0, N, D, ys, yy_s, dot, xx, yy);

  const int n = n0 + lane;
  if (lane < NT && n < N) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int q = q_first + r;
      if (q < Q) out[(b * Q + q) * N + n] = from_acc<T>(distance_from_dot(metric, dot[r], xx[r], yy));
    }
  }
}

template <typename T, int NT>
void launch_forward(const T* x, const T* y, T* out, int64_t B, int Q, int N, int64_t D, Metric metric,
                    cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t qtiles = ceil_div(Q, ForwardShape<NT, A>::kRowsPerBlock);
  const int64_t passes = ceil_div(N, NT);
  const unsigned grid = grid_1d(B * qtiles * passes, "distance_forward_kernel");
  distance_forward_kernel<T, NT><<<grid, kThreads, 0, stream>>>(x, y, out, Q, N, D, metric, static_cast<int>(qtiles),
                                                                static_cast<int>(passes));
  check_launch("distance_forward_kernel");
}

// The gradient of the distances is grad_out itself.
template <typename T> struct DistanceCoef {
  using A = acc_t<T>;
  const T* grad_out;  // [B,Q,N]
  const T* dist;      // [B,Q,N], the forward output
  const A* xx;        // [B*Q] squared norms, or null when the metric does not need them
  const A* yy;        // [B*N]
  int Q, N;
  Metric metric;

  // Episode-bound view: the pointer offsets are taken once per block.
  struct Episode {
    const T* g;
    const T* d;
    const A* xx;
    const A* yy;
    int N;
    Metric metric;
    __device__ __forceinline__ DistanceGrad<A> operator()(int q, int n) const {
      const int64_t e = static_cast<int64_t>(q) * N + n;
      return distance_grad(metric, to_acc(g[e]), to_acc(d[e]), xx != nullptr ? xx[q] : A(0),
                           yy != nullptr ? yy[n] : A(0));
    }
  };
  __device__ __forceinline__ Episode episode(int64_t b) const {
    return {grad_out + b * Q * N, dist + b * Q * N, xx != nullptr ? xx + b * Q : nullptr,
            yy != nullptr ? yy + b * N : nullptr, N, metric};
  }
};

void check_sizes(int64_t B, int64_t Q, int64_t N, int64_t D) {
  check_pairwise_sizes("pairwise_distance", true, B, Q, N, D);  // rows are ints in the kernels
}

}  // namespace

void distance_forward_cuda(Device dev, DType dt, const void* x, const void* y, void* out, void* workspace, int64_t B,
                           int64_t Q, int64_t N, int64_t D, Metric metric) {
  (void)workspace;  // the norms are computed inside the tile kernel
  if (B == 0 || Q == 0 || N == 0) return;  // D == 0 still defines out: distance_from_dot(m, 0, 0, 0)
  check_sizes(B, Q, N, D);  // after the empty-input return: the CPU accepts any empty input
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "pairwise_distance", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xt = static_cast<const T*>(x);
    const T* yt = static_cast<const T*>(y);
    T* ot = static_cast<T*>(out);
    const int q = static_cast<int>(Q), n = static_cast<int>(N);
    switch (pairwise::classes_per_pass(N)) {
      case 8: return launch_forward<T, 8>(xt, yt, ot, B, q, n, D, metric, stream);
      case 16: return launch_forward<T, 16>(xt, yt, ot, B, q, n, D, metric, stream);
      default: return launch_forward<T, 32>(xt, yt, ot, B, q, n, D, metric, stream);
    }
  });
}

void distance_backward_cuda(Device dev, DType dt, const void* grad_out, const void* x, const void* y,
                            const void* out, void* grad_x, void* grad_y, void* workspace, int64_t B, int64_t Q,
                            int64_t N, int64_t D, Metric metric) {
  // Q == 0 or N == 0 with D > 0: the other gradient is 0 * rows, written by the kernel.
  if (B == 0 || D == 0 || (grad_x == nullptr && grad_y == nullptr)) return;
  check_sizes(B, Q, N, D);
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "pairwise_distance", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T* xt = static_cast<const T*>(x);
    const T* yt = static_cast<const T*>(y);
    DistanceCoef<T> coef{static_cast<const T*>(grad_out), static_cast<const T*>(out), nullptr, nullptr,
                         static_cast<int>(Q), static_cast<int>(N), metric};
    if (metric == Metric::Cosine) {
      A* xx = static_cast<A*>(workspace);
      pairwise::launch_sq_norms(xt, B * Q, yt, B * N, D, xx, stream);
      coef.xx = xx;
      coef.yy = xx + B * Q;
    }
    pairwise::launch_backward(coef, xt, yt, static_cast<T*>(grad_x), static_cast<T*>(grad_y), B,
                              static_cast<int>(Q), static_cast<int>(N), D, stream, "distance_backward_kernel");
  });
}

}  // namespace medmeta
