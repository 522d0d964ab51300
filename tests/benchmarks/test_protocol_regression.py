"""The few-shot regression benchmark's report: the honest verdict against the best baseline
(paired CI), the Markdown tables, and refusals of bad options and of a dirty results folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _harness as H
from benchmarks import protocol_regression as PR


def _row(method: str, kind: str, mse: float, minus: dict[str, tuple[float, float]]) -> dict:
    row = {"protocol": "thyroid", "shots": 5, "method": method, "kind": kind, "mse": mse,
           "mse_ci95": 0.01, "r2": 0.1, "r2_ci95": 0.01}  # fmt: skip
    for key in PR.BASELINE_KEYS.values():
        d, ci = minus.get(key, (0.0, 0.0))
        row[f"mse_minus_{key}"], row[f"mse_minus_{key}_ci95"] = d, ci
    return row


def _baselines(best: str = "Bayesian ridge") -> list[dict]:
    return [_row(name, "baseline", 0.8 if name == best else 1.0, {}) for name in PR.BASELINES]


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [((-0.1, 0.05), "meta-learning beats the best baseline"),
     ((0.1, 0.05), "meta-learning does NOT beat the best baseline (it is worse)"),
     ((-0.01, 0.05), "meta-learning does NOT beat the best baseline (no significant difference)")],
)  # fmt: skip
def test_verdict_uses_the_best_baseline_and_the_paired_ci(difference, verdict):
    """The best meta-learner (lowest MSE) is judged against the baseline with the lowest
    MSE (here Bayesian ridge, not ridge or the mean) by its paired CI."""
    metas = [_row("maml", "meta-learner", 0.75, {"bayes": difference, "mean": (-9.0, 0.1)}),
             _row("reptile", "meta-learner", 0.9, {"bayes": (-5.0, 0.1)})]  # fmt: skip
    (line,) = PR.conclusions([*_baselines(), *metas])
    assert line.startswith(f"thyroid, K=5: {verdict}: maml MSE 0.75 vs Bayesian ridge 0.8")


def test_markdown_has_a_row_per_method_and_the_conclusions():
    rows = [*_baselines("support mean"), _row("maml", "meta-learner", 0.7, {"mean": (-0.1, 0.02)})]
    report = {"rows": rows, "conclusions": PR.conclusions(rows),
              "protocols": {"thyroid": {"train_tasks": 12, "test_tasks": 8, "dataset": "thyroid"}},
              "settings": {"episodes": 600}}  # fmt: skip
    text = PR.markdown(report)
    assert "meta-learning beats the best baseline: maml MSE 0.7 vs support mean 0.8" in text
    assert sum(line.startswith("| 5 |") for line in text.splitlines()) == len(PR.BASELINES) + 1
    assert "600 seeded test episodes per K" in text


def test_bad_options_and_dirty_results_folder_are_refused(monkeypatch, capsys):
    assert PR.main(["--methods", "maml,protonet", "--out", "/tmp/unused"]) == 2
    assert "unknown methods ['protonet']" in capsys.readouterr().err
    monkeypatch.setattr(H, "git_state", lambda repo=None: H.GitState("abc", ("x.py",)))
    assert PR.main(["--out", str(Path(H.RESULTS_DIR))]) == 2
    assert "refusing to write results" in capsys.readouterr().err
