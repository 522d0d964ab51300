"""Few-shot regression through the command line (``--task regression``): train, eval and
adapt on the embedded thyroid table (a lab value per clinic) and on pbmc68k expression
vectors (a gene per cell type), the model folders of the contract, learning above the
support-mean and ridge baselines on held-out clinics, the exact rebuild of an adapted
ensemble, and the errors a user meets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmeta.cli import _regression as R
from medmeta.cli import main
from medmeta.cli._model import SUPPORT, load_model, read_card
from medmeta.cli._reg_workflow import adapt_regressor, load_ensemble
from medmeta.data import DataError
from medmeta.data.registry import dataset_path, load
from medmeta.data.regression_tasks import RegressionTask, RegressionTasks
from medmeta.edge.table import TableSpec

TRAIN_CLINICS = ["other", "SVI", "SVHC"]
THYROID = ["--data", "thyroid", "--target", "T4U", "--group-by", "referral_source",
           "--drop-missing-targets"]  # fmt: skip


@pytest.fixture(scope="module")
def thyroid_frame() -> pd.DataFrame:
    with dataset_path("thyroid") as path:
        return pd.read_csv(path)


@pytest.fixture(scope="module")
def t4u_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MAML meta-trained to predict T4U at three clinics, validated on STMW (about 5 s)."""
    out = tmp_path_factory.mktemp("reg") / "t4u"
    code = main(["train", "--task", "regression", *THYROID, "--classes", ",".join(TRAIN_CLINICS),
                 "--val-classes", "STMW", "--shots", "10", "--queries", "10", "--steps", "240",
                 "--val-every", "120", "--val-episodes", "30", "--threads", "1", "--quiet",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


# ----------------------------------------------------------------------------- the table


@pytest.mark.slow
def test_trained_folder_follows_the_contract(t4u_model: Path, thyroid_frame: pd.DataFrame):
    card = read_card(t4u_model)
    assert card["task_type"] == "regression" and card["kind"] == "trained"
    assert card["algorithm"] == "maml" and card["hparams"]["task"] == "regression"
    assert card["target"] == {"name": "T4U"}
    assert card["episodes"] == {"shots": 10, "queries": 10}
    assert card["interval"] == {"members": 10, "level": 0.9}
    assert card["backbone"]["kwargs"] == {"hidden": [64, 64], "batch_norm": False}
    t = card["training"]
    assert t["groups"] == TRAIN_CLINICS and t["val_groups"] == ["STMW"]
    assert t["dropped_missing_targets"] == int(thyroid_frame["T4U"].isna().sum()) == 809
    assert card["checkpoint"] == "best.pt" and (t4u_model / "best.pt").is_file()
    assert t["val_mse"] > 0 and -1 < t["val_r2"] <= 1
    assert (t4u_model / "learning_curves.png").stat().st_size > 1000
    # the encoding: fitted on the training clinics' rows only, without target, group, class
    spec = TableSpec.from_dict(card["preprocessing"]["table"])
    assert {"T4U", "referral_source", "target"}.isdisjoint(spec.columns)
    assert "TT4" in spec.numeric and "sex" in spec.categorical
    assert spec.categories[spec.categorical.index("sick")] == ("0", "1")  # flags one-hot
    rows = thyroid_frame[thyroid_frame.referral_source.isin(TRAIN_CLINICS)
                         & thyroid_frame.T4U.notna()]  # fmt: skip
    everyone = thyroid_frame[thyroid_frame.T4U.notna()]
    i = spec.numeric.index("TT4")
    assert spec.mean[i] == pytest.approx(rows.TT4.mean(), rel=1e-9)
    assert spec.mean[i] != pytest.approx(everyone.TT4.mean(), rel=1e-6)
    assert spec.std[i] == pytest.approx(rows.TT4.std(ddof=0), rel=1e-9)


def _support_mean_mse(frame: pd.DataFrame, clinics: list[str], shots: int, queries: int,
                      episodes: int, seed: int) -> float:  # fmt: skip
    """The support-mean baseline on the seeded episodes, from the raw table (pandas)."""
    tasks = []
    for c in clinics:
        y = frame[(frame.referral_source == c) & frame.T4U.notna()].T4U.to_numpy(np.float32)
        tasks.append(RegressionTask(c, torch.zeros(len(y), 1), torch.from_numpy(y)))
    sampler = RegressionTasks(tasks).episode_sampler(1, shots, queries, generator=seed)
    errors = []
    for _ in range(episodes):
        b = sampler.sample()
        mean = b.support_y.double().mean(1, keepdim=True)
        errors.append(float((b.query_y.double() - mean).pow(2).mean()))
    return float(np.mean(errors))


@pytest.mark.slow
def test_eval_beats_the_support_mean_and_ridge_at_held_out_clinics(
    t4u_model: Path, thyroid_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
):
    clinics = ["SVHD"]  # neither trained on nor used for validation
    code = main(["eval", "--model", str(t4u_model), "--data", "thyroid", "--classes",
                 ",".join(clinics), "--drop-missing-targets", "--episodes", "100", "--seed", "3",
                 "--threads", "1", "--json"])  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["task_type"] == "regression" and r["tasks"] == clinics and r["episodes"] == 100
    assert (r["shots"], r["queries"], r["members"], r["level"]) == (10, 10, 10, 0.9)
    mean, ridge = r["baselines"]["support_mean"], r["baselines"]["ridge"]
    # the support-mean baseline, recomputed from the raw table on the same seeded episodes
    assert mean["mse"] == pytest.approx(_support_mean_mse(thyroid_frame, clinics, 10, 10, 100, 3),
                                        rel=1e-6)  # fmt: skip
    # learning (measured: MSE 0.0048 vs the support mean's 0.038 and ridge's 0.029, R² 0.84)
    assert r["r2"] > 0.5 and r["mse"] < 0.3 * mean["mse"], (r["r2"], r["mse"], mean["mse"])
    assert mean["mse_diff"] + mean["mse_diff_ci95"] < 0
    assert ridge["mse_diff"] + ridge["mse_diff_ci95"] < 0 and r["mse"] < 0.5 * ridge["mse"]
    assert r["single_adaptation"]["r2"] > 0.5
    assert 0.75 <= r["coverage"] <= 1.0 and r["width"] > 0


@pytest.mark.slow
def test_eval_text_names_the_metrics(t4u_model: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["eval", "--model", str(t4u_model), "--data", "thyroid", "--classes", "SVHD",
                 "--drop-missing-targets", "--episodes", "10", "--members", "3", "--level",
                 "0.8", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for text in ("MSE", "R²", "80% interval: coverage", "ridge (LOO): MSE", "model minus",
                 "support mean: MSE", "3-member"):  # fmt: skip
        assert text in out, out


@pytest.mark.slow
def test_adapt_reports_held_out_rows_and_load_ensemble_rebuilds_it(
    t4u_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "svhd"
    assert main(["adapt", "--model", str(t4u_model), "--support", "thyroid", "--classes", "SVHD",
                 "--shots", "10", "--drop-missing-targets", "--out", str(out), "--json"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    card = read_card(out)
    assert card["kind"] == "adapted" and card["task_type"] == "regression"
    task = card["task"]
    assert {k: info[k] for k in task} == task and info["target"] == "T4U"
    assert {k: task[k] for k in ("group", "shots", "seed", "members", "level")} == {
        "group": "SVHD", "shots": 10, "seed": 0, "members": 10, "level": 0.9}  # fmt: skip
    held = task["held_out"]
    assert held["rows"] == 68 - 10 and 0.0 <= held["coverage"] <= 1.0
    assert held["mse"] < 0.5 * held["support_mean_mse"] and held["r2"] > 0.5
    support = torch.load(out / SUPPORT, weights_only=True)
    assert support["x"].dtype == support["y"].dtype == torch.float32
    assert support["x"].shape == (10, card["preprocessing"]["input_shape"][0])
    assert support["class_names"] == [] and task["noise_std"] > 0
    # the folder's ensemble predicts what the adaptation step measured on the other rows
    model = load_model(out)
    data = R.model_data(model.card, "thyroid", target=None, group_by=None, drop_missing=True)
    data = R.with_groups(data, R.select_groups(data, "SVHD", "--classes"))
    again = adapt_regressor(model, data, shots=10, seed=0, members=10, level=0.9, out=None)
    x = torch.from_numpy(R.encode_for_model(data, model.preprocessing))
    ensemble = load_ensemble(model)
    assert torch.equal(ensemble(x), again.ensemble(x))
    assert torch.equal(again.support_y, support["y"]) and torch.equal(again.support_x, support["x"])
    iv = ensemble.interval(x[again.query_index])
    truth = torch.from_numpy(data.y[again.query_index])
    assert float((iv.mean.double() - truth).pow(2).mean()) == pytest.approx(held["mse"], rel=1e-6)
    inside = ((truth >= iv.lower.double()) & (truth <= iv.upper.double())).double().mean()
    assert float(inside) == pytest.approx(held["coverage"])


# ------------------------------------------------------------------------- a CSV / Parquet


def _clinic_csv(frame: pd.DataFrame, path: Path, *, drop: list[str] = ()) -> Path:
    """Thyroid rows as a user's CSV: a ``clinic`` column, no class column."""
    out = frame.rename(columns={"referral_source": "clinic"})
    out = out.drop(columns=["record_id", "diagnosis_code", "diagnosis_primary", "target", *drop])
    out.to_csv(path, index=False)
    return path


def test_a_parquet_table_reads_as_the_csv_does(thyroid_frame: pd.DataFrame, tmp_path: Path):
    pytest.importorskip("pyarrow")
    rows = thyroid_frame[thyroid_frame.referral_source.isin(["STMW", "SVHD"])]
    csv_path = _clinic_csv(rows, tmp_path / "rows.csv")
    parquet = tmp_path / "rows.parquet"
    pd.read_csv(csv_path).to_parquet(parquet)
    a, b = (R.load_regression_data(str(p), target="TT4", group_by="clinic", drop_missing=True)
            for p in (csv_path, parquet))  # fmt: skip
    assert a.group_names == b.group_names == ["STMW", "SVHD"]
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.groups, b.groups)
    assert a.dropped == int(rows.TT4.isna().sum()) and "clinic" not in a.inputs.columns
    spec = R.fit_preprocessing(a, np.arange(len(a)))
    np.testing.assert_array_equal(R.encode(a, spec), R.encode(b, spec))


@pytest.mark.slow
def test_csv_train_then_eval_on_a_file_missing_an_input_column(
    thyroid_frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    data = _clinic_csv(thyroid_frame, tmp_path / "clinics.csv")
    model = tmp_path / "model"
    assert main(["train", "--task", "regression", "--data", str(data), "--target", "TT4",
                 "--group-by", "clinic", "--drop-missing-targets", "--classes", "other,SVI",
                 "--steps", "3", "--meta-batch", "2", "--width", "8", "--quiet",
                 "--out", str(model)]) == 0  # fmt: skip
    card = read_card(model)
    assert card["training"]["group_by"] == "clinic" and card["training"]["val_groups"] == []
    assert card["checkpoint"] == "last.pt"
    lacking = _clinic_csv(thyroid_frame[thyroid_frame.referral_source == "STMW"],
                          tmp_path / "stmw.csv", drop=["T3"])  # fmt: skip
    _fails(["eval", "--model", str(model), "--data", str(lacking), "--drop-missing-targets",
            "--episodes", "2"], capsys, 3, "column 'T3' is missing")  # fmt: skip
    # one clinic's file without the clinic column is one task for adapt; a sex never seen
    # in training is encoded as unknown, with a warning naming it
    stmw = thyroid_frame[thyroid_frame.referral_source == "STMW"].copy()
    first_missing = int(np.flatnonzero(stmw.TT4.isna())[0])
    odd = first_missing + 1 + int(np.flatnonzero(stmw.TT4.iloc[first_missing + 1 :].notna())[0])
    stmw.loc[stmw.index[odd], "sex"] = "X"
    alone = _clinic_csv(stmw, tmp_path / "stmw_alone.csv", drop=["clinic"])
    with caplog.at_level(logging.WARNING):
        assert main(["adapt", "--model", str(model), "--support", str(alone), "--shots", "5",
                     "--members", "2", "--drop-missing-targets", "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    assert "1 row(s) hold categories never seen in training" in caplog.text
    assert f"first at data row {odd} (0-based): sex=X" in caplog.text
    assert read_card(tmp_path / "a")["task"]["group"] == "stmw_alone"


# ------------------------------------------------------------------------------- vectors


@pytest.mark.slow
def test_expression_vectors_train_eval_adapt(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture):  # fmt: skip
    out = tmp_path / "cd74"
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--task", "regression", "--data", "pbmc68k_celltypes", "--target",
                     "CD74", "--classes", "0-4", "--val-classes", "5", "--steps", "6",
                     "--meta-batch", "2", "--width", "16", "--val-episodes", "5", "--quiet",
                     "--out", str(out)]) == 0  # fmt: skip
    assert "'CD4+/CD45RA+/CD25- Naive T' (8 rows)" in caplog.text  # too small: skipped
    card = read_card(out)
    pre = card["preprocessing"]
    ds = load("pbmc68k_celltypes")
    genes = [str(g) for g in ds.meta["gene_names"]]
    assert pre["kind"] == "vector" and pre["input_shape"] == [len(genes) - 1]
    assert "CD74" not in pre["features"] and pre["features"] == [g for g in genes if g != "CD74"]
    trained = np.isin(ds.labels, [0, 3, 4])  # types 1 and 2 have < 20 cells
    x = np.asarray(ds.x, np.float64)[trained][:, [g != "CD74" for g in genes]]
    np.testing.assert_allclose(pre["mean"], x.mean(0), rtol=1e-6, atol=1e-9)
    assert card["training"]["groups"] == [ds.class_names[i] for i in (0, 3, 4)]
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", "pbmc68k_celltypes", "--classes", "8,9",
                 "--episodes", "6", "--members", "2", "--json"]) == 0  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert r["target"] == "CD74" and r["tasks"] == ["CD56+ NK", "Dendritic"] and r["mse"] > 0
    assert main(["adapt", "--model", str(out), "--support", "pbmc68k_celltypes", "--classes",
                 "CD56+ NK", "--shots", "10", "--members", "3", "--out", str(tmp_path / "nk")]) == 0  # fmt: skip
    task = read_card(tmp_path / "nk")["task"]
    assert task["group"] == "CD56+ NK" and task["held_out"]["rows"] == 31 - 10
    # the same cells from an .h5ad whose genes come in another order: put back by name
    anndata = pytest.importorskip("anndata")
    nk = ds.labels == ds.class_names.index("CD56+ NK")
    order = np.random.default_rng(0).permutation(len(genes))
    obs = pd.DataFrame({"cell_type": ["CD56+ NK"] * int(nk.sum())},
                       index=[f"c{i}" for i in range(int(nk.sum()))])  # fmt: skip
    anndata.AnnData(X=np.asarray(ds.x)[nk][:, order], obs=obs,
                    var=pd.DataFrame(index=[genes[i] for i in order])).write_h5ad(tmp_path / "nk.h5ad")  # fmt: skip
    assert main(["adapt", "--model", str(out), "--support", str(tmp_path / "nk.h5ad"), "--shots",
                 "10", "--members", "3", "--out", str(tmp_path / "nk2")]) == 0  # fmt: skip
    assert read_card(tmp_path / "nk2")["task"] == task
    a, b = (torch.load(tmp_path / f / SUPPORT, weights_only=True) for f in ("nk", "nk2"))
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


# -------------------------------------------------------------------------------- errors


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int, *texts: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    for text in texts:
        assert text in err, err


REG = ["train", "--task", "regression", "--data", "thyroid", "--steps", "1", "--quiet"]
BY = ["--group-by", "referral_source"]
T4U = ["--target", "T4U", *BY]


TRAIN_ERRORS = [
    (BY, 2, ["--target is required"]),
    (["--target", "XYZ", *BY], 3, ["column 'XYZ' is not in the table", "'T4U'"]),
    (["--target", "TSH", *BY], 3, ["'TSH' has 842 missing values of 9172",
                                   "first at data row 2", "--drop-missing-targets"]),
    (["--target", "sex", *BY], 3, ["'sex' must be numeric", "data row 0", "'F'"]),
    ([*T4U, "--drop-missing-targets", "--algorithm", "protonet"], 2,
     ["protonet is a classification method", "--task regression takes fomaml, maml, "
      "metasgd, reptile"]),
    ([*T4U, "--ways", "3"], 2, ["--ways 3: a regression episode has one target"]),
    ([*T4U, "--image-size", "28"], 2, ["--image-size does not apply"]),
    ([*T4U, "--backbone", "conv4"], 2, ["regression takes the mlp backbone"]),
    ([*T4U, "--drop-missing-targets", "--classes", "SVHD", "--val-classes", "SVHD"], 2,
     ["--val-classes overlap --classes: ['SVHD']"]),
    ([*T4U, "--drop-missing-targets", "--classes", "WEST"], 3,
     ["fewer than shots + queries = 20 rows: 'WEST' (3 rows)"]),
    (["--target", "T4U", "--group-by", "nope"], 3, ["column 'nope' is not in the table"]),
    (["--target", "T4U"], 2, ["--group-by COLUMN is needed for a table"]),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "code", "texts"), TRAIN_ERRORS)
def test_regression_training_errors(extra, code, texts, tmp_path, capsys):
    _fails([*REG, "--out", str(tmp_path / "m"), *extra], capsys, code, *texts)


def test_vector_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["train", "--task", "regression", "--data", "pbmc68k_celltypes", "--steps", "1",
            "--out", str(tmp_path / "m")]  # fmt: skip
    _fails([*base, "--target", "NOT_A_GENE"], capsys, 3, "no feature 'NOT_A_GENE'")
    _fails([*base, "--target", "CD74", "--group-by", "x"], capsys, 2,
           "--group-by applies to tables")  # fmt: skip


def test_regression_flags_on_a_classifier_are_refused(trained_model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):  # fmt: skip
    _fails(["train", "--data", "thyroid", "--target", "T4U", "--steps", "1", "--out",
            str(tmp_path / "c")], capsys, 2, "--target applies to --task regression")  # fmt: skip
    _fails(["eval", "--model", str(trained_model), "--data", "pbc_blood", "--level", "0.8"],
           capsys, 2, "--level applies to regression models")  # fmt: skip
    _fails(["adapt", "--model", str(trained_model), "--support", "pbc_blood", "--members", "3",
            "--out", str(tmp_path / "a")], capsys, 2, "--members applies to regression models")  # fmt: skip


@pytest.mark.slow
def test_classifier_flags_on_a_regression_model_are_refused(
    t4u_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    ev = ["eval", "--model", str(t4u_model), "--data", "thyroid"]
    _fails([*ev, "--ways", "3"], capsys, 2, "--ways does not apply to a regression model")
    _fails([*ev, "--temperature", "1.5"], capsys, 2, "--temperature does not apply")
    _fails([*ev, "--plots", str(tmp_path)], capsys, 2, "--plots does not apply")
    _fails([*ev, "--target", "TT4"], capsys, 2, "this model predicts 'T4U'")
    _fails([*ev, "--classes", "SVHD"], capsys, 3, "'T4U' has 809 missing values")
    _fails([*ev, "--nproc", "2"], capsys, 2, "--nproc: a regression model is evaluated in one")
    _fails(["adapt", "--model", str(t4u_model), "--support", "thyroid", "--class-names", "a",
            "--out", str(tmp_path / "a")], capsys, 2, "--class-names applies to segmentation")  # fmt: skip
    _fails(["adapt", "--model", str(t4u_model), "--support", "thyroid", "--drop-missing-targets",
            "--out", str(tmp_path / "a")], capsys, 3, "adaptation is to one task",
           "pick one with --classes")  # fmt: skip
    _fails(["adapt", "--model", str(t4u_model), "--support", "thyroid", "--classes", "SVHD",
            "--shots", "500", "--drop-missing-targets", "--out", str(tmp_path / "a")], capsys, 3,
           "'SVHD' has 68 rows, fewer than --shots 500")  # fmt: skip


def test_missing_targets_are_dropped_with_a_count_and_small_groups_skipped(
    caplog: pytest.LogCaptureFixture,
):
    with caplog.at_level(logging.WARNING):
        data = R.load_regression_data("thyroid", target="T4U", group_by="referral_source",
                                      drop_missing=True)  # fmt: skip
    assert "left out 809 of 9172 rows whose 'T4U' is missing" in caplog.text
    assert len(data) == 9172 - 809 and np.isfinite(data.y).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        kept = R.usable_groups(data, R.select_groups(data, None, "--classes"), 20, "--classes")
    assert "'WEST' (3 rows)" in caplog.text
    assert [data.group_names[g] for g in kept] == ["STMW", "SVHC", "SVHD", "SVI", "other"]
    with pytest.raises(DataError, match="unknown group 'Mars'"):
        R.select_groups(data, "Mars", "--classes")


def test_parse_targets_names_the_bad_cell():
    y, keep = R.parse_targets(np.array(["1.5", "", "2"]), "lab", "f.csv", drop_missing=True)
    np.testing.assert_array_equal(y, [1.5, 2.0])
    np.testing.assert_array_equal(keep, [0, 2])
    with pytest.raises(DataError, match=r"'lab' has 1 missing values of 3, first at data row 1"):
        R.parse_targets(np.array(["1.5", "NA", "2"]), "lab", "f.csv", drop_missing=False)
    with pytest.raises(DataError, match=r"data row 2 \(0-based\) holds 'high'"):
        R.parse_targets(np.array(["1", "2", "high"]), "lab", "f.csv", drop_missing=False)
    with pytest.raises(DataError, match="expected a finite number"):
        R.parse_targets(np.array(["1", "inf"]), "lab", "f.csv", drop_missing=False)


def test_an_npz_without_feature_names_takes_a_column_index(tmp_path: Path):
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    path = tmp_path / "cells.npz"
    np.savez(path, X=x, labels=np.repeat([0, 1, 2], 10), class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"no feature names; give a column index 0\.\.4"):
        R.load_regression_data(str(path), target="CD74", group_by=None)
    data = R.load_regression_data(str(path), target="2", group_by=None)
    assert data.kind == "vector" and data.group_names == ["a", "b", "c"] and data.target == "2"
    np.testing.assert_array_equal(data.y, x[:, 2])
    np.testing.assert_array_equal(data.inputs, x[:, [0, 1, 3, 4]])
    np.testing.assert_array_equal(data.counts(), [10, 10, 10])
    pre = R.fit_preprocessing(data, data.rows_of([0, 1]))
    np.testing.assert_allclose(R.encode(data, pre), (data.inputs - data.inputs[:20].mean(0))
                               / data.inputs[:20].std(0), rtol=1e-5, atol=1e-5)  # fmt: skip
