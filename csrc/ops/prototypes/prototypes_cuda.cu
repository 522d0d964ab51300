// CUDA kernels of prototypes (class means of support embeddings). Forward: a block per
// (episode, D-tile); each thread owns one column of the tile and one slice of the support
// rows and accumulates into its own shared-memory class rows, so there are no atomics
// and the result is deterministic; slices are summed in a fixed order at the end.
// Backward: a warp per support row (coalesced along D) writes grad_emb and reduces the
// dot product of grad_weights in the same pass.
#include "ops/prototypes/prototypes.h"

#include "common/cuda.cuh"
#include "common/sizes.h"

namespace medmeta {

namespace {

using namespace cuda;

constexpr int kThreads = 256;
constexpr int kSupportChunk = 256;    // labels / weights staged in shared memory per step
constexpr int kSmemBudget = 48 * 1024;  // default dynamic shared-memory limit: no opt-in needed

// Launch shape: `cols` columns per block (a multiple of 32, <= 128) and `slices` = threads /
// cols interleaved subsets of the support rows; `classes` per pass bounded by shared memory.
struct ForwardShape {
  int cols, slices, classes;
};

template <typename A> std::size_t forward_smem_bytes(const ForwardShape& s) {
  return sizeof(A) * (static_cast<std::size_t>(s.slices) * s.classes * (s.cols + 1) + kSupportChunk) +
         sizeof(int) * kSupportChunk;
}

template <typename A> ForwardShape forward_shape(int64_t N, int64_t D) {
  ForwardShape s;
  s.cols = static_cast<int>(std::min<int64_t>(128, std::max<int64_t>(32, ceil_div(D, 32) * 32)));
  s.slices = kThreads / s.cols;
  const int64_t fixed = static_cast<int64_t>((sizeof(A) + sizeof(int)) * kSupportChunk);
  const int64_t per_class = static_cast<int64_t>(sizeof(A)) * s.slices * (s.cols + 1);
  s.classes = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(N, (kSmemBudget - fixed) / per_class)));
  return s;
}

// Shared memory: acc [slices][classes][cols], total [slices][classes], w [kSupportChunk],
// label [kSupportChunk] (class index within the pass, or -1 when it is not in this pass).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    prototypes_forward_kernel(const T* __restrict__ emb, const int64_t* __restrict__ labels,
                              const T* __restrict__ weights, T* __restrict__ out, acc_t<T>* __restrict__ wsum,
                              int64_t S, int N, int64_t D, int dtiles, int cols, int slices, int classes) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* acc_s = reinterpret_cast<A*>(smem_raw);
  A* total_s = acc_s + slices * classes * cols;
  A* w_s = total_s + slices * classes;
  int* lab_s = reinterpret_cast<int*>(w_s + kSupportChunk);

  const int tid = threadIdx.x;
  const int col = tid % cols, slice = tid / cols;  // threads past cols * slices only help staging
  const bool worker = slice < slices;
  const int64_t b = blockIdx.x / dtiles;
  const int dt = static_cast<int>(blockIdx.x % dtiles);
  const int64_t d = static_cast<int64_t>(dt) * cols + col;
  const bool col_ok = worker && d < D;
  const T* eb = emb + b * S * D;
  A* my_acc = acc_s + (worker ? slice : 0) * classes * cols + col;
  A* my_total = total_s + (worker ? slice : 0) * classes;

  for (int n0 = 0; n0 < N; n0 += classes) {
    const int nn = min(classes, N - n0);
    if (worker) {
      for (int n = 0; n < nn; ++n) my_acc[n * cols] = A(0);  // each thread zeroes what it owns
      if (col == 0)
        for (int n = 0; n < nn; ++n) my_total[n] = A(0);
    }
    for (int64_t s0 = 0; s0 < S; s0 += kSupportChunk) {
      const int sn = static_cast<int>(min(static_cast<int64_t>(kSupportChunk), S - s0));
      __syncthreads();  // the previous chunk has been consumed
      for (int i = tid; i < sn; i += blockDim.x) {
        const int64_t l = labels[b * S + s0 + i];
        lab_s[i] = (l >= n0 && l < n0 + nn) ? static_cast<int>(l - n0) : -1;  // out of range: ignored
        w_s[i] = weights != nullptr ? to_acc(weights[b * S + s0 + i]) : A(1);
      }
      __syncthreads();
      if (worker) {
        const T* e = eb + s0 * D + d;
#pragma unroll 4
        for (int i = slice; i < sn; i += slices) {
          // Loaded before the label test so that unrolled iterations overlap their loads.
          const A v = col_ok ? to_acc(e[static_cast<int64_t>(i) * D]) : A(0);
          const int l = lab_s[i];
          if (l >= 0) {
            const A w = w_s[i];
            my_acc[l * cols] += w * v;
            if (col == 0) my_total[l] += w;
          }
        }
      }
    }
    __syncthreads();
    // Combine the slices in a fixed order; all threads share the (class, column) outputs.
    const int64_t d0 = static_cast<int64_t>(dt) * cols;
    for (int e = tid; e < nn * cols; e += blockDim.x) {
      const int n = e / cols, c = e % cols;
      if (d0 + c >= D) continue;
      A a = A(0), tot = A(0);
      for (int k = 0; k < slices; ++k) {
        a += acc_s[(k * classes + n) * cols + c];
        tot += total_s[k * classes + n];
      }
      const A inv = tot != A(0) ? A(1) / tot : quiet_nan<A>();  // no examples: NaN (as the CPU)
      out[(b * N + n0 + n) * D + d0 + c] = from_acc<T>(a * inv);
    }
    if (dt == 0) {
      for (int n = tid; n < nn; n += blockDim.x) {
        A tot = A(0);
        for (int k = 0; k < slices; ++k) tot += total_s[k * classes + n];
        wsum[b * N + n0 + n] = tot;
      }
    }
    __syncthreads();  // the next class pass re-zeroes the accumulators
  }
}

