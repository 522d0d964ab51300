"""The regression plot (predicted vs true with intervals) and the regression section of a
report: the coverage they print is the share of points inside their interval, R² is the
textbook value, and bad input is refused with a message naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medmeta.eval import plots
from medmeta.eval.regression import summarize_regression
from medmeta.report import ReportData, write_report

N, INSIDE = 40, 31  # 31 of 40 true values inside their interval: coverage 77.5%


def _points(seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions around the truth with unit-width intervals; exactly INSIDE cover it."""
    rng = np.random.default_rng(seed)
    true = rng.normal(50.0, 10.0, N)
    pred = true + rng.normal(0.0, 2.0, N)
    half = np.abs(true - pred) + 0.5  # covers the truth ...
    miss = rng.permutation(N)[: N - INSIDE]
    half[miss] = 0.5 * np.abs(true - pred)[miss]  # ... except at these points
    return {"true": true, "pred": pred, "lower": pred - half, "upper": pred + half}


def test_points_cover_as_intended():
    p = _points()
    inside = (p["true"] >= p["lower"]) & (p["true"] <= p["upper"])
    assert inside.sum() == INSIDE


def test_the_plot_prints_the_share_of_points_inside_and_the_textbook_r2(tmp_path, monkeypatch):
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    p = _points()
    out = plots.plot_regression_intervals(p["true"], p["pred"], p["lower"], p["upper"],
                                          tmp_path / "r.png", "New task", 0.9, target="age")  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    title = drawn[0].axes[0].get_title()
    coverage = float(re.search(r"coverage (\d+\.\d)% \(nominal 90%\)", title).group(1))
    assert coverage == 100 * INSIDE / N == 77.5
    t, y = p["true"], p["pred"]
    r2 = 1 - ((t - y) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    assert f"R² {r2:.3f}" in title and f"n = {N}" in title
    legend = [text.get_text() for text in drawn[0].axes[0].get_legend().get_texts()]
    assert f"prediction, truth outside its interval ({N - INSIDE})" in legend
    assert drawn[0].axes[0].get_xlabel() == "true age"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pred": np.zeros(N - 1)}, "one length"),
        ({"true": np.r_[np.nan, np.zeros(N - 1)]}, "true holds 1 NaN or infinite values"),
        ({"upper": np.full(N, -1e9)}, "upper is below lower at point 0"),
        ({"lower": np.zeros((N, 1))}, r"lower must be a non-empty array of shape \[n\]"),
    ],
)  # fmt: skip
def test_the_plot_refuses_bad_points(tmp_path, change, match):
    p = _points() | change
    with pytest.raises(ValueError, match=match):
        plots.plot_regression_intervals(p["true"], p["pred"], p["lower"], p["upper"],
                                        tmp_path / "r.png")  # fmt: skip
    with pytest.raises(ValueError, match="level must be a number in"):
        plots.plot_regression_intervals(*_points().values(), tmp_path / "r.png", level=90)
    assert not (tmp_path / "r.png").exists()


def _episodes() -> dict:
    """A summary of 30 episodes of 8 queries (summarize_regression), for the table."""
    rng = np.random.default_rng(1)
    target = rng.normal(0, 1, (30, 8))
    pred = target + rng.normal(0, 0.5, (30, 8))
    return summarize_regression(pred, target, pred - 0.8, pred + 0.8)


def _report(tmp_path: Path, **regression) -> tuple[Path, dict]:
    p = _points()
    reg = {**p, "level": 0.9, "target": "age", "points": "the 40 queries of a new task",
           "evaluations": [("5-shot episodes", _episodes())], **regression}  # fmt: skip
    data = ReportData(title="regression", summary=[("Dataset", "synthetic")], regression=reg)
    paths = write_report(tmp_path, data)
    return paths.markdown, json.loads(paths.json.read_text())


def test_the_report_section_shows_the_points_coverage_and_the_episode_metrics(tmp_path):
    md, report = _report(tmp_path)
    text = md.read_text()
    assert "## Regression with predictive intervals" in text
    assert "plots/regression_intervals.png" in text
    assert f"{INSIDE} lie inside their interval (coverage 77.5%)" in text
    table = [line for line in text.splitlines() if line.startswith("| the 40 queries")]
    assert table and f"| {N} points |" in table[0] and "| 77.50% |" in table[0]
    s = _episodes()
    row = next(line for line in text.splitlines() if line.startswith("| 5-shot episodes"))
    assert f"{s['mse']:.4f} ± {s['mse_ci95']:.4f}" in row
    assert f"{s['r2']:.3f} ± {s['r2_ci95']:.3f}" in row
    assert f"{100 * s['coverage']:.2f} ± {100 * s['coverage_ci95']:.2f}%" in row
    assert "**R²: " in text and "Coverage of the 90% interval" in text
    stats = report["regression"]["stats"]
    assert stats["coverage"] == INSIDE / N and stats["outside"] == N - INSIDE
    assert len(report["regression"]["true"]) == N
    assert (tmp_path / report["plots"]["regression_intervals"]).is_file()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"level": None}, r"\['level'\] must be a number in \(0, 1\)"),
        ({"pred": np.r_[np.nan, np.zeros(N - 1)]}, "regression: pred holds 1 NaN"),
        ({"lower": np.zeros(3)}, "regression: true, pred, lower and upper must have one length"),
        ({"intervals": 1}, r"unknown \['intervals'\]"),
        ({"evaluations": [("x", {"mse": 1.0})]}, "lacks 'r2'"),
        ({"evaluations": [("x", {"mse": "low", "r2": 0.5})]}, r"\['mse'\] must be a number"),
        ({"true": np.array(["a"] * N)}, "must hold real numbers"),
    ],
)  # fmt: skip
def test_bad_regression_parts_are_refused_before_writing(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        _report(tmp_path, **change)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="missing"):
        write_report(tmp_path, ReportData(title="r", summary=[], regression={"true": [1.0]}))
