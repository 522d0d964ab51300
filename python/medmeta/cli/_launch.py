"""``--nproc N``: run a ``medmeta`` command as N processes under ``torchrun``.

The parent runs (and waits for) the documented ``torchrun`` line::

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m medmeta.cli._launch train --data ... --out runs/x

``--standalone`` starts a rendezvous on a free local port; each process gets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, from which
:func:`medmeta.train.meta_fit` and :func:`medmeta.eval.evaluate` join the process group
themselves (gloo on CPU, NCCL with one GPU per process). The children run the same command
without ``--nproc``; :func:`child_main` silences their standard output except rank 0's, so
results are printed once (errors and logs of every rank still reach stderr).
``torchrun --standalone --nproc-per-node N -m medmeta train ...`` works as well.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from medmeta.edge.cli.errors import UsageError

__all__ = [
    "child_main",
    "is_main_process",
    "relaunch_under_torchrun",
    "should_relaunch",
    "strip_nproc",
    "torchrun_command",
    "under_torchrun",
]

#: The module each torchrun process starts (:func:`child_main`).
CHILD_MODULE = "medmeta.cli._launch"


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (it sets ``LOCAL_RANK`` and
    ``WORLD_SIZE`` for every worker)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Whether this process writes a command's files and prints its results: always
    without torchrun, rank 0 under it (``RANK``)."""
    return os.environ.get("RANK", "0") == "0"


def should_relaunch(nproc: int | None) -> bool:
    """``--nproc`` asks for several processes and this is not already one of them."""
    return nproc is not None and nproc > 1 and not under_torchrun()


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what the children run)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The ``torchrun`` command line running ``medmeta <argv>`` as ``nproc`` processes."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", CHILD_MODULE, *strip_nproc(argv),
    ]  # fmt: skip


def relaunch_under_torchrun(argv: Sequence[str], nproc: int) -> int:
    """Run ``medmeta <argv>`` (e.g. ``["train", "--data", ...]``) as ``nproc`` processes
    under ``torchrun`` and wait for them; returns torchrun's exit status (non-zero when a
    process failed; torchrun then stops the others).

    Each process gets ``OMP_NUM_THREADS`` = CPUs / ``nproc`` (at least 1) unless it is set.

    Raises:
        UsageError: ``nproc`` below 1, or already under torchrun.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"--nproc: expected an integer >= 1, got {nproc!r}")
    if under_torchrun():
        raise UsageError("--nproc: this process already runs under torchrun; leave --nproc out")
    command = torchrun_command(argv, nproc)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print(f"starting {nproc} processes: {shlex.join(command)}", file=sys.stderr, flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def child_main(argv: Sequence[str]) -> int:
    """One torchrun process: ``medmeta <argv>``, standard output kept for rank 0 only."""
    from medmeta.cli import main

    if not is_main_process():
        sys.stdout = open(os.devnull, "w")  # kept open for the life of the process
    return main(list(argv))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
