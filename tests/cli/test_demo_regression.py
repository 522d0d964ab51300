"""``medmeta demo --family regression``: the clinic split (disjoint: the test clinic is never
trained or validated on), the rows left out without a target, and the whole pipeline end to
end (``--quick``, marked slow): a report with the predicted-vs-true figure whose coverage is
the share of its points inside their interval, a torch-free check of the export on raw CSV
rows that fails loudly when the numbers differ, and learning above the support mean."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmeta.cli import _regression as R
from medmeta.cli import main
from medmeta.cli._demo_edge import PARITY_TOLERANCE, regression_edge_check
from medmeta.cli._demo_families import REGRESSION_FAMILIES, get_family
from medmeta.cli._demo_reg_report import missing_targets
from medmeta.cli._demo_regression import split_groups
from medmeta.data import DataError
from medmeta.data.registry import dataset_path
from medmeta.edge.cli.errors import CheckFailed
from medmeta.edge.table import TableRows

PNG = b"\x89PNG\r\n\x1a\n"
FAMILY = REGRESSION_FAMILIES["regression"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    with dataset_path("thyroid") as path:
        return pd.read_csv(path)


@pytest.fixture(scope="module")
def t3() -> R.RegressionData:
    return R.load_regression_data("thyroid", target="T3", group_by="referral_source",
                                  drop_missing=True)  # fmt: skip


def test_the_split_is_clinic_disjoint_and_the_test_clinic_is_new(t3, frame):
    split = split_groups(FAMILY, t3)
    names = {part: set(split.names(t3, part).split(",")) for part in ("train", "val", "test")}
    assert names == {"train": {"other", "SVI", "SVHC"}, "val": {"STMW"}, "test": {"SVHD"}}
    rows = {part: t3.rows_of(ids) for part, ids in
            (("train", split.train), ("val", split.val), ("test", [split.test]))}  # fmt: skip
    clinic = frame["referral_source"].to_numpy()
    for part, index in rows.items():  # each part's rows come from its clinics only
        assert set(clinic[t3.row_ids[index]]) == names[part]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(t3.row_ids[rows[a]]) & set(t3.row_ids[rows[b]])
    # every test row is an SVHD patient with a T3 value; WEST (3 patients, no T3) is not there
    svhd = frame.index[(frame.referral_source == "SVHD") & frame.T3.notna()].to_numpy()
    np.testing.assert_array_equal(t3.row_ids[rows["test"]], svhd)
    assert len(svhd) == 62 >= max(FAMILY.shots) + FAMILY.eval_queries
    assert get_family("regression") is FAMILY


def test_a_bad_split_is_refused_naming_the_groups(t3):
    leaky = dataclasses.replace(FAMILY, val_groups=("STMW", "SVHD"))
    with pytest.raises(DataError, match=r"overlap: \['other', 'SVI', 'SVHC', 'STMW', 'SVHD', "):
        split_groups(leaky, t3)
    with pytest.raises(DataError, match="NOWHERE"):
        split_groups(dataclasses.replace(FAMILY, test_group="NOWHERE"), t3)
    with pytest.raises(DataError, match=r"unknown group 'WEST'; groups are \['STMW', "):
        split_groups(dataclasses.replace(FAMILY, test_group="WEST"), t3)


def test_rows_without_the_target_are_counted_per_clinic(frame):
    counts = missing_targets(FAMILY)
    for clinic, rows in frame.groupby("referral_source"):
        assert counts[clinic] == (int(rows.T3.isna().sum()), len(rows))
    assert counts["SVHD"] == (9, 71) and sum(m for m, _ in counts.values()) == 2604


def test_a_classification_method_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--family", "regression", "--algorithm", "protonet", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--algorithm protonet is a classification method; --task regression takes" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("regression") / "demo"
    capture = pytest.MonkeyPatch()
    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        code = main(["demo", "--family", "regression", "--quick", "--quiet", "--device", "cpu",
                     "--out", str(out)])  # fmt: skip
    finally:
        capture.undo()
    assert code == 0
    return out, buffer.getvalue()


@pytest.mark.slow
def test_regression_demo_writes_the_report_with_the_figure_and_checks_the_export(demo, frame):
    out, text = demo
    for name in ("model/model.json", "adapted/support.pt", "model.onnx", "edge_check/rows.csv",
                 "report.html", "report.md", "report.json", "timings.json"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for plot in ("regression_intervals", "learning_curves", "latency"):
        assert (out / report["plots"][plot]).read_bytes()[:8] == PNG
        assert f"plots/{plot}.png" in md
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["training"]["groups"] == ["other", "SVI", "SVHC"]
    assert card["training"]["val_groups"] == ["STMW"] and card["target"] == {"name": "T3"}
    # the torch-free check on the raw rows: same numbers as PyTorch, same truth
    export = report["export"]
    assert export["torch_free"] and export["edge_relative_diff"] < PARITY_TOLERANCE
    rows = pd.read_csv(out / "edge_check" / "rows.csv")
    reg = report["regression"]
    assert len(rows) == len(reg["true"]) == report["adaptation"]["queries"] == 62 - 10
    np.testing.assert_array_equal(rows["T3"].to_numpy(), reg["true"])
    assert "referral_source" not in rows and "FTI" in rows  # the clinic is no input
    svhd = frame[(frame.referral_source == "SVHD") & frame.T3.notna()].T3.to_numpy()
    assert set(reg["true"]) <= set(svhd)
    # metrics finite; the coverage shown is the share of plotted points inside their interval
    for name, summary in reg["evaluations"]:
        assert np.isfinite([summary["mse"], summary["mse_ci95"], summary["r2"]]).all(), name
    true, lower, upper = (np.asarray(reg[k]) for k in ("true", "lower", "upper"))
    inside = float(((lower <= true) & (true <= upper)).mean())
    assert reg["stats"]["coverage"] == inside == report["adaptation"]["coverage"]
    assert export["edge_coverage"] == inside
    assert f"(coverage {100 * inside:.1f}%)" in md
    assert np.isfinite([row["p50_ms"] for row in report["latency"]]).all()
    # said in the report: the rows left out, the inputs, the conclusion with its CIs
    summary = dict(report["summary"])
    assert summary["rows left out"].startswith("2,604 of 9,172 have no T3")
    assert "9 of the 71 at SVHD" in summary["rows left out"]
    assert "FTI" in summary["inputs"] and "Not inputs: T3 (the target)" in summary["inputs"]
    assert any(n.startswith("Conclusion: ") for n in report["notes"])
    assert any(re.match(r"K = 10 \(40 episodes at SVHD\): maml's MSE", n) for n in report["notes"])
    assert "SVHD 10-shot  MSE" in text and "torch-free edge runtime agrees" in text


@pytest.mark.slow
def test_regression_demo_learns_above_the_support_mean(demo):
    out, _ = demo
    reg = json.loads((out / "report.json").read_text())["regression"]
    scores = {name: s for name, s in reg["evaluations"]}
    for k in (5, 10):
        model = scores[f"{k}-shot: maml, 10-member ensemble"]
        mean = scores[f"{k}-shot: support mean"]
        assert model["mse"] < 0.8 * mean["mse"]  # 0.37 vs 0.61 and 0.55 in the quick run
        assert mean["mse_diff"] + mean["mse_diff_ci95"] < 0  # paired: better with 95% CI
        assert 0.7 < model["coverage"] <= 1.0


@pytest.mark.slow
def test_the_edge_check_fails_loudly_when_the_numbers_differ(demo, tmp_path):
    out, _ = demo
    rows = pd.read_csv(out / "edge_check" / "rows.csv", dtype=str, keep_default_na=False)
    truth = rows.pop("T3").astype(float).to_numpy()
    raw = TableRows(tuple(rows.columns), rows.to_numpy(dtype=str))
    got = np.load(out / "edge_check" / "predictions.npz")
    expected = {k: got[k].astype(np.float64) for k in ("prediction", "lower", "upper")}
    same = regression_edge_check(tmp_path / "same", out / "model.onnx", raw, "T3", truth, expected)
    assert same["max_abs_diff"] == 0.0 and same["rows"] == len(truth)
    expected["upper"] = expected["upper"] * (1 + 1e-4)  # off by 1e-4 relative: refused
    with pytest.raises(CheckFailed, match="differ from PyTorch by"):
        regression_edge_check(tmp_path / "off", out / "model.onnx", raw, "T3", truth, expected)
