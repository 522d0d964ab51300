"""The drug-screening protocol end to end with tiny settings: every method scores the same
episodes, the report records its data, settings and provenance, and results go into
``benchmarks/results/`` only from a clean tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _harness as H
from benchmarks import protocol_molecules as P

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")

TINY = ["--steps", "2", "--meta-batch", "2", "--episodes", "3", "--shots", "8",
        "--max-query", "40", "--hidden", "16"]  # fmt: skip


def test_tiny_run_writes_json_and_markdown(tmp_path: Path, keep_threads, capsys) -> None:
    assert P.main([*TINY, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "molecules-cpu.json").read_text())
    assert report["schema"] == P.SCHEMA
    assert report["environment"]["command"][-2:] == ["--out", str(tmp_path)]
    data = report["data"]
    assert data["tox21_unparsed_smiles"] == 8 and data["toxcast_unparsed_smiles"] == 0
    assert data["toxcast_test_groups"] == ["APR", "CEETOX", "CLD", "NHEERL", "OT"]
    assert "TOX21" not in data["train_groups"]
    rows = report["results"]
    assert {(r["test_set"], r["method"]) for r in rows} == {
        (t, m) for t in ("ToxCast held-out groups", "Tox21")
        for m in ("protonet", "maml", "random_forest", "logistic")
    }  # fmt: skip
    for r in rows:
        assert r["episodes"] == 3 and r["shots"] == 8
        assert 0.0 <= r["roc_auc"]["mean"] <= 1.0 and r["roc_auc"]["n_tasks"] <= 3
    assert len(report["comparisons"]) == 2 * 2 * 2  # 2 test sets x 2 learners x 2 baselines
    assert report["training"]["maml"]["meta_steps"] == 1  # half the steps
    md = (tmp_path / "molecules-cpu.md").read_text()
    assert "| Tox21 | 8 | random forest |" in md and "Paired differences" in md
    assert "ProtoNet beats every baseline on both metrics in" in md
    assert "(clean tree)" in md or "dirty tree" in md


def test_same_episodes_for_every_method(keep_threads) -> None:
    args = P.argparse.Namespace(**{**vars(_args()), "algorithms": "random_forest,logistic"})
    tests, _, _ = P._data(args)
    ev = P._evaluate(["random_forest", "logistic"], {}, tests["Tox21"], 8, 5, args)
    again = P._evaluate(["logistic"], {}, tests["Tox21"], 8, 5, args)
    assert ev["assays"] == again["assays"] and ev["n_query"] == again["n_query"]
    assert ev["per_episode"]["logistic"] == again["per_episode"]["logistic"]


def _args():
    parser = P.argparse.ArgumentParser()
    P.add_arguments(parser)
    return parser.parse_args(TINY)


def test_refuses_results_dir_from_a_dirty_tree(monkeypatch, capsys) -> None:
    monkeypatch.setattr(H, "git_state", lambda repo=None: H.GitState("0" * 40, ("x.py",)))
    assert P.main([*TINY, "--out", str(H.RESULTS_DIR)]) == 2
    assert "refusing to write results" in capsys.readouterr().err
    assert P.main([*TINY, "--algorithms", "protonet,svm"]) == 2
    assert "unknown algorithms ['svm']" in capsys.readouterr().err
