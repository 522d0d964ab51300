// CUDA kernels of the fused multi-tensor inner-loop update (multi-tensor apply, as in
// PyTorch's foreach kernels): up to kMaxTensors tensors' pointers and sizes travel in the
// kernel-argument block and blockIdx.x maps to (tensor, chunk) through a prefix table, so a
// whole parameter list is one launch. Scalar rates stream elements in 16-byte vectors;
// per-element rates (lr_numel > 1) map threads to learning-rate columns and loop over the
// T task rows, which makes grad_lr a per-thread sum (no atomics, deterministic). A single
// learned rate (MAML++) writes one partial sum per block into caller-sized scratch and a
// second kernel adds them in block order, so its gradient is bitwise reproducible too (no
// atomics anywhere: torch.use_deterministic_algorithms holds).
#include "ops/inner_update/inner_update.h"

#include "common/cuda.cuh"

namespace medmeta {

namespace {

using namespace cuda;

constexpr int kMaxTensors = 36;  // keeps each argument block well under the 4 KB limit
constexpr int kThreads = 256;
constexpr int kItems = 4;        // vectors per thread in an element (scalar-rate) chunk
constexpr int kRowBatch = 4;     // task rows loaded together in a column chunk
static_assert(kThreads * kItems * 16 == kInnerUpdateChunkBytes, "inner_update_partials() must match the chunks");

// 16 bytes of T: the unit of vectorised access.
template <typename T> struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

template <typename T> struct ForwardBatch {
  const T* param[kMaxTensors];
  const T* grad[kMaxTensors];
  const T* lr[kMaxTensors];  // null: lr_scalar
  T* out[kMaxTensors];       // may alias param
  int64_t numel[kMaxTensors];
  int64_t lr_numel[kMaxTensors];
  int64_t block_start[kMaxTensors + 1];  // prefix table: tensor k owns blocks [start[k], start[k+1])
  uint8_t vec[kMaxTensors];              // 16-byte aligned (and lr_numel % pack == 0 for columns)
  int count;
  acc_t<T> lr_scalar;
};

template <typename T> struct BackwardBatch {
  const T* grad_out[kMaxTensors];
  const T* grad[kMaxTensors];
  const T* lr[kMaxTensors];  // null: lr_scalar
  T* grad_grad[kMaxTensors];          // null: not requested
  acc_t<T>* grad_lr[kMaxTensors];     // per-element rates only; null: not requested
  acc_t<T>* partials[kMaxTensors];    // single rate: one sum of grad * grad_out per block; null: none
  int64_t numel[kMaxTensors];
  int64_t lr_numel[kMaxTensors];
  int64_t block_start[kMaxTensors + 1];
  uint8_t vec[kMaxTensors];
  int count;
  acc_t<T> lr_scalar;
};

static_assert(sizeof(ForwardBatch<double>) <= 4096, "kernel argument block too large");
static_assert(sizeof(BackwardBatch<double>) <= 4096, "kernel argument block too large");

// Second pass of a single learned rate's gradient: block k adds tensor k's per-block sums.
template <typename T> struct RateBatch {
  const T* grad_out[kMaxTensors];
  const T* grad[kMaxTensors];
  const acc_t<T>* partials[kMaxTensors];  // null: reduce grad * grad_out over the tensor itself
  acc_t<T>* grad_lr[kMaxTensors];
  int64_t n[kMaxTensors];  // partial sums, or elements when partials is null
  int count;
};
static_assert(sizeof(RateBatch<double>) <= 4096, "kernel argument block too large");

template <typename Batch> __device__ __forceinline__ int find_tensor(const Batch& batch) {
  int k = 0;  // block-uniform linear scan of a <= kMaxTensors prefix table (constant bank)
  while (k + 1 < batch.count && static_cast<int64_t>(blockIdx.x) >= batch.block_start[k + 1]) ++k;
  return k;
}

// Elements per chunk of a single-rate tensor. A thread loads all its packs before storing
// any, so an in-place update (out == param, which rules out __restrict__) still overlaps
// its loads.
template <typename T> __device__ __forceinline__ int64_t chunk_elems() {
  return static_cast<int64_t>(kThreads) * kItems * Pack<T>::N;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) inner_update_forward_kernel(const __grid_constant__ ForwardBatch<T> batch) {
  using A = acc_t<T>;
  constexpr int V = Pack<T>::N;
  const int k = find_tensor(batch);
  const int64_t chunk = blockIdx.x - batch.block_start[k];
  const T* param = batch.param[k];
  const T* grad = batch.grad[k];
  const T* lr = batch.lr[k];
  T* out = batch.out[k];
  const int64_t numel = batch.numel[k];
  const bool vec = batch.vec[k] != 0;
  const int tid = threadIdx.x;

  if (lr == nullptr || batch.lr_numel[k] == 1) {  // one rate for the tensor
    const A a = lr != nullptr ? to_acc(*lr) : batch.lr_scalar;
    const int64_t begin = chunk * chunk_elems<T>();
    const int64_t end = min(numel, begin + chunk_elems<T>());
    if (vec) {
      Pack<T> p[kItems], g[kItems];
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        const int64_t i = begin + (static_cast<int64_t>(it) * kThreads + tid) * V;
        if (i + V <= end) {
          p[it] = load_pack(param + i);
          g[it] = load_pack(grad + i);
        }
      }
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        const int64_t i = begin + (static_cast<int64_t>(it) * kThreads + tid) * V;
        if (i + V <= end) {
#pragma unroll
          for (int v = 0; v < V; ++v) p[it].v[v] = from_acc<T>(to_acc(p[it].v[v]) - a * to_acc(g[it].v[v]));
          store_pack(out + i, p[it]);
        } else {
          for (int64_t e = i; e < end; ++e) out[e] = from_acc<T>(to_acc(param[e]) - a * to_acc(grad[e]));
        }
      }
    } else {
#pragma unroll
      for (int it = 0; it < kItems * V; ++it) {
        const int64_t i = begin + static_cast<int64_t>(it) * kThreads + tid;
        if (i < end) out[i] = from_acc<T>(to_acc(param[i]) - a * to_acc(grad[i]));
      }
    }
    return;
  }

