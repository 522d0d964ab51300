// What the check drivers see of the emulator (runtime.cpp): the caller's device and stream,
// error and work counters, kernel coverage and the thread order. No CUDA headers, so the
// drivers compile fast; they reach the kernels through the ops' host functions (csrc/ops/*/<op>.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace emu {

// Emulated devices: 0 has 132 multiprocessors, 1 has 1 and 2 has 4 (masked_prototypes picks
// its forward kernel from the count; the project caches it per device).
constexpr int kDevices = 3;

// The device and stream of the op calls that follow (the project's Device{index, stream}):
// every launch and memset must use them, and each call must leave the current device as it
// found it (checked by check_device_restored()).
void expect_caller(int device, std::uintptr_t stream);
void check_device_restored(const char* what);  // reports unless the current device is 0
void set_current_device(int device);

enum class Order { Alternating, Ascending, Descending };
void set_order(Order order);  // thread order within a block (default: alternating per block)
// Restarts the alternation: the first block of a case's first launch runs ascending, so a case
// sees the same schedule whichever cases ran before it (in any shard).
void begin_case();

struct Counters {
  long errors, launches, blocks, segments;
};
Counters counters();
// Errors of one kind (e.g. "divergent-barrier") reported since the last call; they are then
// no longer counted as failures (the self-tests provoke them on purpose).
long take_errors(const std::string& kind);
void set_quiet(bool quiet);  // count errors without printing them (provoked ones)
// "kernel<TAB>dtype" for every kernel instantiation that ran at least one block.
std::vector<std::string> coverage();

void pin_to_cpu(int index);  // the index-th CPU this process may run on (modulo their count)
void shutdown();             // joins the worker threads

}  // namespace emu