// One warp per support row r = (b, s).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    prototypes_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ emb,
                               const int64_t* __restrict__ labels, const T* __restrict__ weights,
                               const T* __restrict__ out, const acc_t<T>* __restrict__ wsum, T* __restrict__ grad_emb,
                               T* __restrict__ grad_weights, int64_t rows, int64_t S, int N, int64_t D) {
  using A = acc_t<T>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // warp-uniform
  const int64_t b = r / S, l = labels[r];
  const bool valid = l >= 0 && l < N && wsum[b * N + l] != A(0);
  const A inv = valid ? A(1) / wsum[b * N + l] : A(0);
  const T* g = grad_out + (b * N + (valid ? l : 0)) * D;
  const T* e = emb + r * D;
  const T* o = out + (b * N + (valid ? l : 0)) * D;
  T* ge = grad_emb != nullptr ? grad_emb + r * D : nullptr;
  const bool need_w = grad_weights != nullptr;
  const A a = (weights != nullptr ? to_acc(weights[r]) : A(1)) * inv;
  A s = A(0);
  if (valid) {
#pragma unroll 4
    for (int64_t d = lane; d < D; d += 32) {
      const A gv = to_acc(g[d]);
      if (ge != nullptr) ge[d] = from_acc<T>(a * gv);
      if (need_w) s += gv * (to_acc(e[d]) - to_acc(o[d]));
    }
  } else if (ge != nullptr) {
    for (int64_t d = lane; d < D; d += 32) ge[d] = from_acc<T>(A(0));
  }
  if (need_w) {
    s = warp_sum(s);
    if (lane == 0) grad_weights[r] = from_acc<T>(s * inv);
  }
}

void check_sizes(int64_t B, int64_t S, int64_t N, int64_t D) {
  check_prototypes_sizes(true, B, S, N, D);  // classes are ints in the kernels
}

}  // namespace

void prototypes_forward_cuda(Device dev, DType dt, const void* emb, const int64_t* labels, const void* weights,
                             void* out, void* wsum, int64_t B, int64_t S, int64_t N, int64_t D) {
  if (B == 0 || N == 0) return;  // S == 0 or D == 0 still define out / wsum (NaN / zeros)
  check_sizes(B, S, N, D);       // after the empty-input return: the CPU accepts any empty input
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "prototypes", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const ForwardShape shape = forward_shape<A>(N, D);
    const int64_t dtiles = std::max<int64_t>(1, ceil_div(D, shape.cols));  // one tile at D == 0 writes wsum
    MEDMETA_CHECK(dtiles <= INT_MAX, "prototypes: feature size too large");
    const unsigned grid = grid_1d(B * dtiles, "prototypes_forward_kernel");
    prototypes_forward_kernel<T><<<grid, kThreads, forward_smem_bytes<A>(shape), stream>>>(
        static_cast<const T*>(emb), labels, static_cast<const T*>(weights), static_cast<T*>(out),
        static_cast<A*>(wsum), S, static_cast<int>(N), D, static_cast<int>(dtiles), shape.cols, shape.slices,
        shape.classes);
    check_launch("prototypes_forward_kernel");
  });
}

void prototypes_backward_cuda(Device dev, DType dt, const void* grad_out, const void* emb, const int64_t* labels,
                              const void* weights, const void* out, const void* wsum, void* grad_emb,
                              void* grad_weights, int64_t B, int64_t S, int64_t N, int64_t D) {
  if (B == 0 || S == 0 || (grad_emb == nullptr && grad_weights == nullptr)) return;
  check_sizes(B, S, N, D);
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "prototypes", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const int64_t rows = B * S;
    const unsigned grid = grid_1d(ceil_div(rows, kThreads / 32), "prototypes_backward_kernel");
    prototypes_backward_kernel<T><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(emb), labels, static_cast<const T*>(weights),
        static_cast<const T*>(out), static_cast<const A*>(wsum), static_cast<T*>(grad_emb),
        static_cast<T*>(grad_weights), rows, S, static_cast<int>(N), D);
    check_launch("prototypes_backward_kernel");
  });
}

}  // namespace medmeta
