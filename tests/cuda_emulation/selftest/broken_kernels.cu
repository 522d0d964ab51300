// Kernels with known defects, for the emulator's self-test (selftest.h). They are compiled
// exactly as the project's kernels are (rewrite.py, cuda_emu.h, the sanitizers), so that each
// detection shown here is one the project's kernels get.
#include "selftest.h"

#include "common/cuda.cuh"

namespace selftest {

namespace {

using namespace medmeta::cuda;

constexpr int kSumThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kSumThreads) block_sum_kernel(const T* __restrict__ x, T* __restrict__ out, int n,
                                                                int variant) {
  __shared__ T part[kSumThreads];
  const int tid = threadIdx.x;
  const int last = variant == 2 ? n - 1 : n;
  part[tid] = tid < last ? x[tid] : T(0);
  if (variant != 1) __syncthreads();
  if (tid < 32) {  // warp 0 adds the other warps' values, then reduces
    T v = part[tid] + part[tid + 32] + part[tid + 64] + part[tid + 96];
    v = warp_sum(v);
    if (tid == 0) out[0] = v;
  }
}

__global__ void __launch_bounds__(256) defect_kernel(float* out, int defect) {
  const int tid = threadIdx.x, lane = tid & 31;
  float v = static_cast<float>(tid);
  switch (static_cast<Defect>(defect)) {
    case Defect::DivergentBarrier:
      if (tid < 128) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case Defect::BarrierAfterExit:
      if (tid >= 64) return;
      __syncthreads();
      break;
    case Defect::ShuffleExited:
      if (lane >= 16) return;
      v = warp_sum(v);
      break;
    case Defect::MixedWarpOps:
      if (lane < 16) {
        __syncwarp();
      } else {
        v = __shfl_xor_sync(kFullMask, v, 1);
      }
      break;
    case Defect::PartialMask: v = __shfl_xor_sync(0x0000ffffu, v, 1); break;
    case Defect::Deadlock:
      if (tid == 0) {
        __syncthreads();
      } else {
        v = warp_sum(v);
      }
      break;
    default: break;
  }
  out[tid] = v;
}

__global__ void __launch_bounds__(128) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

__global__ void __launch_bounds__(256) big_shared_kernel(float* out) {
  __shared__ float big[10 * 1024];  // 40 KiB
  extern __shared__ float dyn[];
  big[threadIdx.x] = 1.0f;
  dyn[threadIdx.x] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x] + dyn[threadIdx.x];
}

__global__ void __launch_bounds__(256) shared_overrun_kernel(float* out, int n) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = dyn[n];  // n == the element count: one past the end
}

__global__ void __launch_bounds__(32) misaligned_kernel(const float* x, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(x + 1);  // x is 16-byte aligned: x + 1 is not
  if (threadIdx.x == 0) out[0] = v.x + v.y + v.z + v.w;
}

__global__ void __launch_bounds__(1024) empty_kernel(float* out) {
  if (out != nullptr && threadIdx.x == 0 && blockIdx.x == 0) out[0] = 0.0f;
}

}  // namespace

void block_sum(medmeta::Device dev, const float* x, float* out, int n, Sum variant) {
  DeviceGuard guard(dev.index);
  block_sum_kernel<float><<<1, kSumThreads, 0, stream_of(dev)>>>(x, out, n, static_cast<int>(variant));
  check_launch("block_sum_kernel");
}

void run_defect(medmeta::Device dev, float* out, Defect defect) {
  const cudaStream_t stream = stream_of(dev);
  switch (defect) {
    case Defect::OverLaunchBounds: {
      DeviceGuard guard(dev.index);
      bounded_kernel<<<1, 256, 0, stream>>>(out);
      check_launch("bounded_kernel");
      return;
    }
    case Defect::SharedOverLimit: {
      DeviceGuard guard(dev.index);
      big_shared_kernel<<<1, 256, 16 * 1024, stream>>>(out);
      check_launch("big_shared_kernel");
      return;
    }
    case Defect::DefaultStream: {
      DeviceGuard guard(dev.index);
      empty_kernel<<<1, 32>>>(out);
      check_launch("empty_kernel");
      return;
    }
    case Defect::DeviceNotRestored:
      check(cudaSetDevice(dev.index), "cudaSetDevice");
      empty_kernel<<<1, 32, 0, stream>>>(out);
      check_launch("empty_kernel");
      return;
    case Defect::SharedOutOfBounds: {
      DeviceGuard guard(dev.index);
      shared_overrun_kernel<<<1, 256, 256 * sizeof(float), stream>>>(out, 256);
      check_launch("shared_overrun_kernel");
      return;
    }
    case Defect::MisalignedLoad: {
      DeviceGuard guard(dev.index);
      misaligned_kernel<<<1, 32, 0, stream>>>(out, out);
      check_launch("misaligned_kernel");
      return;
    }
    default: {
      DeviceGuard guard(dev.index);
      defect_kernel<<<1, 256, 0, stream>>>(out, static_cast<int>(defect));
      check_launch("defect_kernel");
    }
  }
}

void launch_config(medmeta::Device dev, unsigned blocks, unsigned threads, std::size_t smem) {
  DeviceGuard guard(dev.index);
  empty_kernel<<<blocks, threads, smem, stream_of(dev)>>>(nullptr);
  check_launch("empty_kernel");
}

}  // namespace selftest
