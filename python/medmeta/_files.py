"""Atomic file writes, torch-free so that the edge runtime, the report and the checkpoints
share one implementation."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a fresh temporary file in the same folder,
    fsync, then rename over the target, so readers see the old or the new file, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # persist the rename itself (POSIX; folders cannot be opened on Windows)
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return target
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
