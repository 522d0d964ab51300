"""Device-agnostic timing, agreement checks, environment capture and reporting.

Nothing here prints: the suites' CLIs own the progress and summary output.

Timing model: every formulation of one benchmark point is warmed up, calibrated
(calls per sample so a sample is long enough to time precisely, samples so the whole
measurement takes about ``target_s``), then sampled round-robin with the other
formulations of the same point, so that background load (other processes on a shared
machine) hits all of them alike. A sample is timed with ``time.perf_counter`` on the CPU
and with CUDA events (after a ``torch.cuda.synchronize``) on a GPU; the reported figure
is the median per-call time with its interquartile range.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# glibc's allocator hands large freed blocks back to the OS, so repeated calls page-fault
# their buffers again; these values (see /work/shared/peers/README.md) keep them mapped.
MALLOC_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "4000000000",
    "MALLOC_TRIM_THRESHOLD_": "4000000000",
}

# Peak memory bandwidth by GPU name fragment (bytes/s), for the bandwidth fraction.
PEAK_BANDWIDTH: dict[str, float] = {
    "H100": 3.35e12,  # H100 SXM HBM3 (the PCIe card is 2.0e12)
    "H200": 4.8e12,
    "A100": 2.0e12,
}

KIND_OURS = "medmeta"  # the op under test, default settings (value checks on)
KIND_OURS_VARIANT = "medmeta-variant"  # e.g. value checks off: reported, never a baseline
KIND_TORCH = "torch"  # general pure-PyTorch formulation: candidate for "best torch"
KIND_TORCH_STRUCTURED = "torch-structured"  # pure torch but assumes an input layout
KIND_PEER = "peer"  # another library (KeOps, easyfsl)


# --------------------------------------------------------------------------- timing


class Clock:
    """Times blocks of calls on one device: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        """Wait for all queued device work."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_block(self, fn: Callable[[], Any], calls: int) -> float:
        """Seconds taken by ``calls`` back-to-back calls of ``fn`` (device work included)."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - t0


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to measure."""

    target_s: float = 0.2  # wall time of one formulation's measurement (0.1-0.3 s)
    warmup_s: float = 0.02  # minimum warm-up time per formulation...
    warmup_calls: int = 3  # ...and minimum warm-up calls
    min_block_s: float = 2e-4  # a timed sample holds enough calls to last this long
    min_samples: int = 5
    max_samples: int = 400
    rounds: int = 3  # round-robin passes over the formulations


@dataclass(frozen=True)
class Measurement:
    """Per-call time statistics of one formulation at one point."""

    median_s: float
    q1_s: float
    q3_s: float
    samples: int
    calls_per_sample: int

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s


def _warm_up(fn: Callable[[], Any], clock: Clock, cfg: TimingConfig) -> float:
    """Run ``fn`` until warm; returns the fastest single-call time seen (seconds)."""
    best, spent, calls = math.inf, 0.0, 0
    while calls < cfg.warmup_calls or spent < cfg.warmup_s:
        t = clock.time_block(fn, 1)
        best, spent, calls = min(best, t), spent + t, calls + 1
        if spent > 10 * cfg.target_s:  # a very slow call: enough warm-up
            break
    return max(best, 1e-9)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure_group(
    fns: Mapping[str, Callable[[], Any]], clock: Clock, cfg: TimingConfig = TimingConfig()
) -> dict[str, Measurement]:
    """Time every function of ``fns`` (all computing the same thing) round-robin.

    Each function is warmed up and calibrated separately, then the samples of all of
    them are interleaved over ``cfg.rounds`` rounds.
    """
    plan: dict[str, tuple[int, int]] = {}
    for name, fn in fns.items():
        per_call = _warm_up(fn, clock, cfg)
        calls = max(1, math.ceil(cfg.min_block_s / per_call))
        samples = round(cfg.target_s / (calls * per_call))
        plan[name] = (calls, min(cfg.max_samples, max(cfg.min_samples, samples)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(cfg.rounds):
            for name, fn in fns.items():
                calls, samples = plan[name]
                share = samples * (r + 1) // cfg.rounds - samples * r // cfg.rounds
                for _ in range(share):
                    times[name].append(clock.time_block(fn, calls) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for name, ts in times.items():
        q1, med, q3 = _quartiles(ts)
        out[name] = Measurement(med, q1, q3, len(ts), plan[name][0])
    return out


# --------------------------------------------------------------------------- contention


def _busy_cpu_seconds() -> float | None:
    """Machine-wide busy CPU seconds so far (all processes; steal counted as busy)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Contention:
    """CPUs' worth of work done by *other* processes between :meth:`start` and :meth:`stop`.

    A shared machine (other engineers compiling) distorts multi-threaded timings badly;
    this measures it so noisy points can be flagged or re-measured. None where /proc/stat
    is unavailable.
    """

    def __init__(self) -> None:
        self._t0 = self._busy0 = self._own0 = None

    def start(self) -> Contention:
        self._t0, self._busy0, self._own0 = (
            time.perf_counter(),
            _busy_cpu_seconds(),
            _own_cpu_seconds(),
        )
        return self

    def stop(self) -> float | None:
        busy1 = _busy_cpu_seconds()
        if busy1 is None or self._busy0 is None or self._t0 is None or self._own0 is None:
            return None
        wall = time.perf_counter() - self._t0
        others = (busy1 - self._busy0) - (_own_cpu_seconds() - self._own0)
        return max(0.0, others / max(wall, 1e-6))


