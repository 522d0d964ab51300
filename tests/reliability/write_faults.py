"""Injected write failures for the tests: ``os.write`` / ``os.fsync`` / ``os.open`` raise an
``OSError`` (disk full, read-only file system, ...) for the temporary files of chosen
targets only, as the kernel would."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def fail_writes(monkeypatch: pytest.MonkeyPatch, target: str, code: int = errno.ENOSPC,
                at: str = "write") -> list[str]:  # fmt: skip
    """Make ``at`` (``"open"``, ``"write"`` or ``"fsync"``) fail with ``code`` for the
    temporary files of targets named ``target`` (``.<target>.<pid>.<hex>.tmp``); returns
    the list of temporary files that failed."""
    real_open, real_write, real_fsync, real_close = os.open, os.write, os.fsync, os.close
    mine: dict[int, str] = {}
    failed: list[str] = []

    def matches(path: object) -> bool:
        name = os.path.basename(os.fspath(path))  # type: ignore[arg-type]
        return name.startswith(f".{target}.") and name.endswith(".tmp")

    def fake_open(path, flags, *args, **kwargs):
        if at == "open" and matches(path):
            failed.append(os.fspath(path))
            raise os_error(code)
        fd = real_open(path, flags, *args, **kwargs)
        if isinstance(path, (str, bytes, os.PathLike)) and matches(path):
            mine[fd] = os.fspath(path)  # type: ignore[assignment]
        return fd

    def failing(real: Callable, kind: str) -> Callable:  # type: ignore[type-arg]
        def call(fd, *args):
            if at == kind and fd in mine:
                failed.append(mine.pop(fd))
                raise os_error(code)
            return real(fd, *args)

        return call

    def fake_close(fd: int) -> None:
        mine.pop(fd, None)
        real_close(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "close", fake_close)
    monkeypatch.setattr(os, "write", failing(real_write, "write"))
    monkeypatch.setattr(os, "fsync", failing(real_fsync, "fsync"))
    return failed
