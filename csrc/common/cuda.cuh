// CUDA helpers of the medmeta native core: the device guard, launch checks, dtype
// dispatch and element conversions, warp/block reductions, and the tiled pairwise
// building blocks that pairwise_distance and the fused prototypical loss share
// (one forward pass over a query tile, one backward kernel over a coefficient functor).
// Framework-agnostic: raw pointers, sizes and the caller's stream; no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(__CUDACC__)
#include <cuda.h>  // driver types only: driver functions are reached through the runtime's entry points
#endif

#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/math.h"
#include "common/types.h"

namespace medmeta {
namespace cuda {

// ----------------------------------------------------------------------------
// Host side: errors, device, stream, sizes.

[[noreturn]] inline void throw_cuda(const std::string& what, cudaError_t err) {
  throw std::runtime_error("medmeta: " + what + " failed: " + cudaGetErrorString(err));
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda(what, err);
}

// After every launch: configuration errors (grid, shared memory, registers) surface here.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda(std::string("CUDA kernel ") + kernel, err);
}

// Whether `device`'s primary context is active: 1 yes, 0 no, -1 unknown. Asks the driver's
// cuDevicePrimaryCtxGetState through the runtime's entry-point query, so the module does not
// link libcuda (it still imports without a GPU). Unknown when that query is unavailable: a
// toolkit before 11.3, a driver without the symbol, or a build not compiled by nvcc (the CPU
// emulator of the kernels).
inline int primary_context_active(int device) {
#if defined(__CUDACC__) && CUDART_VERSION >= 11030
  using DeviceGet = CUresult(CUDAAPI*)(CUdevice*, int);
  using CtxGetState = CUresult(CUDAAPI*)(CUdevice, unsigned int*, int*);
  struct Driver {
    DeviceGet device_get = nullptr;
    CtxGetState ctx_get_state = nullptr;
  };
  static const Driver driver = [] {
    const auto entry = [](const char* name) -> void* {
      void* fn = nullptr;
#if CUDART_VERSION >= 12000
      cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050  // the unversioned query is deprecated from 12.5 on
      const cudaError_t err = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found);
#else
      const cudaError_t err = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found);
#endif
      const bool ok = err == cudaSuccess && found == cudaDriverEntryPointSuccess;
#else
      const cudaError_t err = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault);
      const bool ok = err == cudaSuccess;
#endif
      if (err != cudaSuccess) cudaGetLastError();  // keep check_launch's view of errors clean
      return ok ? fn : nullptr;
    };
    Driver d;
    d.device_get = reinterpret_cast<DeviceGet>(entry("cuDeviceGet"));
    d.ctx_get_state = reinterpret_cast<CtxGetState>(entry("cuDevicePrimaryCtxGetState"));
    return d;
  }();
  if (driver.device_get == nullptr || driver.ctx_get_state == nullptr) return -1;
  CUdevice dev = 0;
  unsigned int flags = 0;
  int active = 0;
  if (driver.device_get(&dev, device) != CUDA_SUCCESS || driver.ctx_get_state(dev, &flags, &active) != CUDA_SUCCESS)
    return -1;
  return active != 0 ? 1 : 0;
#else
  (void)device;
  return -1;
#endif
}

