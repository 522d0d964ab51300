"""Results files record when, from which commit and by which command they were made;
``benchmarks/results/`` is written only from a clean tree unless ``--allow-dirty``, and
then the results say so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import _harness as H
from benchmarks import algorithms, ops

DIRTY = H.GitState("0123456789abcdef0123456789abcdef01234567", ("python/medmeta/ops/x.py",))
CLEAN = H.GitState("0123456789abcdef0123456789abcdef01234567", ())


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)  # fmt: skip


def test_git_state_sees_tracked_changes_and_untracked_files_not_ignored(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    clean = H.git_state(tmp_path)
    assert not clean.dirty and len(clean.commit or "") == 40
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.o").write_text("ignored\n")
    assert not H.git_state(tmp_path).dirty  # ignored files do not count
    (tmp_path / "new.py").write_text("y = 2\n")
    assert H.git_state(tmp_path).dirty_paths == ("new.py",)
    (tmp_path / "new.py").unlink()
    (tmp_path / "a.py").write_text("x = 2\n")
    assert H.git_state(tmp_path).dirty_paths == ("a.py",)
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    (outside / ".git").write_text("gitdir: /nonexistent\n")  # git cannot describe it
    unknown = H.git_state(outside)
    assert unknown.dirty_paths is None and unknown.dirty


def test_results_dir_is_refused_from_a_dirty_tree_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(H, "RESULTS_DIR", tmp_path / "results")
    inside = tmp_path / "results" / "sub"
    why = H.dirty_refusal(inside, allow_dirty=False, state=DIRTY)
    assert why and "dirty tree" in why and "python/medmeta/ops/x.py" in why
    assert "--allow-dirty" in why and "--out" in why
    assert H.dirty_refusal(inside, allow_dirty=True, state=DIRTY) is None
    assert H.dirty_refusal(inside, allow_dirty=False, state=CLEAN) is None
    assert H.dirty_refusal(tmp_path / "elsewhere", allow_dirty=False, state=DIRTY) is None
    unknown = H.dirty_refusal(inside, False, H.GitState(None, None))
    assert unknown and "cannot tell" in unknown


def test_a_suite_refuses_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, keep_threads: int
) -> None:
    monkeypatch.setattr(H, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(H, "git_state", lambda repo=None: DIRTY)
    monkeypatch.setattr(ops, "run", lambda *a, **k: pytest.fail("ran from a dirty tree"))
    argv = ["--quick", "--out", str(tmp_path / "results"), "--no-malloc-env"]
    assert ops.main(argv, prog="python -m benchmarks ops") == 2
    assert "refusing to write results" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    monkeypatch.setattr(algorithms, "run", lambda *a, **k: pytest.fail("ran from a dirty tree"))
    assert algorithms.main(argv, prog="python -m benchmarks algorithms") == 2


def test_allow_dirty_writes_results_marked_dirty(
    light, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: int, capsys
) -> None:
    results = tmp_path / "results"
    monkeypatch.setattr(H, "RESULTS_DIR", results)
    monkeypatch.setattr(H, "git_state", lambda repo=None: DIRTY)
    argv = ["--quick", "--ops", "prototypes", "--out", str(results), "--no-malloc-env",
            "--threads", str(keep_threads), "--target-time", "0.002", "--allow-dirty"]  # fmt: skip
    assert ops.main(argv, prog="python -m benchmarks ops") == 0
    env = json.loads((results / "ops-cpu-quick.json").read_text())["environment"]
    assert env["git_dirty"] is True and env["allow_dirty"] is True
    assert env["git_dirty_paths"] == ["python/medmeta/ops/x.py"]
    assert env["git_commit"] == DIRTY.commit and env["date_utc"]
    assert env["command"][1:] == ["-m", "benchmarks", "ops", *argv]
    assert env["torch"] == torch.__version__ and env["device_name"]
    md = (results / "ops-cpu-quick.md").read_text()
    assert "**DIRTY TREE: not a reference result.**" in md and "--allow-dirty" in md
    assert f"`{DIRTY.commit}` (**dirty tree**)" in md


def test_provenance_lines_of_a_clean_run() -> None:
    env = {"date_utc": "2026-01-01T00:00:00+00:00", "command": ["python", "-m", "benchmarks"],
           "env": {}, **H.git_fields(False, CLEAN)}  # fmt: skip
    (line,) = H.provenance_lines(env)
    assert "(clean tree)" in line and CLEAN.commit in line and "python -m benchmarks" in line
    assert not H.is_dirty(env)
    assert H.is_dirty({"git_dirty_files": 3})  # files written before the git_dirty field


@pytest.mark.parametrize(
    ("available", "why"),
    [(True, "this run was on CPU; run with --device cuda"), (False, "no GPU on this machine")],
)
def test_cpu_runs_say_truthfully_why_gpu_targets_are_not_measured(
    monkeypatch: pytest.MonkeyPatch, available: bool, why: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    statuses = [t["status"] for t in algorithms.evaluate_targets([], "cpu")]
    assert statuses == [f"not measured: {why}"] * 3
