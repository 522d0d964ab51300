"""Builds the project's CUDA kernels for the CPU emulator and checks them against the CPU
kernels (see README.md). Entry point: ``tests/cuda_emulation/run [group]``.

Steps: rewrite ``csrc/**/*.cu[h]`` and ``selftest/*.cu`` (rewrite.py) into a fresh build
folder; compile, ``--jobs`` at a time, the rewritten CUDA sources with ``emu/cuda_emu.h``
force-included, the CPU kernels, the emulator runtime and the check drivers, all under
AddressSanitizer and UndefinedBehaviorSanitizer; run the self-test probes (each must fail);
run the checks in ``--jobs`` shards, one process per CPU; check that every kernel ran in all
four dtypes. The last line is ``cuda-emulation: N comparisons over K kernels ...: PASS`` or
``... FAIL``; the exit status is non-zero on any mismatch, emulator error, sanitizer report,
compile error or kernel left unchecked (2 on bad usage or a missing tool).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS = (
    "all",
    "selftest",
    "distance",
    "protoloss",
    "prototypes",
    "masked_prototypes",
    "inner_update",
)
DTYPES = ("f32", "f64", "f16", "bf16")
CUDA_HEADERS = ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g1"]
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|AddressSanitizer:")
RUN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
# Probes of the self-test: each must make emu_checks fail, with this in its output.
PROBES = {
    "asan": "AddressSanitizer",
    "ubsan": "runtime error:",
    "mismatch": "FAIL probe: off-by-one block_sum",
    "divergent": "EMU ERROR [divergent-barrier]",
}


class HarnessError(Exception):
    """A missing tool or input: exit status 2."""


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder, $CUDA_INCLUDE or else /usr/local/cuda/include, when it
    holds the three headers the kernels need."""
    folder = Path(os.environ.get("CUDA_INCLUDE") or "/usr/local/cuda/include")
    return folder if all((folder / h).is_file() for h in CUDA_HEADERS) else None


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def missing_tools() -> str | None:
    """Why the emulation cannot run here, or None."""
    if compiler() is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
    if cuda_include() is None:
        where = os.environ.get("CUDA_INCLUDE") or "/usr/local/cuda/include"
        return f"no CUDA headers ({', '.join(CUDA_HEADERS)}) in {where} (set CUDA_INCLUDE)"
    return None


@dataclass
class Unit:
    source: Path
    flags: list[str]
    cost: float  # relative compile time, to start the slowest first
    output: Path | None = None  # default: an object file under obj/


@dataclass
class Totals:
    comparisons: int = 0
    failures: int = 0
    emu_errors: int = 0
    cases: int = 0
    launches: int = 0
    blocks: int = 0
    segments: int = 0
    covered: set[tuple[str, str]] = field(default_factory=set)
    worst: dict[str, float] = field(default_factory=dict)