// Makes `index` the current device for the lifetime of the guard and restores the caller's
// device afterwards, so a call on cuda:1 never leaks into the caller's state. As PyTorch's
// c10::cuda::MaybeSetDevice, the previous device is restored only if its primary context is
// active: in a thread that never used a device, cudaGetDevice reports 0, and setting device 0
// back would create a context on GPU 0 (cudaSetDevice initialises it since CUDA 12) that the
// process never asked for. The thread then keeps `index` current, as after torch's own guards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != index) {
      check(cudaSetDevice(index), "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_ && primary_context_active(prev_) != 0) cudaSetDevice(prev_);  // unknown: restore
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

inline cudaStream_t stream_of(const Device& dev) { return reinterpret_cast<cudaStream_t>(dev.stream); }

// Zero-fills on the caller's stream (ordered with the kernels around it).
inline void zero_async(void* ptr, std::size_t bytes, cudaStream_t stream) {
  if (ptr != nullptr && bytes > 0) check(cudaMemsetAsync(ptr, 0, bytes, stream), "cudaMemsetAsync");
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 1-D grid must fit gridDim.x; every kernel here maps its work onto blockIdx.x.
inline unsigned grid_1d(int64_t blocks, const char* kernel) {
  MEDMETA_CHECK(blocks <= static_cast<int64_t>(INT_MAX),
                std::string("input too large for one launch of ") + kernel);
  return static_cast<unsigned>(blocks);
}

// Streaming multiprocessors of the current device (cached: the query is on the launch path).
inline int sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= 64) dev = 0;
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n <= 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    cache[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// ----------------------------------------------------------------------------
// Dtype dispatch: one switch per entry point, then everything is a template on T.

template <typename T> struct TypeTag {
  using type = T;
};

template <typename F> void dispatch(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::Float32: f(TypeTag<float>{}); return;
    case DType::Float64: f(TypeTag<double>{}); return;
    case DType::Float16: f(TypeTag<__half>{}); return;
    case DType::BFloat16: f(TypeTag<__nv_bfloat16>{}); return;
  }
  fail(std::string(op) + " on CUDA: unsupported dtype code " + std::to_string(static_cast<int>(dt)));
}

// ----------------------------------------------------------------------------
// Device side: conversions between storage and accumulation types.

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> struct FromAcc;
template <> struct FromAcc<float> {
  static __device__ __forceinline__ float cvt(float v) { return v; }
};
template <> struct FromAcc<double> {
  static __device__ __forceinline__ double cvt(double v) { return v; }
};
template <> struct FromAcc<__half> {
  static __device__ __forceinline__ __half cvt(float v) { return __float2half_rn(v); }
};
template <> struct FromAcc<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 cvt(float v) { return __float2bfloat16_rn(v); }
};

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return FromAcc<T>::cvt(v); }

template <typename A> __device__ __forceinline__ A quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

// ----------------------------------------------------------------------------
// Reductions. All are fixed-order (xor butterflies, then in-order sums), so results
// do not depend on scheduling.

constexpr unsigned kFullMask = 0xffffffffu;

// Every lane gets the same (bitwise) sum: each butterfly step adds the same two operands.
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// One step of warp_transpose_sum: lanes with bit OFF set keep the upper half of the 2*OFF
// live elements, the others the lower half, and each adds its partner's copy of the half it
// keeps. OFF is a template parameter so that every array index is a compile-time constant
// (a runtime-bounded inner loop leaves the array in local memory).
template <int OFF, int NT, typename A>
__device__ __forceinline__ void transpose_sum_step(A (&v)[NT], int lane) {
  if constexpr (OFF >= 1) {
    const bool upper = (lane & OFF) != 0;
#pragma unroll
    for (int i = 0; i < OFF; ++i) {
      const A send = upper ? v[i] : v[i + OFF];
      const A keep = upper ? v[i + OFF] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, OFF);
    }
    transpose_sum_step<OFF / 2>(v, lane);
  }
}

// Reduce-scatter of NT per-lane partial sums (NT a power of two <= 32): returns in each
// lane the warp-wide sum of element lane % NT. Halving the exchanged set each step costs
// NT - 1 + log2(32 / NT) shuffles instead of 5 * NT for NT independent warp_sums.
// Clobbers v.
template <int NT, typename A> __device__ __forceinline__ A warp_transpose_sum(A (&v)[NT], int lane) {
  static_assert(NT >= 1 && NT <= 32 && (NT & (NT - 1)) == 0, "NT must be a power of two <= 32");
  transpose_sum_step<NT / 2>(v, lane);
  A r = v[0];
#pragma unroll
  for (int off = NT; off < 32; off <<= 1) r += __shfl_xor_sync(kFullMask, r, off);
  return r;
}