  // Per-element rates: tensor viewed as [rows, L]; the thread owns columns and walks the rows.
  const int64_t L = batch.lr_numel[k], rows = numel / L;
  const int64_t col0 = chunk * kThreads * V;
  if (vec) {
    const int64_t j = col0 + static_cast<int64_t>(tid) * V;
    if (j >= L) return;  // L % V == 0, so the pack is whole
    const Pack<T> ap = load_pack(lr + j);
    A a[V];
#pragma unroll
    for (int v = 0; v < V; ++v) a[v] = to_acc(ap.v[v]);
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
      Pack<T> p[kRowBatch], g[kRowBatch];
#pragma unroll
      for (int u = 0; u < kRowBatch; ++u)
        if (r0 + u < rows) {
          p[u] = load_pack(param + (r0 + u) * L + j);
          g[u] = load_pack(grad + (r0 + u) * L + j);
        }
#pragma unroll
      for (int u = 0; u < kRowBatch; ++u)
        if (r0 + u < rows) {
#pragma unroll
          for (int v = 0; v < V; ++v) p[u].v[v] = from_acc<T>(to_acc(p[u].v[v]) - a[v] * to_acc(g[u].v[v]));
          store_pack(out + (r0 + u) * L + j, p[u]);
        }
    }
  } else {
#pragma unroll 1
    for (int v = 0; v < V; ++v) {
      const int64_t j = col0 + static_cast<int64_t>(v) * kThreads + tid;
      if (j >= L) break;
      const A a = to_acc(lr[j]);
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
        A p[kRowBatch], g[kRowBatch];
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
          if (r0 + u < rows) {
            p[u] = to_acc(param[(r0 + u) * L + j]);
            g[u] = to_acc(grad[(r0 + u) * L + j]);
          }
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
          if (r0 + u < rows) out[(r0 + u) * L + j] = from_acc<T>(p[u] - a * g[u]);
      }
    }
  }
}