def wait_until_quiet(threshold: float, max_wait_s: float, probe_s: float = 0.25) -> float:
    """Sleep until other processes use less than ``threshold`` CPUs (or ``max_wait_s``
    passes); returns the seconds waited."""
    waited = 0.0
    while True:
        c = Contention().start()
        time.sleep(probe_s)
        load = c.stop()
        if load is None or load < threshold or waited >= max_wait_s:
            return waited
        time.sleep(1.0)
        waited += 1.0 + probe_s


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> float:
    """Measured device-memory copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    clock = Clock(device)
    cfg = TimingConfig(target_s=0.2, min_samples=5)
    m = measure_group({"copy": lambda: dst.copy_(src)}, clock, cfg)["copy"]
    return 2 * src.numel() * src.element_size() / m.median_s


# --------------------------------------------------------------------------- agreement


def flatten_tensors(value: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) tuple/list of tensors, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_tensors(v)]
    raise TypeError(f"expected tensors, got {type(value).__name__}")


def reference_error(
    reference: Any, got: Any, tol: float, atol_abs: Sequence[float | None] | None = None
) -> tuple[str | None, float | None]:
    """Compare ``got`` with a (float64) ``reference``: per output tensor, the largest
    |got - reference| must not exceed ``tol`` times the reference's largest entry, or
    ``atol_abs[i]`` where given and not None (e.g. an accuracy where one query may flip).

    Returns why it does not match (None when it does) and the worst relative error
    (largest |difference| / largest |reference entry|) over the outputs compared
    relatively (None when there is none or the shapes differ).
    """
    a, b = flatten_tensors(reference), flatten_tensors(got)
    if len(a) != len(b):
        return f"{len(b)} outputs instead of {len(a)}", None
    worst: float | None = None
    why: str | None = None
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if tuple(x.shape) != tuple(y.shape):
            return f"output {i}: shape {list(y.shape)} instead of {list(x.shape)}", None
        x64, y64 = x.detach().double(), y.detach().double()
        scale = float(x64.abs().max()) if x64.numel() else 0.0
        diff = (y64 - x64).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        if not math.isfinite(err) and diff.numel():  # NaN or inf where the reference has none
            err = math.inf
        fixed = atol_abs[i] if atol_abs is not None else None
        if fixed is not None:
            allowed = fixed
        else:
            allowed = tol * scale + 1e-12
            rel = err / scale if scale else err
            worst = rel if worst is None else max(worst, rel)
        if not err <= allowed and why is None:
            bound = f"{fixed:.3g} absolute" if fixed is not None else f"{tol:.1e} × {scale:.3g}"
            why = f"output {i}: max abs error {err:.3g} > tolerance {bound}"
    return why, worst


# --------------------------------------------------------------------------- environment


def malloc_env_missing() -> dict[str, str]:
    """The :data:`MALLOC_ENV` settings absent from this process's environment."""
    return {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}


