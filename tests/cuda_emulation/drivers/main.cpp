// Entry point of the emulated-CUDA checks (the harness, ../run, builds and runs it).
//
// usage: emu_checks [--shard K/N] [--cpu I] [--only TEXT] [--verbose] [--list] GROUP...
//        emu_checks --probe NAME
// GROUP: all, selftest or an op (distance, protoloss, prototypes, masked_prototypes,
// inner_update). Cases are numbered in registration order over the selected groups; shard K
// of N runs those with number % N == K; --only keeps the cases whose name contains TEXT. The
// last lines are machine-readable:
//   COVERED <kernel> <dtype>     (one per kernel instantiation that ran)
//   WORST <dtype> <ratio>        (largest error / tolerance among the passing comparisons)
//   RESULT comparisons=.. failures=.. emu_errors=.. cases=.. launches=.. blocks=.. segments=..
// Exit status: 0 when every comparison passed and the emulator reported no error, 1 otherwise,
// 2 on bad usage. A probe runs one defect that must fail the process (the harness's self-test).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <string>
#include <vector>

#include "check.h"

void register_distance();
void register_protoloss();
void register_prototypes();
void register_masked_prototypes();
void register_inner_update();
void register_selftest();
int run_probe(const std::string& name);

namespace {

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--shard K/N] [--cpu I] [--only TEXT] [--verbose] [--list] "
               "[all|selftest|distance|protoloss|prototypes|masked_prototypes|inner_update]...\n"
               "       %s --probe NAME\n",
               argv0, argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int shard = 0, shards = 1, cpu = -1;
  bool verbose = false, list = false;
  std::string only;
  std::set<std::string> groups;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shard" && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d/%d", &shard, &shards) != 2 || shards < 1 || shard < 0 || shard >= shards)
        return usage(argv[0]);
    } else if (a == "--cpu" && i + 1 < argc) {
      cpu = std::atoi(argv[++i]);
    } else if (a == "--probe" && i + 1 < argc) {
      return run_probe(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--verbose") {
      verbose = true;
    } else if (a == "--list") {
      list = true;
    } else if (!a.empty() && a[0] != '-') {
      groups.insert(a);
    } else {
      return usage(argv[0]);
    }
  }
  if (groups.empty()) groups.insert("all");
  if (cpu >= 0) emu::pin_to_cpu(cpu);

  register_selftest();
  register_distance();
  register_protoloss();
  register_prototypes();
  register_masked_prototypes();
  register_inner_update();

  std::set<std::string> known = {"all"};
  for (const auto& c : check::registry()) known.insert(c.group);
  for (const auto& g : groups)
    if (known.count(g) == 0) {
      std::fprintf(stderr, "emu_checks: unknown group '%s'\n", g.c_str());
      return usage(argv[0]);
    }

  check::Stats& st = check::stats();
  long number = 0, ran = 0;
  for (const auto& c : check::registry()) {
    if (groups.count("all") == 0 && groups.count(c.group) == 0) continue;
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    if (number++ % shards != shard) continue;
    if (list) {
      std::printf("%s %s\n", c.group.c_str(), c.name.c_str());
      continue;
    }
    ++ran;
    const long failures = st.failures, errors = emu::counters().errors, segments = emu::counters().segments;
    const auto t0 = std::chrono::steady_clock::now();
    emu::begin_case();
    try {
      c.run();
    } catch (const std::exception& e) {
      std::printf("FAIL %s %s: threw %s\n", c.group.c_str(), c.name.c_str(), e.what());
      ++st.failures;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool bad = st.failures != failures || emu::counters().errors != errors;
    if (bad) std::printf("in case %s %s\n", c.group.c_str(), c.name.c_str());
    if (verbose)
      std::printf("case %-10s %-60s %7.2fs %9ld segments%s\n", c.group.c_str(), c.name.c_str(), s,
                  emu::counters().segments - segments, bad ? "  FAILED" : "");
    std::fflush(stdout);
  }
  if (list) return 0;
  emu::shutdown();

  for (const auto& line : emu::coverage()) {
    const std::size_t tab = line.find('\t');
    std::printf("COVERED %s %s\n", line.substr(0, tab).c_str(), line.substr(tab + 1).c_str());
  }
  for (const check::DType dt : check::kDtypes)
    std::printf("WORST %s %.3f\n", check::short_name(dt), st.worst[static_cast<int>(dt)]);
  const emu::Counters n = emu::counters();
  std::printf("RESULT comparisons=%ld failures=%ld emu_errors=%ld cases=%ld launches=%ld blocks=%ld segments=%ld\n",
              st.comparisons, st.failures, n.errors, ran, n.launches, n.blocks, n.segments);
  return st.failures == 0 && n.errors == 0 ? 0 : 1;
}
