"""Kill ``medmeta`` commands with SIGKILL and re-run them: ``python kill_driver.py SPEC OUT``.

One process imports torch and medmeta once and runs the ``warm_up`` commands of ``SPEC``
(JSON) itself, then forks a child per command run (a fresh process as far as the command
can tell: its own pid, and newly seeded global numpy and Python RNGs, as a new interpreter
would have). For each job of ``SPEC``:

1. the reference: the command once, uninterrupted (``ref_argv``), counting its atomic
   writes;
2. ``kills`` runs of ``argv`` killed by this process after a seeded random delay in
   ``[0, 0.9 x reference time x share of the run left]``, alternating with ``torn`` runs that
   kill themselves half-way through their k-th atomic write (half the bytes written to the
   temporary file, then SIGKILL), k seeded in ``1..writes of the reference x share left``
   (the share left: from the step in ``last.pt`` for ``train``, else all);
3. a last run of ``argv`` to the end.

After every kill each file under ``watch`` is loaded (:func:`artefacts.check_folder`). The
result (``OUT``, JSON) lists each run: how it ended, the file being written when a torn
run died, and the file checks. The caller compares the last run's outputs with the
reference's.

Job keys: ``name``, ``argv``, ``ref_argv``, ``watch``, ``torn`` (count), ``kills`` (count),
``seed``, ``plots`` (draw the learning-curve plots; off by default, they take most of a
tiny run's time).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import artefacts
import numpy as np
import torch

import medmeta.cli
import medmeta.cli._workflow
import medmeta.cli.adapt
import medmeta.cli.export
import medmeta.cli.train
import medmeta.eval.plots
from medmeta.edge.cli import configure_logging

#: torch's default seed of a fresh process.
TORCH_DEFAULT_SEED = 67280421310721


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _hook_writes(tear_at: int | None, note: Path) -> None:
    """Count the writes into temporary files (``.tmp``); at the ``tear_at``-th write only half
    the bytes, then SIGKILL this process. The count (or the torn file) goes to ``note``."""
    real_write, count = os.write, [0]

    def write(fd: int, data: Any) -> int:
        path = _fd_path(fd)
        if path.endswith(".tmp"):
            count[0] += 1
            note.write_text(json.dumps({"writes": count[0], "file": Path(path).name}))
            if count[0] == tear_at:
                view = memoryview(data).cast("B")
                real_write(fd, view[: max(1, len(view) // 2)])
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.write = write  # type: ignore[assignment]


def _no_plots(*args: Any, **kwargs: Any) -> Any:
    raise ImportError("learning-curve plots are off in the kill driver")


def _fresh_tqdm_lock() -> None:
    """Give this child its own tqdm write lock. tqdm's default lock holds a multiprocessing
    semaphore, which a fork shares with the parent and every other child: a child killed
    while holding it (every bar takes it when created and closed) would leave every later
    child waiting forever (seen in CI). A fresh interpreter, as a real re-run is, has its own."""
    import threading

    from tqdm import std

    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls is std.tqdm or "_lock" in vars(cls):
            cls.set_lock(threading.RLock())


def _child(argv: list[str], log: Path, note: Path, tear_at: int | None, plots: bool) -> None:
    """The command in this forked process; never returns."""
    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        np.random.seed(None)  # noqa: NPY002 - a fresh interpreter's global states
        random.seed()
        torch.manual_seed(TORCH_DEFAULT_SEED)
        _fresh_tqdm_lock()
        if not plots:
            medmeta.eval.plots._figure = _no_plots  # type: ignore[assignment]
            import medmeta.report.seg_figures as seg

            seg.plot_dice_curves = _no_plots  # type: ignore[assignment]
        _hook_writes(tear_at, note)
        code = medmeta.cli.main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str], logs: Path, tag: str, *, tear_at: int | None = None,
         kill_after: float | None = None, plots: bool = False) -> dict[str, Any]:  # fmt: skip
    """Fork a child running ``argv``; kill it after ``kill_after`` s (if still running)."""
    log, note = logs / f"{tag}.log", logs / f"{tag}.writes.json"
    note.unlink(missing_ok=True)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(argv, log, note, tear_at, plots)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif kill_after is not None and time.perf_counter() - t0 >= kill_after:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        else:
            time.sleep(0.002)
    seconds = time.perf_counter() - t0
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    out = {"tag": tag, "seconds": round(seconds, 3), "killed": killed,
           "rc": None if killed else os.waitstatus_to_exitcode(status)}  # fmt: skip
    try:  # a timed kill may land while the child rewrites its note
        out["writes"] = json.loads(note.read_text())
    except (OSError, ValueError):
        pass
    if out["rc"] not in (None, 0):
        out["log_tail"] = log.read_text(errors="replace")[-1500:]
    return out


def _remaining(watch: Path) -> float:
    """The share of a training run still to do (from ``last.pt``); 1 for other commands."""
    last = watch / "last.pt"
    if not last.exists():
        return 1.0
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    return max(0.0, 1.0 - ckpt["step"] / ckpt["config"]["steps"])


def run_job(job: dict[str, Any], logs: Path) -> dict[str, Any]:
    """The reference, the torn and killed runs (alternating; k and the delay drawn over
    what is left of the run), the last run; files checked after each kill."""
    rng = random.Random(job["seed"])
    watch, plots, name = Path(job["watch"]), bool(job.get("plots", False)), job["name"]
    ref = _run(job["ref_argv"], logs, f"{name}-ref", plots=plots)
    n_writes = ref.get("writes", {}).get("writes", 1)
    kinds = ["kill"] * job.get("kills", 0)
    for i in range(job.get("torn", 0)):
        kinds.insert(2 * i + 1, "torn")
    events = []
    for i, kind in enumerate(kinds):
        tag, left = f"{name}-{kind}{i}", _remaining(watch)
        if kind == "torn":
            at: float = rng.randint(1, max(1, round(n_writes * left)))
            event = _run(job["argv"], logs, tag, tear_at=int(at), plots=plots)
        else:
            at = rng.uniform(0.0, 0.9 * ref["seconds"] * max(left, 0.2))
            event = _run(job["argv"], logs, tag, kill_after=at, plots=plots)
        event.update(kind=kind, at=at, left=left, files=artefacts.check_folder(watch),
                     temps=artefacts.temp_files(watch) if watch.exists() else [])  # fmt: skip
        events.append(event)
    final = _run(job["argv"], logs, f"{name}-final", plots=plots)
    final.update(files=artefacts.check_folder(watch), temps=artefacts.temp_files(watch))
    return {"name": name, "ref": ref, "events": events, "final": final}


def _preload(jobs: list[dict[str, Any]]) -> None:
    """Import what the children need once, here (a fork inherits it): the modules the
    commands import lazily, matplotlib when plots are drawn, onnx for exports."""
    import importlib
    import pkgutil

    for package in ("medmeta.cli", "medmeta.algorithms", "medmeta.train", "medmeta.eval",
                    "medmeta.data", "medmeta.nn", "medmeta.report"):  # fmt: skip
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                          package + "."):  # fmt: skip
            if info.name.endswith(("__main__", ".bench", "_launch")):
                continue
            try:
                importlib.import_module(info.name)
            except ImportError:  # optional extras
                pass
    if any(job["argv"][0] == "export" for job in jobs):
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        import medmeta.export.onnx  # noqa: F401
    if any(job.get("plots") for job in jobs):
        from matplotlib.backends import backend_agg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401


def _warm_up(argvs: list[list[str]], logs: Path) -> None:
    """Run each command once here, before any fork: a child then starts warm (data formats
    parsed, kernels and caches set up) instead of paying a first run's costs every time."""
    import contextlib

    for i, argv in enumerate(argvs):
        with open(logs / f"warm-up{i}.log", "w") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                code = medmeta.cli.main(argv)
        if code != 0:
            raise RuntimeError(f"warm-up {argv} failed ({code}): see {logs}/warm-up{i}.log")


def main(spec_path: str, out_path: str) -> int:
    torch.set_num_threads(1)
    configure_logging(False)  # before the warm-up redirects stderr: the children inherit it
    spec = json.loads(Path(spec_path).read_text())
    _preload(spec["jobs"])
    logs = Path(spec["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    _warm_up(spec.get("warm_up", []), logs)
    results = []
    for job in spec["jobs"]:
        results.append(run_job(job, logs))
        Path(out_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