// ----------------------------------------------------------------------------
// Pairwise (distance family) building blocks. Episode b holds x [Q,D] (queries) and
// y [N,D] (prototypes / support rows); everything is contiguous.
namespace pairwise {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 128;  // D-columns of y staged in shared memory per step (4 per lane)

// Query rows per warp for NT classes per pass: R * NT accumulators per lane, kept at
// <= 64 registers (32 for double) so the forward kernels stay spill-free at 2+ blocks/SM.
template <int NT, typename A> struct ForwardShape {
  static constexpr int R = (sizeof(A) == 8 ? 1 : 2) * (NT >= 32 ? 1 : 2);
  static constexpr int kRowsPerBlock = kWarps * R;
};

// Classes per pass chosen from N: 8, 16 or 32 (larger N runs several passes).
inline int classes_per_pass(int64_t N) { return N <= 8 ? 8 : (N <= 16 ? 16 : 32); }

// One pass of the forward distance tile. The block's warp `w` owns query rows
// [q_first, q_first + R) of the episode and the block owns classes [n0, n0 + NT).
// Lanes stride D (coalesced reads); y is staged through shared memory `ys` [NT][kChunk]
// and reused by the R rows of every warp. On return, lane l holds in dot[r] the inner
// product of row q_first + r with class n0 + l % NT, in xx[r] the squared norm of that row
// and in yy the squared norm of class n0 + l % NT. Every thread of the block must call it.
template <int NT, int R, typename T>
__device__ __forceinline__ void forward_pass(const T* __restrict__ xb, const T* __restrict__ yb, int q_first, int Q,
                                             int n0, int N, int64_t D, acc_t<T>* ys, acc_t<T>* yy_s,
                                             acc_t<T> (&dot)[R], acc_t<T> (&xx)[R], acc_t<T>& yy) {
  using A = acc_t<T>;
  constexpr int KC = kChunk / 32;   // columns per lane per chunk
  constexpr int YR = NT / kWarps;   // y rows each warp stages
  static_assert(NT % kWarps == 0, "NT must be a multiple of the warp count");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool active = q_first < Q;  // warp-uniform: a warp past the last query only helps staging
  const int n_valid = N - n0;       // classes of this pass that exist (may exceed NT)

  A acc[R][NT];
  A xsq[R];
  A ysq[YR];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    xsq[r] = A(0);
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[r][n] = A(0);
  }
#pragma unroll
  for (int i = 0; i < YR; ++i) ysq[i] = A(0);

  for (int64_t c0 = 0; c0 < D; c0 += kChunk) {
    // This warp's query values for the chunk, issued before the barrier so that their
    // latency overlaps the staging of y.
    A xv[KC][R];
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      const int64_t d = c0 + lane + 32 * k;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int q = q_first + r;
        xv[k][r] = (q < Q && d < D) ? to_acc(xb[static_cast<int64_t>(q) * D + d]) : A(0);
      }
    }
#pragma unroll
    for (int i = 0; i < YR; ++i) {
      const int n = warp + kWarps * i;
      const bool ok = n < n_valid;
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        const int64_t d = c0 + lane + 32 * k;
        const A v = (ok && d < D) ? to_acc(yb[static_cast<int64_t>(n0 + n) * D + d]) : A(0);
        ys[n * kChunk + lane + 32 * k] = v;
        ysq[i] += v * v;
      }
    }
    __syncthreads();
    if (active) {
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        if (c0 + 32 * k < D) {  // uniform: skips the padding of the last chunk
#pragma unroll
          for (int r = 0; r < R; ++r) xsq[r] += xv[k][r] * xv[k][r];
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            if (n < n_valid) {  // uniform: skips classes past N
              const A p = ys[n * kChunk + lane + 32 * k];
#pragma unroll
              for (int r = 0; r < R; ++r) acc[r][n] += xv[k][r] * p;
            }
          }
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    dot[r] = warp_transpose_sum<NT>(acc[r], lane);
    xx[r] = warp_sum(xsq[r]);
  }
#pragma unroll
  for (int i = 0; i < YR; ++i) {
    const A s = warp_sum(ysq[i]);
    if (lane == 0) yy_s[warp + kWarps * i] = s;
  }
  __syncthreads();
  yy = yy_s[lane % NT];
  __syncthreads();  // yy_s is rewritten by the next pass (no chunk barrier in between when D == 0)
}

