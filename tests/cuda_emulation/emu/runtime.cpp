// The emulator's scheduler, barriers, shared memory and the CUDA runtime calls the project's
// host code makes (see cuda_emu.h for the model and control.h for the drivers' side).
//
// Scheduling: every CUDA thread of a block is a host thread of a pool, and exactly one of them
// runs at a time. The running thread hands over at a barrier, a warp operation or its exit by
// opening the gate (a futex word) of the next thread of the run queue and sleeping on its own;
// a completed barrier appends its waiters to the queue in the block's thread order. Every
// hand-over is a release/acquire pair, so the emulated threads see each other's writes as after
// a barrier, and the scheduler's state needs no lock. An empty queue while threads wait is a
// deadlock: it is reported and the waiting threads unwind (emu::Abort) so the checks go on.
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "control.h"
#include "cuda_emu.h"

namespace emu {

thread_local ThreadState t_self;
dim3 g_grid, g_block;

namespace {

constexpr std::size_t kSharedLimit = 48 * 1024;  // per block, without the opt-in attribute
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kHost = -1;
const int kSmCount[kDevices] = {132, 1, 4};

struct Abort {};  // unwinds the threads of a deadlocked block

// ---- Gates: a futex word per thread; gate_pass() wakes its sleeper, gate_wait() sleeps until passed.
struct alignas(64) Gate {
  std::atomic<int> open{0};
};

void gate_wait(Gate& g) {
  while (g.open.load(std::memory_order_acquire) == 0)
    syscall(SYS_futex, reinterpret_cast<int*>(&g.open), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
  g.open.store(0, std::memory_order_relaxed);
}

void gate_pass(Gate& g) {
  g.open.store(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<int*>(&g.open), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

// ---- Block state
enum class Wait : unsigned char { Runnable, Barrier, Warp, Exited };
enum WarpOp : int { kSyncwarp = 0, kShflIdx, kShflUp, kShflDown, kShflXor };
const char* const kWarpOpName[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                   "__shfl_xor_sync"};

struct WarpState {
  int lanes = 0, live = 0, arrived = 0, phase = 0;
  std::uint32_t took_part[2] = {0, 0};  // lanes that wrote the slot of the last op of each parity
  std::uint64_t slot[2][32] = {};
  int op[32] = {};
};

struct BlockState {
  int nt = 0, live = 0, arrived = 0;
  unsigned index = 0;
  bool descending = false, abort = false;
  std::vector<Wait> wait;
  std::vector<int> line;  // where each waiting thread waits
  std::vector<WarpState> warps;
  std::vector<int> ring;  // run queue (each thread at most once)
  std::size_t head = 0, count = 0;

  void push(int t) {
    ring[(head + count) % ring.size()] = t;
    ++count;
  }
  int pop() {
    const int t = ring[head];
    head = (head + 1) % ring.size();
    --count;
    return t;
  }
  // Appends the threads in state `w` (all of them, or those of one warp) in the block's order.
  void release(Wait w, int first, int last) {
    for (int k = 0; k < last - first; ++k) {
      const int t = descending ? last - 1 - k : first + k;
      if (wait[t] == w) {
        wait[t] = Wait::Runnable;
        push(t);
      }
    }
  }
};

struct LaunchState {
  Site site{"", "", 0};
  const char* signature = "";
  std::string kernel, dtype;  // from the signature
  void (*body)(const void*) = nullptr;
  const void* params = nullptr;
  unsigned char* dyn = nullptr;
  std::size_t dyn_bytes = 0, static_bytes = 0;
  std::vector<std::pair<void*, std::size_t>> statics;
  std::vector<unsigned long> static_epoch;
  unsigned long epoch = 0;  // blocks run so far, all launches
  unsigned char poison = 0xFF;
  bool entered = false, shared_reported = false, active = false;
};

struct Worker {
  Gate gate;
  pthread_t thread{};
  int id = 0;
};

// ---- Global state (touched only by the thread that holds the baton, or the host between blocks)
BlockState B;
LaunchState L;
std::vector<std::unique_ptr<Worker>> g_pool;  // never reallocated (reserved): see ensure_pool
thread_local Worker* t_worker = nullptr;       // the emulated thread's own worker
Gate g_host_gate;
std::atomic<bool> g_shutdown{false};
std::atomic<long> g_segments{0};
std::atomic<bool> g_in_launch{false};
std::atomic<long> g_launch_serial{0};
long g_launches = 0, g_blocks = 0, g_case_launches = 0;
Order g_order = Order::Alternating;

int g_device = 0;
int g_caller_device = 0;
std::uintptr_t g_caller_stream = 0;
cudaError_t g_last_error = cudaSuccess;

std::map<std::string, long> g_errors;  // kind -> count not yet taken
std::map<std::string, int> g_printed;  // kind -> lines printed
std::set<std::pair<std::string, std::string>> g_coverage;

// "medmeta::{anonymous}::distance_forward_kernel<float, 8>" -> ("distance_forward_kernel", "f32")
void parse_kernel(const char* signature, std::string& kernel, std::string& dtype) {
  const std::string s(signature);
  std::size_t p = s.find("Kernel = ");
  if (p == std::string::npos) {
    kernel = L.site.kernel;
    dtype = "?";
    return;
  }
  p += 9;
  std::size_t e = p;
  for (int depth = 0; e < s.size(); ++e) {
    if (s[e] == '<') ++depth;
    if (s[e] == '>') --depth;
    if (depth == 0 && (s[e] == ';' || s[e] == ']')) break;
  }
  std::string full = s.substr(p, e - p);
  if (!full.empty() && full[0] == '&') full.erase(0, 1);
  const std::size_t lt = full.find('<');
  std::string base = full.substr(0, lt);
  const std::size_t colon = base.rfind("::");
  kernel = colon == std::string::npos ? base : base.substr(colon + 2);
  dtype = "-";
  if (lt != std::string::npos) {
    std::size_t a = lt + 1, b = a;
    for (int depth = 0; b < full.size(); ++b) {
      if (full[b] == '<') ++depth;
      if (full[b] == '>' && depth-- == 0) break;
      if (full[b] == ',' && depth == 0) break;
    }
    const std::string first = full.substr(a, b - a);
    dtype = first == "float" ? "f32" : first == "double" ? "f64" : first == "__half" ? "f16"
          : first == "__nv_bfloat16" ? "bf16" : first;
  }
}

bool g_quiet = false;

void report(const char* kind, const std::string& what) {
  ++g_errors[kind];
  if (g_quiet) return;
  int& printed = g_printed[kind];
  if (printed >= 5) return;
  ++printed;
  if (L.active) {
    std::fprintf(stderr, "EMU ERROR [%s]: %s (kernel %s<%s> launched at %s:%d, block %u, thread %u)\n", kind,
                 what.c_str(), L.kernel.c_str(), L.dtype.c_str(), L.site.file, L.site.line, B.index,
                 t_self.thread.x);
  } else {
    std::fprintf(stderr, "EMU ERROR [%s]: %s\n", kind, what.c_str());
  }
  if (printed == 5) std::fprintf(stderr, "EMU ERROR [%s]: further reports of this kind are counted only\n", kind);
}

// ---- Scheduling
int self_id() { return static_cast<int>(t_self.thread.x); }

void deadlock() {
  std::map<std::pair<int, int>, int> where;  // (kind, line) -> threads
  for (int t = 0; t < B.nt; ++t)
    if (B.wait[t] == Wait::Barrier || B.wait[t] == Wait::Warp) ++where[{B.wait[t] == Wait::Barrier, B.line[t]}];
  std::string what = "deadlock: no thread can run;";
  for (const auto& [key, n] : where)
    what += " " + std::to_string(n) + (key.first ? " at __syncthreads" : " at a warp operation") + " (line " +
            std::to_string(key.second) + ")";
  report("deadlock", what + "; the launch is abandoned");
  B.abort = true;
  for (int t = 0; t < B.nt; ++t)
    if (B.wait[t] != Wait::Exited) {
      B.wait[t] = Wait::Runnable;
      B.push(t);
    }
}

int next_thread() {
  if (B.count == 0) {
    if (B.live == 0) return kHost;
    deadlock();
  }
  return B.pop();
}

void pass_to(int next) { gate_pass(next == kHost ? g_host_gate : g_pool[next]->gate); }

// The running thread stops here until it is scheduled again.
void block_here() {
  const int self = self_id();
  const int next = next_thread();
  g_segments.fetch_add(1, std::memory_order_relaxed);
  if (next != self) {
    pass_to(next);
    gate_wait(t_worker->gate);  // not g_pool: the host may be growing it once the baton is passed
  }
  if (B.abort) throw Abort{};
}

void complete_barrier() {
  int first = -1, other = -1;
  for (int t = 0; t < B.nt; ++t) {
    if (B.wait[t] != Wait::Barrier) continue;
    if (first < 0) first = B.line[t];
    else if (B.line[t] != first && other < 0) other = B.line[t];
  }
  if (other >= 0)
    report("divergent-barrier", "threads of the block meet at different __syncthreads (lines " +
                                    std::to_string(first) + " and " + std::to_string(other) + ")");
  if (B.live < B.nt)
    report("barrier-after-exit", "__syncthreads (line " + std::to_string(first) + ") reached after " +
                                     std::to_string(B.nt - B.live) + " threads of the block exited");
  B.arrived = 0;
  B.release(Wait::Barrier, 0, B.nt);
}

void complete_warp(int w) {
  WarpState& W = B.warps[w];
  std::uint32_t part = 0;
  int first = -1, line = 0;
  bool mixed = false;
  for (int l = 0; l < W.lanes; ++l) {
    const int t = w * 32 + l;
    if (B.wait[t] != Wait::Warp) continue;
    part |= 1u << l;
    if (first < 0) {
      first = W.op[l];
      line = B.line[t];
    } else if (W.op[l] != first) {
      mixed = true;
    }
  }
  if (mixed) report("warp-mixed-ops", "lanes of warp " + std::to_string(w) + " are in different warp operations");
  if (part != kFullMask)
    report("warp-exited-lane", std::string(kWarpOpName[first]) + " (line " + std::to_string(line) +
                                   ") with a full mask while lanes of warp " + std::to_string(w) +
                                   (W.lanes < 32 ? " do not exist" : " have exited"));
  W.took_part[W.phase] = part;
  W.phase ^= 1;
  W.arrived = 0;
  B.release(Wait::Warp, w * 32, w * 32 + W.lanes);
}

std::uint64_t warp_op(int op, unsigned mask, std::uint64_t bits, int src, int line) {
  const int t = self_id(), w = t / 32, lane = t % 32;
  WarpState& W = B.warps[w];
  if (mask != kFullMask)
    report("partial-mask", std::string(kWarpOpName[op]) + " (line " + std::to_string(line) +
                               ") with a partial mask: not emulated, run as a full-mask operation");
  const int ph = W.phase;
  W.slot[ph][lane] = bits;
  W.op[lane] = op;
  B.wait[t] = Wait::Warp;
  B.line[t] = line;
  if (++W.arrived == W.live) complete_warp(w);
  block_here();
  if (op == kSyncwarp) return 0;
  if (src < 0 || src >= 32 || ((W.took_part[ph] >> src) & 1u) == 0) {
    report("shuffle-absent-lane", std::string(kWarpOpName[op]) + " (line " + std::to_string(line) +
                                      ") reads lane " + std::to_string(src) + ", which did not take part");
    return ~std::uint64_t(0);  // all-ones: NaN for floating-point values
  }
  return W.slot[ph][src];
}

// ---- Workers
void thread_exit(int t) {
  B.wait[t] = Wait::Exited;
  --B.live;
  WarpState& W = B.warps[t / 32];
  --W.live;
  if (!B.abort) {
    if (W.arrived > 0 && W.arrived == W.live) complete_warp(t / 32);
    if (B.arrived > 0 && B.arrived == B.live) complete_barrier();
  }
  g_segments.fetch_add(1, std::memory_order_relaxed);
  pass_to(next_thread());
}

void* worker_main(void* arg) {
  t_worker = static_cast<Worker*>(arg);
  const int id = t_worker->id;
  for (;;) {
    gate_wait(t_worker->gate);
    if (g_shutdown.load()) return nullptr;
    t_self.thread = make_uint3(id, 0, 0);
    t_self.block = make_uint3(B.index, 0, 0);
    if (!B.abort) {
      try {
        L.body(L.params);
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        report("kernel-exception", std::string("the kernel threw: ") + e.what());
      }
    }
    thread_exit(id);
  }
}

void ensure_pool(int n) {
  g_pool.reserve(1024);  // the most threads a block has: the vector never moves
  while (static_cast<int>(g_pool.size()) < n) {
    const int id = static_cast<int>(g_pool.size());
    g_pool.push_back(std::make_unique<Worker>());
    g_pool.back()->id = id;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    if (pthread_create(&g_pool.back()->thread, &attr, worker_main, g_pool.back().get()) != 0) {
      std::fprintf(stderr, "EMU FATAL: cannot create emulated thread %d\n", id);
      std::_Exit(3);
    }
    pthread_attr_destroy(&attr);
  }
}

// Ends the process when one launch runs longer than CUDA_EMU_TIMEOUT_S seconds (default 120;
// the longest launch of the checks takes a few seconds): an endless loop in a kernel, with or
// without barriers in it.
void watchdog() {
  const char* env = std::getenv("CUDA_EMU_TIMEOUT_S");
  const long limit = env != nullptr ? std::atol(env) : 120;
  long seen = -1, same = 0;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const long now = g_launch_serial.load();
    if (now != seen || !g_in_launch.load()) {
      seen = now;
      same = 0;
    } else if (++same >= limit) {
      std::fprintf(stderr, "EMU ERROR [timeout]: a launch of %s has run for %lds (an endless loop in the kernel?)\n",
                   L.kernel.c_str(), same);
      std::fflush(stdout);
      std::_Exit(3);
    }
  }
}

bool valid_config(const Config& c) {
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  return c.grid.x > 0 && c.grid.y > 0 && c.grid.z > 0 && c.block.x > 0 && c.block.y > 0 && c.block.z > 0 &&
         c.block.x <= 1024 && c.block.y <= 1024 && c.block.z <= 64 && threads <= 1024 &&
         c.grid.x <= static_cast<unsigned>(INT_MAX) && c.grid.y <= 65535 && c.grid.z <= 65535 &&
         c.smem <= kSharedLimit;
}

void check_stream(const char* what, cudaStream_t stream) {
  const std::uintptr_t s = reinterpret_cast<std::uintptr_t>(stream);
  if (g_device != g_caller_device || s != g_caller_stream)
    report("wrong-device-or-stream", std::string(what) + " on device " + std::to_string(g_device) + " stream " +
                                         std::to_string(s) + ", the caller's are device " +
                                         std::to_string(g_caller_device) + " stream " +
                                         std::to_string(g_caller_stream));
}

}  // namespace

// ---- Kernel-side entry points (cuda_emu.h)
void run(const Site& site, const char* signature, const Config& cfg, void (*body)(const void*), const void* params) {
  static std::once_flag started;
  std::call_once(started, [] { std::thread(watchdog).detach(); });
  ++g_launches;
  ++g_case_launches;
  L.site = site;
  L.signature = signature;
  parse_kernel(signature, L.kernel, L.dtype);
  check_stream("launch", cfg.stream);
  if (!valid_config(cfg)) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (cfg.grid.y != 1 || cfg.grid.z != 1 || cfg.block.y != 1 || cfg.block.z != 1) {
    report("not-emulated", "a 2-D or 3-D launch");
    return;
  }
  g_coverage.insert({L.kernel, L.dtype});
  const int nt = static_cast<int>(cfg.block.x);
  ensure_pool(nt);
  g_grid = cfg.grid;
  g_block = cfg.block;
  L.body = body;
  L.params = params;
  L.dyn_bytes = cfg.smem;
  L.dyn = new (std::align_val_t(256)) unsigned char[cfg.smem];  // exact size: ASan sees overruns
  L.statics.clear();
  L.static_epoch.clear();
  L.static_bytes = 0;
  L.entered = L.shared_reported = false;
  L.active = true;
  ++g_launch_serial;
  g_in_launch = true;
  B.nt = nt;
  B.wait.assign(nt, Wait::Runnable);
  B.line.assign(nt, 0);
  B.ring.assign(nt, 0);
  B.warps.assign((nt + 31) / 32, WarpState{});
  B.abort = false;
  for (unsigned bx = 0; bx < cfg.grid.x && !B.abort; ++bx) {
    ++L.epoch;
    B.index = bx;
    B.descending = g_order == Order::Descending || (g_order == Order::Alternating && ((g_case_launches + bx) % 2 == 0));
    B.live = nt;
    B.arrived = 0;
    B.head = B.count = 0;
    std::fill(B.wait.begin(), B.wait.end(), Wait::Runnable);
    for (int w = 0; w < static_cast<int>(B.warps.size()); ++w) {
      WarpState& W = B.warps[w];
      W.lanes = W.live = std::min(32, nt - 32 * w);
      W.arrived = W.phase = 0;
      W.took_part[0] = W.took_part[1] = 0;
    }
    for (int k = 0; k < nt; ++k) B.push(B.descending ? nt - 1 - k : k);
    L.poison = (L.epoch & 1) ? 0xFF : 0x7F;
    std::memset(L.dyn, L.poison, L.dyn_bytes);
    pass_to(B.pop());
    gate_wait(g_host_gate);
    ++g_blocks;
  }
  L.active = false;
  g_in_launch = false;
  ::operator delete[](L.dyn, std::align_val_t(256));
  L.dyn = nullptr;
}

void kernel_entry(unsigned max_threads) {
  if (L.entered) return;
  L.entered = true;
  if (max_threads > 0 && g_block.x > max_threads)
    report("launch-bounds", "a block of " + std::to_string(g_block.x) + " threads exceeds __launch_bounds__(" +
                                std::to_string(max_threads) + ")");
}

void static_shared(void* storage, std::size_t bytes) {
  std::size_t i = 0;
  while (i < L.statics.size() && L.statics[i].first != storage) ++i;
  if (i == L.statics.size()) {
    L.statics.emplace_back(storage, bytes);
    L.static_epoch.push_back(0);
    L.static_bytes += bytes;
    if (!L.shared_reported && L.static_bytes + L.dyn_bytes > kSharedLimit) {
      L.shared_reported = true;
      report("shared-memory-limit", std::to_string(L.static_bytes) + " bytes of static and " +
                                        std::to_string(L.dyn_bytes) + " of dynamic shared memory exceed 48 KiB");
    }
  }
  if (L.static_epoch[i] != L.epoch) {  // first touch in this block: poison
    L.static_epoch[i] = L.epoch;
    std::memset(storage, L.poison, bytes);
  }
}

void* dynamic_shared_base() { return L.dyn; }

void syncthreads(int line) {
  const int t = self_id();
  B.wait[t] = Wait::Barrier;
  B.line[t] = line;
  if (++B.arrived == B.live) complete_barrier();
  block_here();
}

void syncwarp(unsigned mask, int line) { warp_op(kSyncwarp, mask, 0, 0, line); }

std::uint64_t shuffle(Shfl kind, unsigned mask, std::uint64_t bits, int arg, int width, int line) {
  const int lane = self_id() % 32;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    report("bad-width", "shuffle width " + std::to_string(width) + " (line " + std::to_string(line) + ")");
    width = 32;
  }
  const int group = lane / width * width;
  int src = lane;
  int op = kShflIdx;
  switch (kind) {
    case Shfl::Idx: src = group + ((arg % width) + width) % width; break;
    case Shfl::Up:
      op = kShflUp;
      src = lane - arg >= group ? lane - arg : lane;
      break;
    case Shfl::Down:
      op = kShflDown;
      src = lane + arg < group + width ? lane + arg : lane;
      break;
    case Shfl::Xor:
      op = kShflXor;
      src = lane ^ arg;
      if (src / width > lane / width) src = lane;  // a later group: the thread's own value
      break;
  }
  return warp_op(op, mask, bits, src, line);
}

// ---- Driver side (control.h)
void expect_caller(int device, std::uintptr_t stream) {
  g_caller_device = device;
  g_caller_stream = stream;
}

void check_device_restored(const char* what) {
  if (g_device != 0)
    report("device-not-restored", std::string(what) + " left device " + std::to_string(g_device) +
                                      " current (the caller's was 0)");
  g_device = 0;
}

void set_current_device(int device) { g_device = device; }
void set_order(Order order) { g_order = order; }
void begin_case() { g_case_launches = 0; }
void set_quiet(bool quiet) { g_quiet = quiet; }

Counters counters() {
  long errors = 0;
  for (const auto& [kind, n] : g_errors) errors += n;
  return {errors, g_launches, g_blocks, g_segments.load()};
}

long take_errors(const std::string& kind) {
  const auto it = g_errors.find(kind);
  if (it == g_errors.end()) return 0;
  const long n = it->second;
  g_errors.erase(it);
  g_printed.erase(kind);
  return n;
}

std::vector<std::string> coverage() {
  std::vector<std::string> out;
  for (const auto& [kernel, dtype] : g_coverage) out.push_back(kernel + "\t" + dtype);
  return out;
}

void pin_to_cpu(int index) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.empty()) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpus[static_cast<std::size_t>(index) % cpus.size()], &one);
  sched_setaffinity(0, sizeof one, &one);  // before the pool exists: the workers inherit it
}

void shutdown() {
  g_shutdown = true;
  for (auto& w : g_pool) gate_pass(w->gate);
  for (auto& w : g_pool) pthread_join(w->thread, nullptr);
  g_pool.clear();
}

}  // namespace emu

// ---- The CUDA runtime calls of the project's host code.
extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = emu::kDevices;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = emu::g_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emu::kDevices) return cudaErrorInvalidDevice;
  emu::g_device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= emu::kDevices) return cudaErrorInvalidDevice;
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = emu::kSmCount[device];
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return emu::g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "unknown error";
  }
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  emu::check_stream("cudaMemsetAsync", stream);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

}  // extern "C"
