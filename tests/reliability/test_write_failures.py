"""A full disk, a read-only folder or a file size limit: a clear error that names the file,
the previous checkpoint left intact and no temporary file left behind; ``medmeta train``
reports it as one line with a non-zero exit and, once the disk has room again, the same
command finishes with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medmeta._files import WriteError, atomic_write_bytes, remove_stale_temps
from medmeta.cli import main
from medmeta.edge.cli.errors import EXIT_WRITE
from medmeta.train.checkpoint import atomic_save, load_checkpoint
from reliability import artefacts
from reliability.write_faults import fail_writes

TRAIN = ["train", "--data", "pbc_blood", "--classes", "0-3", "--val-classes", "4-5",
         "--algorithm", "protonet", "--ways", "2", "--shots", "1", "--queries", "1",
         "--width", "4", "--image-size", "16", "--meta-batch", "1", "--val-every", "1",
         "--val-episodes", "2", "--quiet"]  # fmt: skip


def _temps(folder: Path) -> list[str]:
    return artefacts.temp_files(folder)


@pytest.mark.parametrize(
    ("at", "code", "reason"),
    [("write", errno.ENOSPC, "No space left on device (ENOSPC)"),
     ("fsync", errno.EIO, "Input/output error (EIO)"),
     ("open", errno.EROFS, "Read-only file system (EROFS)"),
     ("write", errno.EDQUOT, "Disk quota exceeded (EDQUOT)")],
)  # fmt: skip
def test_failed_write_keeps_the_previous_file(monkeypatch, tmp_path, at, code, reason):
    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"previous")
    failed = fail_writes(monkeypatch, "last.pt", code, at)
    with pytest.raises(WriteError) as info:
        atomic_write_bytes(target, b"new bytes" * 1000)
    assert failed and info.value.errno == code and info.value.filename == str(target)
    assert str(info.value) == f"cannot write {target}: {reason}; the previous last.pt is unchanged"  # fmt: skip
    assert target.read_bytes() == b"previous"
    assert _temps(tmp_path) == []


def test_failed_first_write_says_nothing_was_written(monkeypatch, tmp_path):
    fail_writes(monkeypatch, "model.json", errno.ENOSPC)
    with pytest.raises(WriteError, match=r"model\.json: No space left .*; no model\.json was written"):  # fmt: skip
        atomic_write_bytes(tmp_path / "model.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_permission_errors_stay_permission_errors(monkeypatch, tmp_path):
    """A cause of a specific OSError class keeps its class (``except PermissionError`` and
    the CLI's exit statuses still apply) and the error pickles."""
    fail_writes(monkeypatch, "a.bin", errno.EACCES, "open")
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert isinstance(info.value, WriteError)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is type(info.value) and str(again) == str(info.value)
    with pytest.raises(IsADirectoryError, match=r"cannot write .*: Is a directory"):
        atomic_write_bytes(tmp_path, b"x")  # the target is a folder


def test_read_only_folder(tmp_path):
    """A real read-only folder (chmod 0o555; root ignores it, hence the skip)."""
    folder = tmp_path / "ro"
    atomic_save({"format": "x", "w": torch.ones(3)}, folder / "last.pt")
    before = (folder / "last.pt").read_bytes()
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("chmod 0o555 does not stop this user (root)")
        with pytest.raises(PermissionError, match=r"cannot write .*last\.pt: Permission denied"):
            atomic_save({"format": "x", "w": torch.zeros(3)}, folder / "last.pt")
    finally:
        folder.chmod(0o755)
    assert (folder / "last.pt").read_bytes() == before and _temps(folder) == []


def test_existing_files_are_never_written_in_place(tmp_path):
    """Immutable by design: a reader holding the old checkpoint open keeps reading all of
    it while a new one is saved; the new one is another file (inode) renamed over it."""
    path = tmp_path / "last.pt"
    atomic_save({"format": "x", "w": torch.arange(1000.0)}, path)
    with open(path, "rb") as old:
        inode, first = os.fstat(old.fileno()).st_ino, old.read(100)
        atomic_save({"format": "x", "w": -torch.arange(1000.0)}, path)
        rest = old.read()
        assert os.fstat(old.fileno()).st_nlink == 0  # the old file is unlinked, not rewritten
    assert path.stat().st_ino != inode
    import io

    old_ckpt = torch.load(io.BytesIO(first + rest), weights_only=True)
    assert torch.equal(old_ckpt["w"], torch.arange(1000.0))
    assert torch.equal(torch.load(path, weights_only=True)["w"], -torch.arange(1000.0))


@pytest.mark.skipif(os.name != "posix", reason="pids of dead processes (POSIX)")
def test_temporary_files_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.{dead.pid}.0123456789ab.tmp"
    live = tmp_path / f".last.pt.{os.getppid()}.0123456789ab.tmp"
    other = tmp_path / ".notes.tmp"  # not ours: left alone
    for f in (stale, live, other):
        f.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_train_on_a_full_disk_then_again(monkeypatch, tmp_path, capsys):
    """``medmeta train`` resuming on a disk that fills up: one error line naming last.pt,
    a non-zero exit, last.pt as it was; the same command with room again finishes with the
    weights of an uninterrupted run."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    assert main([*TRAIN, "--steps", "4", "--out", str(ref)]) == 0
    assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as m:
        failed = fail_writes(m, "last.pt", errno.ENOSPC)
        assert main([*TRAIN, "--steps", "4", "--out", str(out)]) == EXIT_WRITE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # no "unexpected error" hint: a known failure
    assert failed and err[0] == (
        f"medmeta train: error: cannot write {out / 'last.pt'}: No space left on device "
        "(ENOSPC); the previous last.pt is unchanged"
    )
    assert (out / "last.pt").read_bytes() == before and _temps(out) == []
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert main([*TRAIN, "--steps", "4", "--out", str(out)]) == 0
    assert artefacts.compare_model_folders(ref, out) == []


def test_train_into_a_read_only_folder(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "1", "--out", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for name in files:
        fail_writes(monkeypatch, name, errno.EROFS, "open")
    assert main([*TRAIN, "--steps", "3", "--out", str(out)]) == EXIT_WRITE
    line = capsys.readouterr().err.strip().splitlines()[0]
    assert line.startswith(f"medmeta train: error: cannot write {out}")
    assert line.endswith("Read-only file system (EROFS); the previous log.csv is unchanged")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def _limit_file_size(limit: int) -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow  # a medmeta train process
@pytest.mark.skipif(os.name != "posix", reason="POSIX rlimits")
def test_file_size_limit_in_a_real_process(tmp_path):
    """A real kernel-refused write (RLIMIT_FSIZE below the checkpoint's size: EFBIG, as a
    full disk refuses with ENOSPC), no mock: one error line, non-zero exit, last.pt as it was."""
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "1", "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    limit = len(before) // 2
    assert max(p.stat().st_size for p in out.iterdir() if p.suffix in (".json", ".csv")) < limit
    done = subprocess.run(
        [sys.executable, "-m", "medmeta", *TRAIN, "--steps", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: _limit_file_size(limit),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode > 0, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert any(
        line.startswith("medmeta train: error: cannot write ") and "File too large (EFBIG)" in line
        for line in lines
    ), done.stderr
    assert (out / "last.pt").read_bytes() == before and _temps(out) == []
