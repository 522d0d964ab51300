// Host functions of the emulator's self-test kernels (broken_kernels.cu): each launches a
// kernel with a known defect on the caller's device and stream, through the project's own
// launch checks (common/cuda.cuh), so the drivers can show that the defect is detected.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/types.h"

namespace selftest {

enum class Sum {
  Correct,
  MissingBarrier,  // no __syncthreads between the shared-memory writes and the reads
  OffByOne,        // the last element is left out
};
// out[0] = x[0] + ... + x[n-1], one block of 128 threads, n <= 128.
void block_sum(medmeta::Device dev, const float* x, float* out, int n, Sum variant);

enum class Defect {
  DivergentBarrier,  // half the threads wait at one __syncthreads, half at another
  BarrierAfterExit,  // threads 64.. return, the rest then call __syncthreads
  ShuffleExited,     // lanes 16.. return, the rest call warp_sum
  MixedWarpOps,      // lanes 0..15 call __syncwarp while 16..31 shuffle
  PartialMask,       // a shuffle with mask 0x0000ffff
  Deadlock,          // thread 0 waits at __syncthreads while its warp shuffles
  OverLaunchBounds,  // 256 threads for a kernel declared __launch_bounds__(128)
  SharedOverLimit,   // 40 KiB of static and 16 KiB of dynamic shared memory
  DefaultStream,     // launched on stream 0 instead of the caller's
  DeviceNotRestored, // switches to the caller's device without restoring the previous one
  SharedOutOfBounds, // reads dynamic shared memory one element past the end (AddressSanitizer)
  MisalignedLoad,    // a float4 load from an address 4 bytes off (UndefinedBehaviorSanitizer)
};
void run_defect(medmeta::Device dev, float* out, Defect defect);

// A launch of `threads` threads in `blocks` blocks with `smem` bytes of dynamic shared memory,
// checked by cuda::check_launch (which throws on an invalid configuration).
void launch_config(medmeta::Device dev, unsigned blocks, unsigned threads, std::size_t smem);

}  // namespace selftest
