// The CUDA execution model on the CPU, for correctness checks of the project's kernels.
// Force-included (g++ -include) into the sources that rewrite.py produced from csrc/**/*.cu[h].
//
// One host thread per CUDA thread of a block (a pool reused by every block and launch), and
// one thread runs at a time: a thread runs until it reaches a barrier, a warp operation or
// the end of the kernel, then hands over to the next runnable thread. Between two barriers
// the threads of a block run in ascending thread order in one block and in descending order
// in the next (the parity alternates per launch too), so a missing barrier shows as a wrong
// result in one of the two orders instead of passing by luck. Shared memory is filled with a
// poison pattern at the start of every block (0xFF: NaN / -1, or 0x7F: a huge value / index,
// alternating), so reads of shared memory the block did not write show in the results.
//
// __syncthreads is a real block barrier (its callers sleep until every live thread arrives),
// shuffles and __syncwarp are real warp barriers with an exchange buffer. Reported as emulator
// errors (EMU ERROR lines; the checks fail when any was counted): threads meeting at different
// __syncthreads; __syncthreads after other threads of the block exited; a shuffle or
// __syncwarp whose mask names an exited or nonexistent lane; lanes of a warp in different
// warp operations; a shuffle reading a lane that did not take part; partial masks (not
// emulated); a deadlock (nothing runnable while threads wait: found at once, and the launch is
// abandoned); a block over its kernel's __launch_bounds__; more than 48 KiB of static plus
// dynamic shared memory; a launch or memset on another device or stream than the caller's.
// Invalid launch configurations (empty grid or block, over 1024 threads, over 48 KiB of
// dynamic shared memory) set the error cudaGetLastError returns, as on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// CUDA qualifiers: host code now (g++ would warn about the unknown attributes).
#undef __forceinline__
#define __forceinline__ inline
#undef __device__
#define __device__
#undef __global__
#define __global__
#undef __host__
#define __host__
#undef __grid_constant__
#define __grid_constant__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ EMU_ERROR_a_shared_declaration_that_rewrite_py_did_not_convert

namespace emu {

struct Site {
  const char* kernel;  // the kernel expression at the launch, as written
  const char* file;
  int line;
};

struct Config {
  dim3 grid, block;
  std::size_t smem;
  cudaStream_t stream;
};

inline Config config(dim3 grid, dim3 block, std::size_t smem = 0, cudaStream_t stream = nullptr) {
  return {grid, block, smem, stream};
}

struct ThreadState {
  uint3 thread;
  uint3 block;
};
extern thread_local ThreadState t_self;
extern dim3 g_grid, g_block;

// Runs the kernel over the grid (runtime.cpp). `signature` is the launching function's
// __PRETTY_FUNCTION__, which names the kernel with its template arguments.
void run(const Site& site, const char* signature, const Config& cfg, void (*body)(const void*), const void* params);

// Arguments are converted to the kernel's parameter types once, at the launch, as CUDA does;
// every emulated thread then calls the kernel on the same parameter block.
template <auto Kernel, typename... P, typename... A>
void launch_as(void (*)(P...), const Site& site, const Config& cfg, A&&... args) {
  using Params = std::tuple<std::decay_t<P>...>;
  const Params params(std::forward<A>(args)...);
  run(site, __PRETTY_FUNCTION__, cfg,
      [](const void* p) { std::apply([](const auto&... a) { Kernel(a...); }, *static_cast<const Params*>(p)); },
      &params);
}

template <auto Kernel, typename... A> void launch(const Site& site, const Config& cfg, A&&... args) {
  launch_as<Kernel>(Kernel, site, cfg, std::forward<A>(args)...);
}

void kernel_entry(unsigned max_threads);           // first statement of every kernel body
void static_shared(void* storage, std::size_t bytes);  // after every static __shared__ declaration
void* dynamic_shared_base();
template <typename T> T* dynamic_shared() { return static_cast<T*>(dynamic_shared_base()); }

void syncthreads(int line);
void syncwarp(unsigned mask, int line);
enum class Shfl { Idx, Up, Down, Xor };
std::uint64_t shuffle(Shfl kind, unsigned mask, std::uint64_t bits, int arg, int width, int line);

template <typename V> V shuffle_value(Shfl kind, unsigned mask, V v, int arg, int width, int line) {
  static_assert(std::is_trivially_copyable_v<V> && sizeof(V) <= 8, "shuffles move at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  bits = shuffle(kind, mask, bits, arg, width, line);
  V out;
  std::memcpy(&out, &bits, sizeof(V));
  return out;
}

}  // namespace emu

#define EMU_SITE(kernel) (::emu::Site{kernel, __FILE__, __LINE__})
#define threadIdx (static_cast<const uint3&>(::emu::t_self.thread))
#define blockIdx (static_cast<const uint3&>(::emu::t_self.block))
#define blockDim (static_cast<const dim3&>(::emu::g_block))
#define gridDim (static_cast<const dim3&>(::emu::g_grid))
#define warpSize 32
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __syncwarp(...) ::emu::syncwarp(EMU_MASK_OR_FULL(__VA_ARGS__), __LINE__)
#define EMU_MASK_OR_FULL(...) (0xffffffffu __VA_OPT__(&0u) __VA_OPT__(| (__VA_ARGS__)))
#define __shfl_sync(mask, v, lane, ...) \
  ::emu::shuffle_value(::emu::Shfl::Idx, mask, v, lane, EMU_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::emu::shuffle_value(::emu::Shfl::Up, mask, v, delta, EMU_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::emu::shuffle_value(::emu::Shfl::Down, mask, v, delta, EMU_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
  ::emu::shuffle_value(::emu::Shfl::Xor, mask, v, lane_mask, EMU_WIDTH(__VA_ARGS__), __LINE__)
#define EMU_WIDTH(...) (32 __VA_OPT__(*0 + (__VA_ARGS__)))

// Device functions the kernels call that have no host definition in the CUDA headers.
template <typename V> inline V min(V a, V b) { return b < a ? b : a; }
template <typename V> inline V max(V a, V b) { return a < b ? b : a; }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
inline double __longlong_as_double(long long i) {
  double f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline long long __double_as_longlong(double f) {
  long long i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
// One emulated thread runs at a time, so a plain read-modify-write is atomic.
template <typename V> inline V atomicAdd(V* p, V v) {
  const V old = *p;
  *p = old + v;
  return old;
}
