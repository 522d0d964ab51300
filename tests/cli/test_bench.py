"""``medmeta bench`` runs every benchmark suite's quick mode (the CI check of the harness;
nothing about speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmeta.cli import main


@pytest.mark.slow  # every benchmark suite's quick mode, in a child process
def test_bench_quick_runs_every_suite_and_writes_results(tmp_path: Path, capfd, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the source tree
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out  # the suites run in a child process
    for suite in ("ops", "algorithms", "edge"):
        assert f"== {suite} (quick) ==" in out
        files = sorted(tmp_path.glob(f"{suite}-*quick.json"))
        assert files, f"no JSON from the {suite} suite in {sorted(tmp_path.iterdir())}"
        payload = json.loads(files[0].read_text())
        assert payload["environment"]["command"], suite
        assert (tmp_path / files[0].name.replace(".json", ".md")).is_file()
        if suite == "edge":  # ONNX Runtime and the best torch formulation, timed side by side
            assert all(r["ort_fp32_vs_eager"] > 0 and r["best_torch"] for r in payload["ratios"])
        else:  # medmeta and a pure-torch formulation of the same point, with their ratio
            kinds = {r["kind"] for r in payload["records"] if r["status"] == "ok"}
            assert {"medmeta", "torch"} <= kinds, (suite, kinds)
            assert all(
                r["ratio_vs_medmeta"] > 0
                for r in payload["records"]
                if r["kind"] == "torch" and r["status"] == "ok"
            )


def test_bench_help_and_missing_source_tree(tmp_path: Path, capsys, monkeypatch):
    assert main(["bench", "--help"]) == 0
    assert "python -m benchmarks" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDMETA_SOURCE", str(tmp_path))
    monkeypatch.setattr("medmeta.cli.bench._package_source", lambda: tmp_path)
    assert main(["bench", "ops", "--quick"]) == 2
    assert "source tree" in capsys.readouterr().err


def test_bench_unknown_suite(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["bench", "nonexistent"]) == 2
    assert "unknown suite 'nonexistent'" in capsys.readouterr().err
