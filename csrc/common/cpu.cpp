// The thread count of the CPU kernels (common/cpu.h): set from Python to follow
// torch.get_num_threads(); 0 means OpenMP's default.
#include "common/cpu.h"

#include <atomic>

namespace medmeta {

namespace {
std::atomic<int> g_threads{0};
}

int cpu_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
#if defined(MEDMETA_WITH_OPENMP)
  return n > 0 ? n : omp_get_max_threads();
#else
  return n > 0 ? n : 1;
#endif
}

void set_cpu_num_threads(int n) { g_threads.store(n, std::memory_order_relaxed); }

}  // namespace medmeta
