// CUDA helpers of the medmeta native core: the device guard, launch checks, dtype
// dispatch and element conversions, warp/block reductions. The tiled pairwise building
// blocks of the distance family live beside their op (ops/distance/pairwise_cuda.cuh).
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

}  // namespace cuda
}  // namespace medmeta