// Sum of a block's values, valid in thread 0. Called by the whole block.
template <typename A> __device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_s[kThreads / 32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) warp_s[threadIdx.x >> 5] = v;
  __syncthreads();
  A s = A(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) s += warp_s[w];
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    inner_update_backward_kernel(const __grid_constant__ BackwardBatch<T> batch) {
  using A = acc_t<T>;
  constexpr int V = Pack<T>::N;
  const int k = find_tensor(batch);
  const int64_t chunk = blockIdx.x - batch.block_start[k];
  const T* go = batch.grad_out[k];
  const T* grad = batch.grad[k];
  const T* lr = batch.lr[k];
  T* gg = batch.grad_grad[k];
  A* glr = batch.grad_lr[k];
  const int64_t numel = batch.numel[k];
  const bool vec = batch.vec[k] != 0;
  const int tid = threadIdx.x;

  if (lr == nullptr || batch.lr_numel[k] == 1) {
    const A a = lr != nullptr ? to_acc(*lr) : batch.lr_scalar;
    const int64_t begin = chunk * chunk_elems<T>();
    const int64_t end = min(numel, begin + chunk_elems<T>());
    A* part = batch.partials[k];  // block-uniform: null when no rate gradient is taken here
    A dot = A(0);  // sum of grad * grad_out over this thread's elements
    if (vec) {
      Pack<T> o[kItems], g[kItems];
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        const int64_t i = begin + (static_cast<int64_t>(it) * kThreads + tid) * V;
        if (i + V <= end) {
          o[it] = load_pack(go + i);
          if (part != nullptr) g[it] = load_pack(grad + i);
        }
      }
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        const int64_t i = begin + (static_cast<int64_t>(it) * kThreads + tid) * V;
        if (i + V <= end) {
          if (part != nullptr)
#pragma unroll
            for (int v = 0; v < V; ++v) dot += to_acc(g[it].v[v]) * to_acc(o[it].v[v]);
          if (gg != nullptr) {
            Pack<T> r;
#pragma unroll
            for (int v = 0; v < V; ++v) r.v[v] = from_acc<T>(-a * to_acc(o[it].v[v]));
            store_pack(gg + i, r);
          }
        } else {
          for (int64_t e = i; e < end; ++e) {
            const A ov = to_acc(go[e]);
            if (gg != nullptr) gg[e] = from_acc<T>(-a * ov);
            if (part != nullptr) dot += to_acc(grad[e]) * ov;
          }
        }
      }
    } else {
#pragma unroll
      for (int it = 0; it < kItems * V; ++it) {
        const int64_t i = begin + static_cast<int64_t>(it) * kThreads + tid;
        if (i < end) {
          const A ov = to_acc(go[i]);
          if (gg != nullptr) gg[i] = from_acc<T>(-a * ov);
          if (part != nullptr) dot += to_acc(grad[i]) * ov;
        }
      }
    }
    if (part != nullptr) {  // block-uniform; inner_update_rate_kernel adds the blocks in order
      const A s = block_sum(dot);
      if (tid == 0) part[chunk] = s;
    }
    return;
  }

  // Per-element rates: the thread owns columns j, walks the task rows and accumulates
  // grad_lr[j] -= grad * grad_out in row order, starting from the caller's value (as the CPU).
  const int64_t L = batch.lr_numel[k], rows = numel / L;
  const int64_t col0 = chunk * kThreads * V;
  if (vec) {
    const int64_t j = col0 + static_cast<int64_t>(tid) * V;
    if (j >= L) return;
    const Pack<T> ap = load_pack(lr + j);
    A a[V], acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      a[v] = to_acc(ap.v[v]);
      acc[v] = glr != nullptr ? glr[j + v] : A(0);
    }
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
      Pack<T> o[kRowBatch], g[kRowBatch];
#pragma unroll
      for (int u = 0; u < kRowBatch; ++u)
        if (r0 + u < rows) {
          o[u] = load_pack(go + (r0 + u) * L + j);
          if (glr != nullptr) g[u] = load_pack(grad + (r0 + u) * L + j);
        }
#pragma unroll
      for (int u = 0; u < kRowBatch; ++u)
        if (r0 + u < rows) {
          if (glr != nullptr)
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] -= to_acc(g[u].v[v]) * to_acc(o[u].v[v]);
          if (gg != nullptr) {
            Pack<T> r;
#pragma unroll
            for (int v = 0; v < V; ++v) r.v[v] = from_acc<T>(-a[v] * to_acc(o[u].v[v]));
            store_pack(gg + (r0 + u) * L + j, r);
          }
        }
    }
    if (glr != nullptr)