def ensure_malloc_env(command: Sequence[str]) -> None:
    """Re-execute ``command`` (``[python, -m, ...]``) in place of this process with the
    :data:`MALLOC_ENV` settings that are missing; return when none is (see README)."""
    missing = malloc_env_missing()
    if not missing:
        return
    settings = " ".join(f"{k}={v}" for k, v in missing.items())
    print(f"re-running with {settings} (glibc allocator, see benchmarks/README.md)", flush=True)
    os.execve(command[0], list(command), {**os.environ, **missing})


def module_command(prog: str, module: str) -> list[str]:
    """``[python, -m, ...]`` that starts the CLI called ``prog`` (``python -m benchmarks
    ops``), or ``module`` when ``prog`` is not a ``python ...`` command line."""
    words = prog.split()
    entry = words[1:] if words and words[0].startswith("python") else ["-m", module]
    return [sys.executable, *entry]


def start_run(
    device: str,
    prog: str,
    module: str,
    argv: Sequence[str],
    no_malloc_env: bool,
    out: Path | None = None,
    allow_dirty: bool = False,
) -> tuple[torch.device | None, list[str]]:
    """A suite's device and the command line that reproduces the run, or (None, []) with
    the reason printed: CUDA asked for and absent, or results for ``out`` refused from a
    dirty tree (:func:`dirty_refusal`). CPU runs are re-executed with the allocator
    settings first (:func:`ensure_malloc_env`) unless ``no_malloc_env``."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return None, []
    refusal = None if out is None else dirty_refusal(out, allow_dirty)
    if refusal:
        print(refusal, file=sys.stderr)
        return None, []
    command = [*module_command(prog, module), *argv]
    if dev.type == "cpu" and not no_malloc_env:
        ensure_malloc_env(command)
    return dev, command


def protocol_environment(
    prog: str, module: str, argv: Sequence[str], out: Path, allow_dirty: bool, threads: int
) -> dict[str, Any] | None:
    """What every accuracy suite (the protocols) does before it runs: refuse to write
    ``out`` = benchmarks/results from a dirty tree (printed; None returned), set the torch
    threads, and record the environment with the command that reproduces the run."""
    refusal = dirty_refusal(out, allow_dirty)
    if refusal:
        print(refusal, file=sys.stderr)
        return None
    command = [*module_command(prog, module), *argv]
    torch.set_num_threads(threads)
    return environment(torch.device("cpu"), threads, command, {}, allow_dirty)


def short_error(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters) for records."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def command_line(env: Mapping[str, Any]) -> str:
    """The recorded command of a run with its allocator / path environment, for reports."""
    prefix = " ".join(
        f"{k}={v}" for k, v in env["env"].items() if k.startswith(("MALLOC_", "PYTHONPATH"))
    )
    return (prefix + " " if prefix else "") + " ".join(env["command"])


def replot(path: Path, write_outputs: Callable[[dict[str, Any], Path], list[Path]]) -> int:
    """Rewrite the .md/.png of a suite's JSON results (``--replot``)."""
    payload = json.loads(path.read_text())
    for written in write_outputs(payload, path.with_suffix("")):
        print(f"wrote {written}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(repo: Path, *args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() if strip else out.stdout


# --------------------------------------------------------------------------- provenance

REPO = Path(__file__).resolve().parent.parent
#: Where the reference results live: only written from a clean tree (or ``--allow-dirty``).
RESULTS_DIR = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class GitState:
    """The commit of a checkout and what differs from it."""

    commit: str | None
    dirty_paths: tuple[str, ...] | None  # None: git could not tell (no git, not a checkout)

    @property
    def dirty(self) -> bool:
        """Uncommitted changes to tracked files or untracked files that are not ignored
        (or unknown: a tree git cannot describe is not a clean commit)."""
        return self.dirty_paths is None or bool(self.dirty_paths)


def git_state(repo: Path | None = None) -> GitState:
    """HEAD and ``git status --porcelain`` (tracked changes, untracked non-ignored files)."""
    repo = REPO if repo is None else repo
    status = _git(
        repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=all", strip=False
    )
    paths = None if status is None else tuple(ln[3:] for ln in status.splitlines() if ln.strip())
    return GitState(_git(repo, "rev-parse", "HEAD"), paths)


def writes_results(out: Path) -> bool:
    """Whether ``out`` is :data:`RESULTS_DIR` or inside it."""
    return Path(out).resolve().is_relative_to(RESULTS_DIR.resolve())


def dirty_refusal(out: Path, allow_dirty: bool, state: GitState | None = None) -> str | None:
    """Why results may not go to ``out`` (None when they may): results in
    :data:`RESULTS_DIR` come from a clean commit unless ``allow_dirty``, and are then
    marked dirty (:func:`environment`, :func:`provenance_lines`)."""
    if allow_dirty or not writes_results(out):
        return None
    state = git_state() if state is None else state
    if not state.dirty:
        return None
    if state.dirty_paths is None:
        what = "git cannot tell whether this tree is a clean commit"
    else:
        n = len(state.dirty_paths)
        shown = ", ".join(state.dirty_paths[:5]) + (", ..." if n > 5 else "")
        what = f"{n} uncommitted or untracked file{'s' if n > 1 else ''}: {shown}"
    return (
        f"refusing to write results into {RESULTS_DIR} from a dirty tree ({what}). Commit "
        "first, write elsewhere with --out DIR, or pass --allow-dirty (the results are then "
        "marked dirty)."
    )


def git_fields(allow_dirty: bool, state: GitState | None = None) -> dict[str, Any]:
    """The provenance fields of a results file's environment."""
    state = git_state() if state is None else state
    paths = state.dirty_paths
    return {
        "git_commit": state.commit,
        "git_dirty": state.dirty,
        "git_dirty_files": None if paths is None else len(paths),
        "git_dirty_paths": None if paths is None else list(paths[:50]),
        "allow_dirty": bool(allow_dirty),
    }


def is_dirty(env: Mapping[str, Any]) -> bool:
    """Whether a recorded run was made from a dirty tree (files written before the
    ``git_dirty`` field: any dirty file counted)."""
    if "git_dirty" in env:
        return bool(env["git_dirty"])
    return bool(env.get("git_dirty_files"))


def provenance_lines(env: Mapping[str, Any]) -> list[str]:
    """Markdown lines that say when, from which commit and with which command a results
    file was made; a dirty tree is stated in bold."""
    commit = env.get("git_commit") or "unknown"
    lines = [
        f"- Made {env.get('date_utc', '?')} from git commit `{commit}`"
        + (" (**dirty tree**)" if is_dirty(env) else " (clean tree)")
        + f" with `{command_line(env)}`"
    ]
    if is_dirty(env):
        n, paths = env.get("git_dirty_files"), env.get("git_dirty_paths") or []
        shown = ", ".join(f"`{p}`" for p in paths[:8]) + (", ..." if len(paths) > 8 else "")
        lines.append(
            f"- **DIRTY TREE: not a reference result.** {n if n is not None else 'unknown'} "
            "uncommitted or untracked files when it ran"
            + (f" ({shown})" if shown else "")
            + ("; written with --allow-dirty" if env.get("allow_dirty") else "")
            + "."
        )
    return lines


def _file_digest(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
    return {
        "path": str(path),
        "sha256_16": hashlib.sha256(data).hexdigest()[:16],
        "mtime_utc": mtime.isoformat(timespec="seconds"),
    }


def environment(
    device: torch.device,
    threads: int,
    command: Sequence[str],
    extra: Mapping[str, Any],
    allow_dirty: bool = False,
) -> dict[str, Any]:
    """What a result depends on: hardware, versions, settings, the exact command, the git
    commit and whether the tree was dirty (:func:`git_fields`)."""
    import medmeta
    import medmeta.ops

    native = sorted(Path(medmeta.__file__).parent.glob("_C*.so"))
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command),
        "device_type": device.type,
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
        ),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "medmeta": getattr(medmeta, "__version__", "unknown"),
        "medmeta_native_library": _file_digest(native[0]) if native else None,
        **git_fields(allow_dirty),
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(
                ("MALLOC_", "OMP_", "MKL_", "KMP_", "MEDMETA_", "CUDA_VISIBLE", "PYTHONPATH")
            )
        },
        "load_average_start": list(os.getloadavg()),
        "backend_info": medmeta.ops.backend_info(torch.empty(0, device=device)),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["cuda"] = {
            "torch_cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sm_count": props.multi_processor_count,
            "driver": _nvidia_driver(),
        }
    env.update(extra)
    return env


