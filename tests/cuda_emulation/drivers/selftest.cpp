// The emulator's self-test: each defect of selftest/broken_kernels.cu must be detected, and a
// correct kernel must pass in both thread orders. The detected errors are taken off the error
// count (they were provoked), so a passing self-test leaves the run clean. The probes are
// defects that must fail the whole process (a sanitizer abort, a counted mismatch or emulator
// error); the harness runs each in its own process and checks that it fails.
#include <cmath>
#include <cstdio>
#include <string>

#include "check.h"
#include "selftest.h"

using namespace check;
using selftest::Defect;
using selftest::Sum;

namespace {

constexpr int kDevice = 1;

// block_sum of 100 values under a thread order: the result and the float64 reference.
std::pair<double, double> run_sum(Sum variant, emu::Order order) {
  Rng rng("selftest block_sum");
  const Vec x = rounded(DType::Float32, rng.uniform(100));
  double ref = 0;
  for (const double v : x) ref += v;
  Buffer xb(DType::Float32, x), out(DType::Float32, 1);
  emu::set_order(order);
  on_device(kDevice, [&] {
    selftest::block_sum(caller(kDevice), static_cast<const float*>(xb.data()), static_cast<float*>(out.data()), 100,
                        variant);
  });
  emu::set_order(emu::Order::Alternating);
  return {out.values()[0], ref};
}

bool close(double got, double ref) { return std::fabs(got - ref) <= 1e-4 * (1 + std::fabs(ref)); }

void detects(const char* what, Defect defect, const char* kind) {
  Buffer out(DType::Float32, 256);
  emu::set_quiet(true);
  const std::string how = outcome([&] {
    on_device(kDevice, [&] { selftest::run_defect(caller(kDevice), static_cast<float*>(out.data()), defect); });
  });
  emu::set_quiet(false);
  const long n = emu::take_errors(kind);
  expect(std::string("selftest: ") + what + " is reported as " + kind, n > 0,
         "not reported (the call " + how + ")");
}

void register_cases() {
  add("selftest", "a correct block sum passes in both thread orders", [] {
    for (const emu::Order order : {emu::Order::Ascending, emu::Order::Descending}) {
      const auto [got, ref] = run_sum(Sum::Correct, order);
      expect("selftest: correct block_sum", close(got, ref), std::to_string(got) + " vs " + std::to_string(ref));
    }
  });
  add("selftest", "a wrong result (off by one) is a mismatch", [] {
    const auto [got, ref] = run_sum(Sum::OffByOne, emu::Order::Ascending);
    expect("selftest: an off-by-one block_sum differs from the reference", !close(got, ref));
  });
  add("selftest", "a missing __syncthreads is a mismatch in one of the orders", [] {
    const auto [a, ref] = run_sum(Sum::MissingBarrier, emu::Order::Ascending);
    const auto [d, ref2] = run_sum(Sum::MissingBarrier, emu::Order::Descending);
    expect("selftest: a block_sum without its barrier differs from the reference", !close(a, ref) || !close(d, ref2));
  });
  add("selftest", "barrier, warp and launch defects are reported", [] {
    detects("threads at different __syncthreads", Defect::DivergentBarrier, "divergent-barrier");
    detects("__syncthreads after threads exited", Defect::BarrierAfterExit, "barrier-after-exit");
    detects("warp_sum over exited lanes", Defect::ShuffleExited, "warp-exited-lane");
    emu::take_errors("shuffle-absent-lane");
    detects("__syncwarp and a shuffle in one warp", Defect::MixedWarpOps, "warp-mixed-ops");
    detects("a shuffle with a partial mask", Defect::PartialMask, "partial-mask");
    detects("a barrier/shuffle deadlock", Defect::Deadlock, "deadlock");
    detects("a block over __launch_bounds__", Defect::OverLaunchBounds, "launch-bounds");
    detects("56 KiB of shared memory", Defect::SharedOverLimit, "shared-memory-limit");
    detects("a launch on the default stream", Defect::DefaultStream, "wrong-device-or-stream");
    detects("a device switch without restore", Defect::DeviceNotRestored, "device-not-restored");
  });
  add("selftest", "invalid launch configurations raise, as on a GPU", [] {
    struct Bad {
      const char* what;
      unsigned blocks, threads;
      std::size_t smem;
    };
    const Bad bad[] = {{"an empty grid", 0, 32, 0},
                       {"an empty block", 1, 0, 0},
                       {"1025 threads", 1, 1025, 0},
                       {"48 KiB + 1 of dynamic shared memory", 1, 32, 48 * 1024 + 1}};
    for (const Bad& b : bad) {
      const std::string how =
          outcome([&] { on_device(kDevice, [&] { selftest::launch_config(caller(kDevice), b.blocks, b.threads, b.smem); }); });
      expect(std::string("selftest: a launch with ") + b.what + " raises", how.find("invalid configuration") != std::string::npos,
             "the call " + how);
    }
    const std::string ok =
        outcome([&] { on_device(kDevice, [&] { selftest::launch_config(caller(kDevice), 2, 1024, 48 * 1024); }); });
    expect("selftest: 1024 threads with 48 KiB of dynamic shared memory launch", ok == "ok", "the call " + ok);
  });
}

}  // namespace

void register_selftest() { register_cases(); }

// Probes: each must make the process fail (see main.cpp).
int run_probe(const std::string& name) {
  Buffer out(DType::Float32, 256);
  auto defect = [&](Defect d) {
    on_device(kDevice, [&] { selftest::run_defect(caller(kDevice), static_cast<float*>(out.data()), d); });
  };
  if (name == "asan") {
    defect(Defect::SharedOutOfBounds);  // AddressSanitizer aborts
  } else if (name == "ubsan") {
    defect(Defect::MisalignedLoad);  // UndefinedBehaviorSanitizer aborts
  } else if (name == "mismatch") {
    const auto [got, ref] = run_sum(Sum::OffByOne, emu::Order::Ascending);
    compare("probe: off-by-one block_sum", {got}, {ref}, DType::Float32);
  } else if (name == "divergent") {
    defect(Defect::DivergentBarrier);
  } else {
    std::fprintf(stderr, "emu_checks: unknown probe '%s' (asan, ubsan, mismatch, divergent)\n", name.c_str());
    return 2;
  }
  const emu::Counters n = emu::counters();
  std::printf("RESULT comparisons=%ld failures=%ld emu_errors=%ld\n", stats().comparisons, stats().failures, n.errors);
  emu::shutdown();
  return stats().failures == 0 && n.errors == 0 ? 0 : 1;
}
