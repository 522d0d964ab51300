"""The segmentation benchmark's resume (rows per (fold, seed), settings checked, the
commits of resumed rows stated in the Markdown) and the suites' atomic result files."""

from __future__ import annotations

import json

import pytest

from benchmarks import segmentation as seg


def _args(tmp_path, *extra: str):
    args = seg._parse(["--out", str(tmp_path), "--resume", *extra], "prog")
    args.commit = "b" * 40
    return args


def _row(fold: int, seed: int, commit: str) -> dict:
    return {"dataset": "abd_mri", "method": "alpnet", "mode": "ssl", "setting": 1,
            "organ": "liver", "fold": fold, "seed": seed, "commit": commit,
            "patients": {"1": 0.5}}  # fmt: skip


def test_more_seeds_resume_an_earlier_run_and_name_its_commit(tmp_path):
    old = _args(tmp_path)
    partial = tmp_path / "segmentation-cpu.partial.json"
    partial.write_text(json.dumps({"settings": seg._settings(old), "rows": [_row(0, 0, "a" * 40)]}))
    new = _args(tmp_path, "--seeds", "2")
    rows = seg._resumed_rows(partial, new)
    assert [(r["fold"], r["seed"]) for r in rows] == [(0, 0)]
    report = {"environment": {"git_commit": "b" * 40}, "rows": [*rows, _row(0, 1, "b" * 40)]}
    (line,) = seg._resumed_lines(report)
    assert "`aaaaaaa`: seeds [0] of folds [0]" in line and "`bbbbbbb`: seeds [1]" in line
    report["rows"] = [_row(0, 1, "b" * 40)]
    assert seg._resumed_lines(report) == []


def test_resume_refuses_other_settings(tmp_path):
    partial = tmp_path / "segmentation-cpu.partial.json"
    partial.write_text(json.dumps({"settings": seg._settings(_args(tmp_path)), "rows": []}))
    with pytest.raises(SystemExit, match="other settings"):
        seg._resumed_rows(partial, _args(tmp_path, "--steps", "5"))


def test_results_are_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    from benchmarks import _harness as H

    H.write_results(tmp_path, "x-cpu", {"a": float("nan")}, lambda r: f"# {sorted(r)}\n")
    assert json.loads((tmp_path / "x-cpu.json").read_text()) == {"a": None}
    assert (tmp_path / "x-cpu.md").read_text() == "# ['a']\n"
    assert "# ['a']" in capsys.readouterr().out

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(H.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        H.write_text(tmp_path / "x-cpu.md", "half")
    assert (tmp_path / "x-cpu.md").read_text() == "# ['a']\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-cpu.json", "x-cpu.md"]