def gpu_not_measured() -> str:
    """Why a CPU run leaves the GPU targets unmeasured, as it is on this machine."""
    if torch.cuda.is_available():
        return "not measured: this run was on CPU; run with --device cuda"
    return "not measured: no GPU on this machine"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def peak_bandwidth(device_name: str) -> float | None:
    """Nominal peak memory bandwidth (bytes/s) of a known GPU, else None."""
    for key, bw in PEAK_BANDWIDTH.items():
        if key in device_name:
            return bw
    return None


# --------------------------------------------------------------------------- results


@dataclass
class Record:
    """One (op, pass, shape, formulation) measurement."""

    op: str
    pass_: str
    series: str
    x: int
    shape: dict[str, Any]
    formulation: str
    kind: str
    status: str  # "ok", "disagrees: ...", "not available: ...", "error: ..."
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    iqr_s: float | None = None
    samples: int | None = None
    calls_per_sample: int | None = None
    bytes: int | None = None  # minimal bytes moved by one call (model, see the suite)
    gbps: float | None = None  # bytes / median time, 1e9 B/s
    ratio_vs_medmeta: float | None = None  # this time / medmeta's (>1: medmeta faster)
    others_cpu: float | None = None  # CPUs used by other processes while this point ran
    ref_error: float | None = None  # max |output - float64 reference| / max |reference|
    ref_tol: float | None = None  # the tolerance ref_error was held to

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