def rewrite(root: Path, build: Path) -> list[tuple[str, str]]:
    """Rewrites the CUDA sources; returns the project's kernels as (name, source path)."""
    for src, out in (
        (root / "csrc", build / "gen"),
        (HERE / "selftest", build / "gen" / "selftest"),
    ):
        done = subprocess.run(
            [sys.executable, str(HERE / "rewrite.py"), str(src), str(out)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or done.stdout.strip())
    kernels = []
    for line in (build / "gen" / "kernels.txt").read_text().splitlines():
        name, path, _ = line.split("\t")
        kernels.append((name, path))
    return kernels


def units(root: Path, build: Path, include: Path) -> tuple[Unit, list[Unit]]:
    """The precompiled emulation header, then the translation units (slowest first)."""
    csrc = root / "csrc"
    emu = HERE / "emu"
    base = [compiler() or "g++", "-c", *SANITIZE]
    # The emulated kernels and the emulator: the sources under test, at -O1 with both
    # sanitizers; cuda_emu.h (with the CUDA headers) is precompiled once for all of them.
    pch = build / "pch" / "emu_pch.h"
    pch.parent.mkdir()
    pch.write_text('#include "cuda_emu.h"\n')
    kernel_flags = [
        *base,
        "-std=c++20",
        "-O1",
        f"-I{build / 'gen'}",
        f"-I{csrc}",
        f"-I{emu}",
        f"-I{HERE / 'selftest'}",
        f"-I{include}",
        "-DMEDMETA_WITH_CUDA=1",
    ]
    header = Unit(pch, [*kernel_flags, "-x", "c++-header"], 0, pch.with_suffix(".h.gch"))
    kernel_flags += ["-include", str(pch), "-Winvalid-pch"]
    # The CPU kernels are the reference and the drivers only move data: -O0 halves their
    # compile time under the sanitizers (the vectorised CPU loops cost minutes at -O1), and
    # one ISA clone of the CPU loops is enough (cpu_prelude.h).
    cpu_flags = [
        *base,
        "-std=c++17",
        "-O0",
        "-include",
        str(HERE / "drivers" / "cpu_prelude.h"),
        f"-I{csrc}",
    ]
    driver_flags = [
        *base,
        "-std=c++20",
        "-O0",
        f"-I{csrc}",
        f"-I{emu}",
        f"-I{HERE / 'selftest'}",
        "-DMEDMETA_WITH_CUDA=1",
    ]
    out = [Unit(p, kernel_flags, 10) for p in sorted((build / "gen").rglob("*.cpp"))]
    out.append(Unit(emu / "runtime.cpp", kernel_flags, 8))
    out += [
        Unit(p, cpu_flags, 10 if "masked" in p.name else 1)
        for p in sorted(csrc.glob("ops/*/*_cpu.cpp"))
    ]
    out.append(Unit(csrc / "common" / "cpu.cpp", cpu_flags, 0.2))
    out += [Unit(p, driver_flags, 3) for p in sorted((HERE / "drivers").glob("*.cpp"))]
    return header, sorted(out, key=lambda u: -u.cost)


def compile_all(
    header: Unit, todo: list[Unit], build: Path, jobs: int, verbose: bool
) -> list[Path]:
    """Compiles the header, then the units that include it, while the others compile beside;
    returns the object files."""
    objs = build / "obj"
    objs.mkdir()

    def one(i: int, unit: Unit) -> tuple[Path, str | None]:
        out = unit.output or objs / f"{i:02d}_{unit.source.stem}.o"
        t0 = time.monotonic()
        done = subprocess.run(
            [*unit.flags, str(unit.source), "-o", str(out)], capture_output=True, text=True
        )
        if verbose:
            print(
                f"cuda-emulation: compiled {unit.source.name} in {time.monotonic() - t0:.1f}s",
                flush=True,
            )
        return (
            out,
            None if done.returncode == 0 else f"compile failed: {unit.source}\n{done.stderr}",
        )

    uses_header = [str(header.source) in unit.flags for unit in todo]
    with ThreadPoolExecutor(jobs) as pool:
        first = pool.submit(one, -1, header)
        futures = {i: pool.submit(one, i, u) for i, u in enumerate(todo) if not uses_header[i]}
        header_error = first.result()[1]
        if header_error is None:
            futures |= {i: pool.submit(one, i, u) for i, u in enumerate(todo) if uses_header[i]}
        results = [futures[i].result() for i in sorted(futures)]
    errors = [e for e in [header_error, *(e for _, e in results)] if e]
    if errors:
        raise RuntimeError("\n".join(errors))
    return [o for o, _ in results]


def link(objs: list[Path], build: Path) -> Path:
    exe = build / "emu_checks"
    cmd = [
        compiler() or "g++",
        "-fsanitize=address,undefined",
        *map(str, objs),
        "-o",
        str(exe),
        "-pthread",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"link failed:\n{done.stderr}")
    return exe


def run_probes(exe: Path) -> list[str]:
    """Each probe must fail with its expected message; returns the problems."""
    env = {**os.environ, **RUN_ENV}
    problems = []
    for name, expected in PROBES.items():
        done = subprocess.run(
            [str(exe), "--probe", name], capture_output=True, text=True, env=env, timeout=120
        )
        output = done.stdout + done.stderr
        if done.returncode == 0 or expected not in output:
            problems.append(
                f"self-test probe '{name}' was not detected (exit status {done.returncode}, "
                f"expected '{expected}' in its output):\n{output[-2000:]}"
            )
    return problems


def parse(output: str, totals: Totals) -> None:
    for line in output.splitlines():
        if line.startswith("RESULT "):
            for key, value in re.findall(r"(\w+)=(\d+)", line):
                setattr(totals, key, getattr(totals, key) + int(value))
        elif line.startswith("COVERED "):
            _, kernel, dtype = line.split()
            totals.covered.add((kernel, dtype))
        elif line.startswith("WORST "):
            _, dtype, ratio = line.split()
            totals.worst[dtype] = max(totals.worst.get(dtype, 0.0), float(ratio))


def run_checks(exe: Path, group: str, jobs: int, verbose: bool) -> tuple[Totals, list[str]]:
    env = {**os.environ, **RUN_ENV}
    extra = ["--verbose"] if verbose else []
    procs = [
        subprocess.Popen(
            [str(exe), "--shard", f"{k}/{jobs}", "--cpu", str(k), *extra, group],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for k in range(jobs)
    ]
    totals, problems = Totals(), []
    for k, proc in enumerate(procs):
        output, _ = proc.communicate()
        parse(output, totals)
        shown = [
            line
            for line in output.splitlines()
            if verbose or not line.startswith(("COVERED ", "WORST ", "RESULT "))
        ]
        if shown:
            print("\n".join(f"[shard {k}] {line}" for line in shown))
        if proc.returncode != 0:
            problems.append(f"shard {k}/{jobs} exited with status {proc.returncode}")
        if "RESULT " not in output:
            problems.append(f"shard {k}/{jobs} did not finish (no RESULT line)")
        if SANITIZER_REPORT.search(output):
            problems.append(f"shard {k}/{jobs}: sanitizer report in its output")
    return totals, problems


def coverage_problems(kernels: list[tuple[str, str]], group: str, totals: Totals) -> list[str]:
    """Every kernel of the group must have run in each of the four dtypes."""
    if group == "selftest":
        return []
    problems = []
    for name, path in kernels:
        op = Path(path).parts[1] if path.startswith("ops/") else ""
        if group != "all" and op != group and not (group == "protoloss" and op == "distance"):
            continue
        if group == "protoloss" and op == "distance" and name == "distance_forward_kernel":
            continue
        missing = [dt for dt in DTYPES if (name, dt) not in totals.covered]
        if missing:
            problems.append(f"kernel {name} ({path}) never ran in {', '.join(missing)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tests/cuda_emulation/run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("group", nargs="?", default="all", choices=GROUPS)
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="compile jobs and check shards",
    )
    parser.add_argument(
        "--root", type=Path, default=HERE.parents[1], help="project checkout (holds csrc/)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the build folder")
    parser.add_argument("--verbose", action="store_true", help="print every case with its time")
    args = parser.parse_args(argv)
    # Its binaries carry their own sanitizers; a runtime preloaded into the Python that started
    # it (.ci/sanitize) would only slow the compilers down.
    os.environ.pop("LD_PRELOAD", None)

    start = time.monotonic()
    why = missing_tools()
    if why:
        print(f"cuda-emulation: cannot run: {why}", file=sys.stderr)
        return 2
    root = args.root.resolve()
    if not (root / "csrc" / "ops").is_dir():
        print(f"cuda-emulation: {root} has no csrc/ops", file=sys.stderr)
        return 2
    jobs = max(1, args.jobs)
    build = Path(tempfile.mkdtemp(prefix="cuda-emulation."))
    try:
        try:
            kernels = rewrite(root, build)
            header, todo = units(root, build, cuda_include() or Path())
            objs = compile_all(header, todo, build, jobs, args.verbose)
            exe = link(objs, build)
        except RuntimeError as err:
            print(f"cuda-emulation: {err}", file=sys.stderr)
            print("cuda-emulation: build failed: FAIL")
            return 1
        built = time.monotonic() - start
        problems = run_probes(exe) if args.group in ("all", "selftest") else []
        totals, shard_problems = run_checks(exe, args.group, jobs, args.verbose)
        problems += shard_problems + coverage_problems(kernels, args.group, totals)
    finally:
        if args.keep:
            print(f"cuda-emulation: build folder {build}")
        else:
            shutil.rmtree(build, ignore_errors=True)
    for p in problems:
        print(f"cuda-emulation: {p}")
    names = {name for name, _ in kernels}
    ran = {k for k, _ in totals.covered if k in names}
    pairs = sum(1 for k, _ in totals.covered if k in names)
    status = "PASS" if not problems and totals.failures == 0 and totals.emu_errors == 0 else "FAIL"
    worst = ", ".join(f"{dt} {totals.worst.get(dt, 0.0):.2f}" for dt in DTYPES)
    print(
        f"cuda-emulation: {totals.cases} cases, {totals.launches} launches, {totals.blocks} blocks, "
        f"{totals.segments} thread segments; worst error/tolerance {worst}; "
        f"build {built:.0f}s, checks {time.monotonic() - start - built:.0f}s ({jobs} jobs)"
    )
    print(
        f"cuda-emulation: {totals.comparisons} comparisons over {len(ran)} kernels "
        f"({pairs} kernel/dtype pairs), {totals.failures} failures, "
        f"{totals.emu_errors} emulator errors: {status}"
    )
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
