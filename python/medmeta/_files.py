"""Atomic file writes, torch-free so that the edge runtime, the report and the checkpoints
share one implementation.

A write goes to a fresh temporary file ``.<name>.<pid>.<random>.tmp`` beside the target
(created with ``O_EXCL``), is written with ``os.write`` until every byte is out, fsynced,
then ``os.replace``-d over the target and the folder fsynced. So a reader, a crash, a
``SIGKILL`` or a full disk at any moment leaves the target as it was or as it is meant to
be, never half written, and an existing file is never modified in place.

A failure (disk full, read-only folder, no permission, file size limit) raises
:class:`WriteError`, an ``OSError`` whose message names the target, the reason and that the
previous file is unchanged; the temporary file is removed. Temporary files left by a
process that was killed are removed by the next process that writes into the folder.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

__all__ = ["WriteError", "atomic_write_bytes", "remove_stale_temps"]

#: Suffix of the temporary files (hidden: their names start with ``.``).
TEMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written; the file under the target name (if any) is unchanged.

    ``errno`` is the cause's (e.g. ``ENOSPC``, ``EROFS``, ``EACCES``, ``EFBIG``),
    ``filename`` the target, and ``str()`` one readable sentence. A cause that is a
    ``PermissionError`` / ``IsADirectoryError`` / ``NotADirectoryError`` /
    ``FileNotFoundError`` gives an instance of that class too, so ``except`` clauses and
    exit statuses keyed on it still apply.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class _PermissionWriteError(WriteError, PermissionError):
    pass


class _IsADirectoryWriteError(WriteError, IsADirectoryError):
    pass


class _NotADirectoryWriteError(WriteError, NotADirectoryError):
    pass


class _FileNotFoundWriteError(WriteError, FileNotFoundError):
    pass


_KINDS: tuple[tuple[type[OSError], type[WriteError]], ...] = (
    (PermissionError, _PermissionWriteError),
    (IsADirectoryError, _IsADirectoryWriteError),
    (NotADirectoryError, _NotADirectoryWriteError),
    (FileNotFoundError, _FileNotFoundWriteError),
)


def _write_error(target: Path, err: OSError, existed: bool, what: str = "write") -> WriteError:
    """``err`` as a :class:`WriteError` naming ``target`` (of the cause's subclass)."""
    reason = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    kept = (f"the previous {target.name} is unchanged" if existed
            else f"no {target.name} was written")  # fmt: skip
    message = f"cannot {what} {target}: {reason}{f' ({code})' if code else ''}; {kept}"
    kind = next((w for base, w in _KINDS if isinstance(err, base)), WriteError)
    return kind(err.errno, message, str(target))


def _temp_pid(name: str) -> int | None:
    """The writer's pid of a temporary file ``.<target>.<pid>.<12 hex>.tmp``, else None."""
    parts = name.rsplit(".", 3)
    if (
        len(parts) != 4
        or not parts[0].startswith(".")
        or len(parts[0]) < 2
        or parts[3] != TEMP_SUFFIX[1:]
        or not parts[1].isdigit()
        or len(parts[2]) != 12
        or any(c not in "0123456789abcdef" for c in parts[2])
    ):
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # POSIX only: on Windows this would end the process
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files in ``folder`` left by processes that no longer run (a
    killed write); returns the files removed. POSIX only (a no-op elsewhere). A process on
    another machine sharing the folder is not seen: do not write one file from two
    machines at once."""
    if os.name != "posix":
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        pid = _temp_pid(entry.name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


#: Folders whose stale temporary files this process has removed (once per folder).
_SWEPT: set[Path] = set()


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - regular files write >= 1 byte or raise
            raise OSError(errno.EIO, "the write made no progress")
        view = view[n:]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a fresh temporary file in the same folder,
    fsync, then rename over the target, so readers see the old or the new file, never half.

    Raises:
        WriteError: the folder cannot be created or the file written (disk full,
            read-only, no permission, ...); the previous file is unchanged.
    """
    target = Path(path)
    try:
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(target, err, False, "create the folder for") from err
    if target.parent not in _SWEPT:
        remove_stale_temps(target.parent)
        _SWEPT.add(target.parent)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _write_error(target, err, existed) from err
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise _write_error(target, err, existed) from err
        raise
    _fsync_folder(target.parent)
    return target


def _fsync_folder(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX; folders cannot be opened on Windows)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(dir_fd)