@dataclass
class Point:
    """One (op, pass, series, x): medmeta against the best general torch formulation."""

    op: str
    pass_: str
    series: str
    x: int
    shape: dict[str, Any]
    medmeta_s: float
    medmeta_q1_s: float
    medmeta_q3_s: float
    best_torch: str | None
    best_torch_s: float | None
    best_torch_q1_s: float | None
    best_torch_q3_s: float | None
    speedup: float | None  # best torch time / medmeta time (>1: medmeta faster)
    clearly_slower: bool  # medmeta's first quartile above the best torch's third
    ratios: dict[str, float] = field(default_factory=dict)  # formulation -> t / t_medmeta
    medmeta_gbps: float | None = None
    others_cpu: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


def finish_records(records: list[Record]) -> None:
    """Fill ``ratio_vs_medmeta`` of a point's records from its medmeta record."""
    ours = {
        (r.op, r.pass_, r.series, r.x): r.median_s
        for r in records
        if r.kind == KIND_OURS and r.status == "ok"
    }
    for r in records:
        t = ours.get((r.op, r.pass_, r.series, r.x))
        if t and r.median_s:
            r.ratio_vs_medmeta = r.median_s / t


def points_of(records: Iterable[Record]) -> list[Point]:
    """Group records into points (in first-seen order) and pick the best torch formulation."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault((r.op, r.pass_, r.series, r.x), []).append(r)
    points = []
    for (op, pass_, series, x), rs in groups.items():
        ours = next((r for r in rs if r.kind == KIND_OURS and r.status == "ok"), None)
        if ours is None:
            continue
        torch_ok = [r for r in rs if r.kind == KIND_TORCH and r.status == "ok"]
        best = min(torch_ok, key=lambda r: r.median_s) if torch_ok else None
        points.append(
            Point(
                op=op,
                pass_=pass_,
                series=series,
                x=x,
                shape=ours.shape,
                medmeta_s=ours.median_s,
                medmeta_q1_s=ours.q1_s,
                medmeta_q3_s=ours.q3_s,
                best_torch=best.formulation if best else None,
                best_torch_s=best.median_s if best else None,
                best_torch_q1_s=best.q1_s if best else None,
                best_torch_q3_s=best.q3_s if best else None,
                speedup=best.median_s / ours.median_s if best else None,
                clearly_slower=bool(best and ours.q1_s > best.q3_s),
                ratios={
                    r.formulation: r.ratio_vs_medmeta
                    for r in rs
                    if r.kind != KIND_OURS and r.ratio_vs_medmeta is not None
                },
                medmeta_gbps=ours.gbps,
                others_cpu=ours.others_cpu,
            )
        )
    return points


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(points: Sequence[Point]) -> list[dict[str, Any]]:
    """Per (op, pass): worst and median speedup over the best torch formulation, and the
    worst/median ratio against every other formulation."""
    by_key: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        if p.speedup is not None:
            by_key.setdefault((p.op, p.pass_), []).append(p)
    out = []
    for (op, pass_), ps in by_key.items():
        worst = min(ps, key=lambda p: p.speedup)
        names = sorted({n for p in ps for n in p.ratios})
        per_formulation = {}
        for n in names:
            vals = [p.ratios[n] for p in ps if n in p.ratios]
            per_formulation[n] = {
                "points": len(vals),
                "worst": min(vals),
                "median": statistics.median(vals),
                "geomean": _geomean(vals),
            }
        out.append(
            {
                "op": op,
                "pass": pass_,
                "points": len(ps),
                "worst_speedup": worst.speedup,
                "worst_at": {"series": worst.series, "x": worst.x, "shape": worst.shape},
                "worst_best_torch": worst.best_torch,
                "median_speedup": statistics.median(p.speedup for p in ps),
                "geomean_speedup": _geomean([p.speedup for p in ps]),
                "slower_points": sum(p.speedup < 1 for p in ps),
                "clearly_slower_points": sum(p.clearly_slower for p in ps),
                "best_torch_counts": _counts(p.best_torch for p in ps),
                "vs_formulation": per_formulation,
            }
        )
    return out


def _counts(names: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        if n is not None:
            out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON (non-finite floats as null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    write_text(path, json.dumps(clean(dict(payload)), indent=1) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a
    rename): an interrupted run never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_results(
    out: Path, stem: str, report: Mapping[str, Any], markdown: Callable[[Any], str]
) -> None:
    """The accuracy suites' last step: ``out/<stem>.json`` and ``out/<stem>.md``, and the
    Markdown on stdout."""
    text = markdown(report)
    write_json(out / f"{stem}.json", report)
    write_text(out / f"{stem}.md", text)
    print(text)


# --------------------------------------------------------------------------- plot


def plot_speedups(
    points: Sequence[Point],
    path: Path,
    title: str,
    x_labels: Mapping[str, str],
    panel_order: Sequence[tuple[str, str]],
) -> None:
    """One panel per (op, pass): medmeta's speedup over the best torch formulation against
    the sweep variable, one line per series, with a reference line at 1×."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [k for k in panel_order if any((p.op, p.pass_) == k for p in points)]
    ncols = 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.6 * nrows + 0.8), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (op, pass_) in zip(axes.flat, panels, strict=False):
        ps = [p for p in points if p.op == op and p.pass_ == pass_ and p.speedup]
        series = list(dict.fromkeys(p.series for p in ps))
        all_y = [p.speedup for p in ps]
        for i, s in enumerate(series):
            sp = sorted((p for p in ps if p.series == s), key=lambda p: p.x)
            ax.plot(
                [p.x for p in sp],
                [p.speedup for p in sp],
                marker="osD^v<>ph*"[i % 10],
                linestyle="-" if i < 10 else "--",
                label=s,
            )
        ax.axhline(1.0, color="black", linewidth=1.2)
        ax.axhspan(1e-3, 1.0, color="tab:red", alpha=0.06, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_yscale("log")
        lo, hi = min([*all_y, 0.8]), max([*all_y, 1.25])
        ax.set_ylim(lo / 1.3, hi * 1.3)
        _speedup_ticks(ax, lo / 1.3, hi * 1.3)
        if ps:
            worst = min(ps, key=lambda p: p.speedup)
            ax.text(
                0.01,
                0.02,
                f"worst {worst.speedup:.2f}× vs {worst.best_torch} ({worst.series}, x={worst.x})",
                transform=ax.transAxes,
                fontsize=7,
                color="dimgray",
            )
        ax.set_title(f"{op} — {pass_}", fontsize=11)
        ax.set_xlabel(x_labels.get(op, "size"))
        ax.set_ylabel("speedup vs best torch (×)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.8)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _speedup_ticks(ax: Any, lo: float, hi: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    candidates = [0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 30, 50, 100, 200, 500]
    ticks = [t for t in candidates if lo <= t <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))


# --------------------------------------------------------------------------- markdown


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_shape(shape: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