#pragma unroll
      for (int v = 0; v < V; ++v) glr[j + v] = acc[v];
  } else {
#pragma unroll 1
    for (int v = 0; v < V; ++v) {
      const int64_t j = col0 + static_cast<int64_t>(v) * kThreads + tid;
      if (j >= L) break;
      const A a = to_acc(lr[j]);
      A acc = glr != nullptr ? glr[j] : A(0);
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
        A o[kRowBatch], g[kRowBatch];
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
          if (r0 + u < rows) {
            o[u] = to_acc(go[(r0 + u) * L + j]);
            g[u] = glr != nullptr ? to_acc(grad[(r0 + u) * L + j]) : A(0);
          }
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
          if (r0 + u < rows) {
            if (glr != nullptr) acc -= g[u] * o[u];
            if (gg != nullptr) gg[(r0 + u) * L + j] = from_acc<T>(-a * o[u]);
          }
      }
      if (glr != nullptr) glr[j] = acc;
    }
  }
}

// Block k: grad_lr[k] -= the sum of tensor k's partials (or of grad * grad_out), each thread
// over a fixed stride, then block_sum: a fixed order, so the result does not vary run to run.
template <typename T>
__global__ void __launch_bounds__(kThreads) inner_update_rate_kernel(const __grid_constant__ RateBatch<T> batch) {
  using A = acc_t<T>;
  const int k = blockIdx.x;
  const int64_t n = batch.n[k];
  const A* part = batch.partials[k];
  A s = A(0);
  if (part != nullptr) {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) s += part[i];
  } else {
    const T* go = batch.grad_out[k];
    const T* g = batch.grad[k];
    for (int64_t i = threadIdx.x; i < n; i += kThreads) s += to_acc(g[i]) * to_acc(go[i]);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) *batch.grad_lr[k] -= s;
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Blocks of one tensor: element chunks for a single rate, column chunks for per-element rates.
template <typename T> int64_t tensor_blocks(int64_t numel, const void* lr, int64_t lr_numel) {
  constexpr int V = Pack<T>::N;
  if (lr != nullptr && lr_numel > 1) return ceil_div(lr_numel, static_cast<int64_t>(kThreads) * V);
  return ceil_div(numel, static_cast<int64_t>(kThreads) * kItems * V);
}

void check_rate(int64_t numel, const void* lr, int64_t lr_numel) {
  MEDMETA_CHECK(numel >= 0, "inner_update: negative numel");
  if (lr == nullptr) return;
  MEDMETA_CHECK(lr_numel >= 1, "inner_update: lr_numel must be >= 1");
  MEDMETA_CHECK(numel % lr_numel == 0, "inner_update: numel must be a multiple of lr_numel");
}

// Packs tensors into batches of <= kMaxTensors and launches one kernel per batch.
template <typename Batch, typename Fill, typename Launch>
void run_batches(int64_t count, Fill&& fill, Launch&& launch) {
  Batch batch{};
  int n = 0;
  int64_t blocks = 0;
  auto flush = [&] {
    if (n == 0) return;
    batch.count = n;
    batch.block_start[n] = blocks;
    launch(batch, blocks);
    n = 0;
    blocks = 0;
  };
  for (int64_t k = 0; k < count; ++k) {
    int64_t tb = fill(batch, n, k);  // fills slot n, returns its blocks (0: nothing to do)
    if (tb == 0) continue;
    MEDMETA_CHECK(tb <= INT_MAX, "inner_update: tensor too large for one launch");
    if (blocks + tb > INT_MAX) {  // gridDim.x would overflow: launch what we have, restart at slot 0
      flush();
      tb = fill(batch, 0, k);
    }
    batch.block_start[n] = blocks;
    blocks += tb;
    if (++n == kMaxTensors) flush();
  }
  flush();
}

template <typename T> void forward(const UpdateTensor* ts, int64_t count, double lr_scalar, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int V = Pack<T>::N;
  run_batches<ForwardBatch<T>>(
      count,
      [&](ForwardBatch<T>& b, int n, int64_t k) -> int64_t {
        const UpdateTensor& t = ts[k];
        if (t.numel == 0) return 0;  // before the rate checks: [T, 0] with a [0] rate is fine, as on the CPU
        check_rate(t.numel, t.lr, t.lr_numel);
        const bool columns = t.lr != nullptr && t.lr_numel > 1;
        b.param[n] = static_cast<const T*>(t.param);
        b.grad[n] = static_cast<const T*>(t.grad);
        b.lr[n] = static_cast<const T*>(t.lr);
        b.out[n] = static_cast<T*>(t.out);
        b.numel[n] = t.numel;
        b.lr_numel[n] = t.lr != nullptr ? t.lr_numel : 1;
        b.vec[n] = aligned16(t.param) && aligned16(t.grad) && aligned16(t.out) &&
                   (!columns || (aligned16(t.lr) && t.lr_numel % V == 0));
        b.lr_scalar = static_cast<A>(lr_scalar);
        return tensor_blocks<T>(t.numel, t.lr, t.lr_numel);
      },
      [&](const ForwardBatch<T>& b, int64_t blocks) {
        inner_update_forward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(b);
        check_launch("inner_update_forward_kernel");
      });
}

