"""Local processes of the deployment engine: free loopback ports, starting a Flower
executable with its output in a log file, waiting for a port, and stopping everything
started (the process, its process group and any descendant it left, by process id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["descendants", "executable", "free_port", "start", "stop", "tail", "wait_for_port"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """The Flower command ``name`` of this Python environment."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    import shutil

    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH; "
                                "pip install medmeta[federated]")  # fmt: skip
    return found


def start(
    command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (process group), stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                start_new_session=True)  # fmt: skip


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; ``RuntimeError`` if ``process``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before "
                               f"listening on port {port}")  # fmt: skip
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:g} s")


def descendants(pids: Sequence[int]) -> list[int]:
    """Every live descendant of ``pids`` (from ``/proc``; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop(processes: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM the processes, their groups and their descendants; SIGKILL what is left
    after ``grace`` seconds; reap the processes."""
    tree = [p.pid for p in processes] + descendants([p.pid for p in processes])
    for p in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    left = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
    for pid in left:
        _signal(pid, signal.SIGKILL)
    for p in processes:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if left:
        logger.info("killed %d process(es) left after SIGTERM", len(left))


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' if absent)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
