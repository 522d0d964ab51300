"""The command line on a clinical table (``thyroid``, CSV files) and a physiological signal
set (``pig_cvp``): train, eval, adapt, export and predict without torch, with the errors a
user meets (a missing column, an unseen category, a signal shorter than the window)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.cli import main
from medmeta.cli._model import read_card
from medmeta.cli._torchfree import run_without_torch
from medmeta.data.registry import dataset_path

pytestmark = pytest.mark.slow  # train, adapt, export and predict through the CLI, end to end

# thyroid diagnoses: meta-train on five, test on the other three (34-355 rows each)
THYROID_TRAIN = "negative,hypothyroid,non_thyroidal_illness,binding_protein,miscellaneous"
THYROID_TEST = "replacement_therapy,hyperthyroid,antithyroid_treatment"


def _train(args: list[str], out: Path) -> Path:
    assert main(["train", *args, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("table") / "model"
    return _train(["--data", "thyroid", "--classes", THYROID_TRAIN, "--ways", "3", "--shots", "5",
                   "--queries", "10", "--steps", "60", "--width", "64,32", "--val-every", "30"], out)  # fmt: skip


@pytest.fixture(scope="module")
def signal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("signal") / "model"
    return _train(["--data", "pig_cvp", "--classes", "0-39", "--val-classes", "40-45", "--ways", "5",
                   "--shots", "1", "--queries", "4", "--steps", "60", "--width", "16,32",
                   "--signal-length", "1000", "--val-every", "30", "--val-episodes", "20"], out)  # fmt: skip


def test_a_table_trains_with_an_encoding_fitted_on_the_training_rows(table_model: Path):
    pre = read_card(table_model)["preprocessing"]
    assert pre["kind"] == "table" and pre["input_shape"] == [len(_feature_names(pre))]
    assert "TSH" in pre["table"]["numeric"] and "sex" in pre["table"]["categorical"]
    assert read_card(table_model)["backbone"]["name"] == "mlp"


def _feature_names(pre: dict) -> list[str]:
    from medmeta.edge.table import TableSpec

    return TableSpec.from_dict(pre["table"]).feature_names


def test_table_eval_on_new_diagnoses_beats_chance(table_model: Path, capsys):
    code = main(["eval", "--model", str(table_model), "--data", "thyroid", "--classes", THYROID_TEST,
                 "--shots", "5", "--queries", "10", "--episodes", "40", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ways"] == 3 and result["accuracy"] > 1 / 3 + 0.15, result["accuracy"]


def _thyroid_csv(tmp: Path, classes: list[str], per_class: int, *, drop: str | None = None,
                 odd_sex: bool = False) -> Path:  # fmt: skip
    with dataset_path("thyroid") as path, path.open() as f:
        rows = list(csv.DictReader(f))
    picked = [r for c in classes for r in [r for r in rows if r["target"] == c][:per_class]]
    if odd_sex:
        picked[0]["sex"] = "X"
    fields = [f for f in rows[0] if f != drop]
    out = tmp / f"rows_{len(picked)}_{drop}_{odd_sex}.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(picked)
    return out


def test_table_export_and_predict_without_torch_writes_probabilities_ood_and_unknowns(
    table_model: Path, tmp_path: Path
):
    adapted, onnx = tmp_path / "adapted", tmp_path / "model.onnx"
    assert main(["adapt", "--model", str(table_model), "--support", "thyroid", "--classes",
                 THYROID_TEST, "--shots", "5", "--out", str(adapted)]) == 0  # fmt: skip
    assert main(["export", "--model", str(adapted), "--out", str(onnx)]) == 0
    queries = _thyroid_csv(tmp_path, THYROID_TEST.split(","), 20, odd_sex=True)
    out = tmp_path / "preds.csv"
    proc = run_without_torch(["predict", "--model", str(onnx), "--inputs", str(queries),
                              "--out", str(out), "--json"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["inputs"] == 60 and summary["accuracy"] > 1 / 3 + 0.15
    assert summary["rows_with_unknown_categories"] == 1 and "sex=X" in proc.stderr
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert written[0]["unknown"] == "sex=X" and written[1]["unknown"] == ""
    assert {"prediction", "probability", "ood"} <= set(written[0])
    probs = np.array([[float(r[f"p[{c}]"]) for c in THYROID_TEST.split(",")] for r in written])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    missing = _thyroid_csv(tmp_path, THYROID_TEST.split(","), 2, drop="TSH")
    proc = run_without_torch(["predict", "--model", str(onnx), "--inputs", str(missing)])
    assert proc.returncode != 0 and "column 'TSH' is missing" in proc.stderr


def test_a_csv_table_with_one_class_is_refused(tmp_path: Path, capsys):
    one = _thyroid_csv(tmp_path, ["negative"], 10)
    code = main(["train", "--data", str(one), "--steps", "1", "--out", str(tmp_path / "m")])
    assert code != 0
    assert "one class ('negative')" in capsys.readouterr().err


def test_signals_train_with_per_record_standardisation_and_a_window(signal_model: Path):
    card = read_card(signal_model)
    assert card["preprocessing"] == {"kind": "series", "input_shape": [1, 1000], "mean": None,
                                     "std": None, "scale": None, "window": None,
                                     "channels": "auto", "per_record": True, "crop": "center"}  # fmt: skip
    assert card["backbone"]["name"] == "conv1d"


def test_signal_eval_on_held_out_animals_beats_chance(signal_model: Path, capsys):
    code = main(["eval", "--model", str(signal_model), "--data", "pig_cvp", "--classes", "46-51",
                 "--ways", "5", "--shots", "1", "--queries", "5", "--episodes", "40", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] > 0.2 + 0.15, result["accuracy"]


def test_signal_export_predict_without_torch_and_a_too_short_signal(
    signal_model: Path, tmp_path: Path
):
    from medmeta.data import load

    adapted, onnx = tmp_path / "adapted", tmp_path / "model.onnx"
    assert main(["adapt", "--model", str(signal_model), "--support", "pig_cvp", "--classes",
                 "46-50", "--shots", "1", "--out", str(adapted)]) == 0  # fmt: skip
    assert main(["export", "--model", str(adapted), "--out", str(onnx)]) == 0
    pig = load("pig_cvp")
    idx = np.flatnonzero(np.isin(pig.labels, [46, 47, 48, 49, 50]))
    queries = tmp_path / "q.npz"
    np.savez(queries, X=pig.x[idx, 0], labels=pig.labels[idx] - 46,
             class_names=np.asarray(pig.class_names[46:51]))  # fmt: skip
    proc = run_without_torch(["predict", "--model", str(onnx), "--inputs", str(queries), "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"] == len(idx)
    short = tmp_path / "short.npz"
    np.savez(short, X=pig.x[idx[:2], 0, :500], labels=np.zeros(2, np.int64),
             class_names=np.asarray(["a"]))  # fmt: skip
    proc = run_without_torch(["predict", "--model", str(onnx), "--inputs", str(short)])
    assert proc.returncode != 0 and "shorter than the model's window of 1000" in proc.stderr


def test_parquet_tables_and_h5ad_expression_train_from_the_cli(tmp_path: Path, capsys):
    pd = pytest.importorskip("pandas")
    anndata = pytest.importorskip("anndata")
    from medmeta.data import load

    table = pd.read_csv(_thyroid_csv(tmp_path, THYROID_TRAIN.split(",")[:3], 30), dtype=str)
    table.to_parquet(tmp_path / "rows.parquet")
    pq_model = _train(["--data", str(tmp_path / "rows.parquet"), "--ways", "3", "--shots", "2",
                       "--queries", "3", "--steps", "2"], tmp_path / "pq")  # fmt: skip
    pre = read_card(pq_model)["preprocessing"]
    assert pre["kind"] == "table" and "TSH" in pre["table"]["numeric"]

    pbmc = load("pbmc68k_celltypes")
    keep = np.isin(pbmc.labels, [0, 3, 5, 6])
    genes = pd.DataFrame(index=[str(g) for g in pbmc.meta["gene_names"]])
    names = np.asarray(pbmc.class_names)[pbmc.labels[keep]]
    obs = pd.DataFrame({"cell_type": names}, index=[f"cell{i}" for i in range(len(names))])
    anndata.AnnData(X=pbmc.x[keep], obs=obs, var=genes).write_h5ad(tmp_path / "cells.h5ad")
    h5_model = _train(["--data", str(tmp_path / "cells.h5ad"), "--ways", "3", "--shots", "2",
                       "--queries", "3", "--steps", "2"], tmp_path / "h5")  # fmt: skip
    card = read_card(h5_model)
    assert card["preprocessing"]["kind"] == "vector" and card["backbone"]["name"] == "mlp"
    assert card["preprocessing"]["features"] == list(genes.index)
    assert len(card["training"]["classes"]) == 4
    _predict_h5ad_by_gene_name(h5_model, anndata, pd, pbmc.x[keep], genes, obs, tmp_path)
    assert f"lack 1 of the model's {len(genes)} features (e.g. {genes.index[0]})" in (
        capsys.readouterr().err
    )
    no_label = tmp_path / "nolabel.h5ad"
    donors = pd.DataFrame({"donor": ["a"] * 20}, index=[f"cell{i}" for i in range(20)])
    anndata.AnnData(X=pbmc.x[:20], obs=donors, var=genes).write_h5ad(no_label)
    assert main(["train", "--data", str(no_label), "--out", str(tmp_path / "x")]) != 0


def _predict_h5ad_by_gene_name(model, anndata, pd, x, genes, obs, tmp_path: Path) -> None:
    """Unlabelled cells whose genes come in another order get the same predictions (the
    runtime puts them in the model's order by name); a missing gene is named."""
    adapted, onnx = tmp_path / "h5-adapted", tmp_path / "h5.onnx"
    assert main(["adapt", "--model", str(model), "--support", str(tmp_path / "cells.h5ad"),
                 "--shots", "3", "--out", str(adapted)]) == 0  # fmt: skip
    assert main(["export", "--model", str(adapted), "--out", str(onnx)]) == 0
    order = np.random.default_rng(0).permutation(len(genes))
    cells = pd.DataFrame(index=obs.index[:30])
    same = anndata.AnnData(X=x[:30], obs=cells, var=genes)
    shuffled = anndata.AnnData(X=x[:30, order], obs=cells, var=genes.iloc[order])
    preds = []
    for name, data in (("same.h5ad", same), ("shuffled.h5ad", shuffled)):
        data.write_h5ad(tmp_path / name)
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", str(onnx), "--inputs", str(tmp_path / name),
                     "--out", str(out)]) == 0  # fmt: skip
        with out.open() as f:
            preds.append([(r["prediction"], r["probability"]) for r in csv.DictReader(f)])
    assert preds[0] == preds[1] and len(preds[0]) == 30
    assert len({p for p, _ in preds[0]}) > 1  # not one class for every cell
    lacking = anndata.AnnData(X=x[:5, 1:], obs=cells.iloc[:5], var=genes.iloc[1:])
    lacking.write_h5ad(tmp_path / "lacking.h5ad")
    code = main(["predict", "--model", str(onnx), "--inputs", str(tmp_path / "lacking.h5ad")])
    assert code != 0