template <typename T>
void backward(const UpdateGradTensor* ts, int64_t count, double lr_scalar, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int V = Pack<T>::N;
  run_batches<BackwardBatch<T>>(
      count,
      [&](BackwardBatch<T>& b, int n, int64_t k) -> int64_t {
        const UpdateGradTensor& t = ts[k];
        if (t.numel == 0) return 0;  // before the rate checks, as in forward
        check_rate(t.numel, t.lr, t.lr_numel);
        // grad_lr only exists for a learned rate (as on the CPU). A single rate's gradient
        // comes from per-block partials (when the caller gave scratch) and the rate kernel.
        void* grad_lr = t.lr != nullptr ? t.grad_lr : nullptr;
        const bool columns = t.lr != nullptr && t.lr_numel > 1;
        A* part = !columns && grad_lr != nullptr ? static_cast<A*>(t.partials) : nullptr;
        A* glr = columns ? static_cast<A*>(grad_lr) : nullptr;
        if (t.grad_grad == nullptr && glr == nullptr && part == nullptr) return 0;
        b.grad_out[n] = static_cast<const T*>(t.grad_out);
        b.grad[n] = static_cast<const T*>(t.grad);
        b.lr[n] = static_cast<const T*>(t.lr);
        b.grad_grad[n] = static_cast<T*>(t.grad_grad);
        b.grad_lr[n] = glr;
        b.partials[n] = part;
        b.numel[n] = t.numel;
        b.lr_numel[n] = t.lr != nullptr ? t.lr_numel : 1;
        b.vec[n] = aligned16(t.grad_out) && aligned16(glr != nullptr || part != nullptr ? t.grad : nullptr) &&
                   aligned16(t.grad_grad) && (!columns || (aligned16(t.lr) && t.lr_numel % V == 0));
        b.lr_scalar = static_cast<A>(lr_scalar);
        return tensor_blocks<T>(t.numel, t.lr, t.lr_numel);
      },
      [&](const BackwardBatch<T>& b, int64_t blocks) {
        inner_update_backward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(b);
        check_launch("inner_update_backward_kernel");
      });
  // Second pass: each single learned rate's gradient, one block per tensor (same stream, so
  // after the partials are written).
  RateBatch<T> r{};
  auto flush = [&] {
    if (r.count == 0) return;
    inner_update_rate_kernel<T><<<static_cast<unsigned>(r.count), kThreads, 0, stream>>>(r);
    check_launch("inner_update_rate_kernel");
    r.count = 0;
  };
  for (int64_t k = 0; k < count; ++k) {
    const UpdateGradTensor& t = ts[k];
    if (t.numel == 0 || t.lr == nullptr || t.lr_numel != 1 || t.grad_lr == nullptr) continue;
    const int n = r.count++;
    r.grad_out[n] = static_cast<const T*>(t.grad_out);
    r.grad[n] = static_cast<const T*>(t.grad);
    r.partials[n] = static_cast<const A*>(t.partials);
    r.grad_lr[n] = static_cast<A*>(t.grad_lr);
    r.n[n] = t.partials != nullptr ? tensor_blocks<T>(t.numel, t.lr, 1) : t.numel;
    if (r.count == kMaxTensors) flush();
  }
  flush();
}

}  // namespace

void inner_update_forward_cuda(Device dev, DType dt, const UpdateTensor* tensors, int64_t count, double lr_scalar) {
  if (count <= 0) return;
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "inner_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward<T>(tensors, count, lr_scalar, stream);
  });
}

void inner_update_backward_cuda(Device dev, DType dt, const UpdateGradTensor* tensors, int64_t count,
                                double lr_scalar) {
  if (count <= 0) return;
  DeviceGuard guard(dev.index);
  const cudaStream_t stream = stream_of(dev);
  dispatch(dt, "inner_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward<T>(tensors, count, lr_scalar, stream);
  });
}

}  // namespace medmeta