// Squared norms of rows_x rows of x then rows_y rows of y (each of length D) into
// out [rows_x + rows_y]: one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sq_norms_kernel(const T* __restrict__ x, int64_t rows_x, const T* __restrict__ y, int64_t rows_y, int64_t D,
                    acc_t<T>* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows_x + rows_y) return;  // warp-uniform
  const T* src = row < rows_x ? x + row * D : y + (row - rows_x) * D;
  A s0 = A(0), s1 = A(0);
  int64_t d = lane;
  for (; d + 32 < D; d += 64) {
    const A a = to_acc(src[d]), b = to_acc(src[d + 32]);
    s0 += a * a;
    s1 += b * b;
  }
  if (d < D) {
    const A a = to_acc(src[d]);
    s0 += a * a;
  }
  const A s = warp_sum(s0 + s1);
  if (lane == 0) out[row] = s;
}

template <typename T>
void launch_sq_norms(const T* x, int64_t rows_x, const T* y, int64_t rows_y, int64_t D, acc_t<T>* out,
                     cudaStream_t stream) {
  const int64_t rows = rows_x + rows_y;
  if (rows == 0) return;
  sq_norms_kernel<T><<<grid_1d(ceil_div(rows, kWarps), "sq_norms_kernel"), kThreads, 0, stream>>>(x, rows_x, y, rows_y,
                                                                                                   D, out);
  check_launch("sq_norms_kernel");
}

// ---- Backward: grad_x = diag(ax) x + W y and grad_y = diag(by) y + W^T x, where
// coef.episode(b) binds the per-episode state once per block and its call operator (q, n)
// returns DistanceGrad {w, ax, by} for one (query, class) pair (math.h).
// A block owns one output tile: kBwdRows rows of grad_x (or grad_y) of episode b and
// kBwdCols columns. It streams the reduction index j (classes for grad_x, queries for
// grad_y) in chunks of kBwdJ: coefficients are computed into shared memory (their
// diagonal sums on the way), the matching rows of the other operand are staged, and
// each warp accumulates a 4 x 4 register tile (4 rows x 4 columns per lane).
constexpr int kBwdRowsPerWarp = 4;
constexpr int kBwdRows = kWarps * kBwdRowsPerWarp;  // 32
constexpr int kBwdColsPerLane = 4;
constexpr int kBwdCols = 32 * kBwdColsPerLane;  // 128
constexpr int kBwdJ = 32;
static_assert(kBwdRows == 32, "coefficient staging maps lanes to the rows of a tile");
static_assert(kBwdJ % kWarps == 0, "coefficient staging maps warps to the reduction chunk");

__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

template <typename T, typename Coef>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Coef coef, const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ gx,
                    T* __restrict__ gy, int Q, int N, int64_t D, int tiles_x, int tiles_y, int dtiles) {
  using A = acc_t<T>;
  __shared__ __align__(16) A cs[kBwdJ][kBwdRows];  // coefficients w of the chunk, [j][row]
  __shared__ __align__(16) A os[kBwdJ][kBwdCols];  // rows j of the other operand, this column tile
  __shared__ A diag_s[kWarps][32];                  // per-warp partial diagonal sums, [warp][row]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t id = blockIdx.x;
  const int dt = static_cast<int>(id % dtiles);
  id /= dtiles;
  const int per_b = tiles_x + tiles_y;
  const int t = static_cast<int>(id % per_b);
  const int64_t b = id / per_b;
  const bool role_y = t >= tiles_x;  // block-uniform: computing grad_y (rows = classes)
  const int row0 = (role_y ? t - tiles_x : t) * kBwdRows;
  const int rows = role_y ? N : Q;
  const int J = role_y ? Q : N;
  const int64_t col0 = static_cast<int64_t>(dt) * kBwdCols;
  const T* self = role_y ? y + b * N * D : x + b * Q * D;
  const T* other = role_y ? x + b * Q * D : y + b * N * D;
  T* out = role_y ? gy + b * N * D : gx + b * Q * D;

  const auto ecoef = coef.episode(b);
  const int my_row0 = row0 + warp * kBwdRowsPerWarp;
  const bool active = my_row0 < rows;  // warp-uniform

  A acc[kBwdRowsPerWarp][kBwdColsPerLane];
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kBwdColsPerLane; ++c) acc[r][c] = A(0);
  A diag_part = A(0);  // for row row0 + lane, over j = warp (mod kWarps)

  for (int j0 = 0; j0 < J; j0 += kBwdJ) {
    // Coefficients: lane -> row, warp -> j (mod kWarps); out-of-range pairs contribute 0.
    {
      const int i = row0 + lane;
#pragma unroll
      for (int k = 0; k < kBwdJ / kWarps; ++k) {
        const int jj = warp + kWarps * k, j = j0 + jj;
        A w = A(0);
        if (i < rows && j < J) {
          const DistanceGrad<A> g = role_y ? ecoef(j, i) : ecoef(i, j);
          w = g.w;
          diag_part += role_y ? g.by : g.ax;
        }
        cs[jj][lane] = w;
      }
    }
    // Other operand: warp -> j (mod kWarps), lanes along the columns (coalesced).
#pragma unroll
    for (int k = 0; k < kBwdJ / kWarps; ++k) {
      const int jj = warp + kWarps * k, j = j0 + jj;
#pragma unroll
      for (int c = 0; c < kBwdColsPerLane; ++c) {
        const int64_t d = col0 + lane + 32 * c;
        os[jj][lane + 32 * c] = (j < J && d < D) ? to_acc(other[static_cast<int64_t>(j) * D + d]) : A(0);
      }
    }
    __syncthreads();
    if (active) {
      const int jn = min(kBwdJ, J - j0);
#pragma unroll 4
      for (int jj = 0; jj < jn; ++jj) {
        A o[kBwdColsPerLane], w[kBwdRowsPerWarp];
#pragma unroll
        for (int c = 0; c < kBwdColsPerLane; ++c) o[c] = os[jj][lane + 32 * c];
        load4(&cs[jj][warp * kBwdRowsPerWarp], w);  // same address for the warp: a broadcast
#pragma unroll
        for (int r = 0; r < kBwdRowsPerWarp; ++r)
#pragma unroll
          for (int c = 0; c < kBwdColsPerLane; ++c) acc[r][c] += w[r] * o[c];
      }
    }
    __syncthreads();
  }

  diag_s[warp][lane] = diag_part;
  __syncthreads();
  if (!active) return;  // no barrier follows
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
    const int i = my_row0 + r;
    if (i >= rows) continue;
    A a = A(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) a += diag_s[w][warp * kBwdRowsPerWarp + r];
#pragma unroll
    for (int c = 0; c < kBwdColsPerLane; ++c) {
      const int64_t d = col0 + lane + 32 * c;
      if (d < D) {
        const int64_t e = static_cast<int64_t>(i) * D + d;
        out[e] = from_acc<T>(acc[r][c] + a * to_acc(self[e]));
      }
    }
  }
}

// Launches backward_kernel over every episode; gx / gy may be null (not computed).
template <typename T, typename Coef>
void launch_backward(const Coef& coef, const T* x, const T* y, T* gx, T* gy, int64_t B, int Q, int N, int64_t D,
                     cudaStream_t stream, const char* name) {
  const int tiles_x = gx != nullptr ? static_cast<int>(ceil_div(Q, kBwdRows)) : 0;
  const int tiles_y = gy != nullptr ? static_cast<int>(ceil_div(N, kBwdRows)) : 0;
  if (B == 0 || D == 0 || tiles_x + tiles_y == 0) return;
  const int64_t dtiles = ceil_div(D, kBwdCols);
  MEDMETA_CHECK(dtiles <= INT_MAX, std::string("feature size too large for ") + name);
  const unsigned grid = grid_1d(B * (tiles_x + tiles_y) * dtiles, name);
  backward_kernel<T, Coef><<<grid, kThreads, 0, stream>>>(coef, x, y, gx, gy, Q, N, D, tiles_x, tiles_y,
                                                          static_cast<int>(dtiles));
  check_launch(name);
}

}  // namespace pairwise

}  // namespace cuda
}  // namespace medmeta
