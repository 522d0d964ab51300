"""EdgeRegressor and ``predict`` with a regressor: a MAML ensemble adapted to 10 patients of a
clinic of the embedded thyroid table (T4U from the other labs, the rows encoded by a
TableSpec fitted on two other clinics), exported to ONNX and run without PyTorch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from medmeta.algorithms import build
from medmeta.algorithms.ensemble_regressor import EnsembleRegressor, adapt_ensemble
from medmeta.cli import main
from medmeta.cli._torchfree import BLOCK_TORCH, run_without_torch
from medmeta.edge import EdgeRegressor, Preprocessing
from medmeta.edge.cli import main as edge_main
from medmeta.edge.table import TableRows, TableSpec, read_csv_rows
from medmeta.export import regressor_to_onnx
from medmeta.export.metadata import weights_sha256 as onnx_weights_sha256
from medmeta.export.onnx import _export_torchscript
from medmeta.nn import MLP

TARGET = "T4U"
FEATURES = ["age", "sex", "on_thyroxine", "sick", "pregnant", "TSH", "T3", "TT4",
            "referral_source"]  # fmt: skip
COLUMNS = ["input", "prediction", "lower", "upper", "true", "unknown"]


@dataclass
class Deployed:
    """The exported regressor, its PyTorch ensemble and a clinic's query rows (a CSV with
    every column of the table, T4U included; 3 rows lack it)."""

    path: Path
    ensemble: EnsembleRegressor
    preprocessing: Preprocessing
    queries: TableRows
    csv: Path


def _write_csv(rows: TableRows, path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows.columns)
        writer.writerows(rows.values.tolist())
    return path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    rows = read_csv_rows(files("medmeta.datasets") / "thyroid.csv")
    clinic = rows.column("referral_source")
    others = [c for c in rows.columns if c not in FEATURES]
    spec = TableSpec.fit(rows.take(np.isin(clinic, ["SVI", "SVHC"])).drop(others))
    pre = Preprocessing.for_table(spec)
    task = rows.take(clinic == "SVHD")  # a clinic never seen in fitting: 71 patients
    labelled = np.flatnonzero(np.char.strip(task.column(TARGET)) != "")
    support = np.random.default_rng(0).choice(labelled, 10, replace=False)
    queries = task.take(np.setdiff1d(np.arange(len(task)), support))
    sx = torch.from_numpy(pre(task.take(support)))
    sy = torch.tensor(task.take(support).column(TARGET).astype(float), dtype=torch.float32)
    torch.manual_seed(0)
    learner = build("maml", MLP(sx.shape[1], [16], batch_norm=False), 1, task="regression",
                    input_shape=(sx.shape[1],))  # fmt: skip
    ensemble = adapt_ensemble(
        learner, sx, sy, members=5, generator=torch.Generator().manual_seed(1)
    )
    folder = tmp_path_factory.mktemp("thyroid")
    regressor_to_onnx(ensemble, folder / "t4u.onnx", preprocessing=pre, target=TARGET,
                      support_x=sx, support_y=sy, algorithm="maml")  # fmt: skip
    return Deployed(folder / "t4u.onnx", ensemble, pre, queries,
                    _write_csv(queries, folder / "queries.csv"))  # fmt: skip


def _reference(d: Deployed) -> dict[str, np.ndarray]:
    """PyTorch's prediction, bounds and truth for the query rows."""
    iv = d.ensemble.interval(torch.from_numpy(d.preprocessing(d.queries)))
    text = np.char.strip(d.queries.column(TARGET))
    truth = np.array([float(t) if t else np.nan for t in text])
    return {"prediction": iv.mean.numpy(), "lower": iv.lower.numpy(), "upper": iv.upper.numpy(),
            "member_std": iv.member_std.numpy(), "true": truth}  # fmt: skip


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within 1e-5 relative (of the values' scale for values near 0)."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


CHILD = BLOCK_TORCH + textwrap.dedent(
    """
    import numpy as np
    from medmeta.edge import EdgeRegressor
    from medmeta.edge.table import read_csv_rows

    model, rows, out = sys.argv[1:4]
    pred = EdgeRegressor(model).predict(read_csv_rows(rows))
    assert "torch" not in sys.modules
    np.savez(out, prediction=pred.prediction, lower=pred.lower, upper=pred.upper,
             member_std=pred.member_std)
    print("torch-free run ok")
    """
)


def test_parity_and_predict_csv_where_torch_cannot_load(deployed, tmp_path):
    """Two child interpreters where importing torch fails (under a second: no torch to load):
    the EdgeRegressor API and ``medmeta predict`` writing the CSV."""
    want = _reference(deployed)
    (tmp_path / "child.py").write_text(CHILD)
    run = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(deployed.path),
                          str(deployed.csv), str(tmp_path / "api.npz")],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch-free run ok" in run.stdout
    api = np.load(tmp_path / "api.npz")
    for key in ("prediction", "lower", "upper", "member_std"):
        _close(api[key], want[key])
    # the comparison means something: intervals of real width around varied predictions
    assert np.ptp(want["prediction"]) > 0.05 and (want["upper"] - want["lower"]).min() > 0.05

    out = tmp_path / "preds.csv"
    proc = run_without_torch(["predict", "--model", str(deployed.path), "--inputs",
                              str(deployed.csv), "--out", str(out), "--json"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and len(table) == len(deployed.queries) == 61
    assert [r["input"] for r in table] == list(deployed.queries.column("record_id"))
    for key in ("prediction", "lower", "upper"):
        _close(np.array([float(r[key]) for r in table]), want[key])
    truth = want["true"]
    assert [r["true"] == "" for r in table] == list(np.isnan(truth)) and np.isnan(truth).sum() == 3
    assert {r["unknown"] for r in table} == {"referral_source=SVHD"}  # a clinic never fitted
    summary = json.loads(proc.stdout)
    has = ~np.isnan(truth)
    y, p = truth[has], want["prediction"][has].astype(np.float64)
    assert summary["level"] == 0.9 and summary["with_truth"] == 58 and summary["target"] == TARGET
    assert summary["mse"] == pytest.approx(((y - p) ** 2).mean(), rel=1e-5)
    assert summary["r2"] == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum(),
                                          rel=1e-4, abs=1e-5)  # fmt: skip
    inside = (want["lower"][has] <= y) & (y <= want["upper"][has])
    assert summary["coverage"] == pytest.approx(inside.mean())
    assert summary["rows_with_unknown_categories"] == 61


def test_edge_predict_command_writes_json_and_npz(deployed, tmp_path, capsys):
    want = _reference(deployed)
    assert edge_main(["predict", "--model", str(deployed.path), "--inputs", str(deployed.csv),
                      "--out", str(tmp_path / "p.npz")]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        len(lines) == 62
        and "61 inputs; T4U with 90% intervals; on the 58 with a true value: MSE" in lines[-1]
    )
    first = lines[0].split("\t")
    assert first[0] == deployed.queries.column("record_id")[0] and "true" in first[3]
    got = np.load(tmp_path / "p.npz")
    _close(got["prediction"], want["prediction"])
    _close(got["member_std"], want["member_std"])
    np.testing.assert_array_equal(np.isnan(got["true"]), np.isnan(want["true"]))
    assert float(got["level"]) == 0.9 and str(got["target"]) == TARGET
    # rows without the target column: no truth, no metrics
    no_truth = _write_csv(deployed.queries.drop([TARGET]), tmp_path / "rows.csv")
    assert main(["predict", "--model", str(deployed.path), "--inputs", str(no_truth),
                 "--out", str(tmp_path / "p.json"), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert "mse" not in summary and summary["inputs"] == 61
    rows = json.loads((tmp_path / "p.json").read_text())
    assert list(rows[0]) == ["input", "prediction", "lower", "upper", "unknown"]
    _close(np.array([r["upper"] for r in rows]), want["upper"])


def test_predict_errors_name_the_problem(deployed, tmp_path, capsys):
    lacking = _write_csv(deployed.queries.drop(["TT4"]), tmp_path / "lacking.csv")
    argv = ["predict", "--model", str(deployed.path), "--inputs"]
    assert main([*argv, str(lacking)]) == 3
    err = capsys.readouterr().err
    assert "--inputs" in err and "column 'TT4' is missing (the model needs it)" in err
    assert main([*argv, str(deployed.csv), "--support", str(deployed.csv)]) == 2
    assert "--support does not apply to a regressor" in capsys.readouterr().err
    values = deployed.queries.values.copy()
    values[4, deployed.queries.columns.index(TARGET)] = "high"
    bad = _write_csv(TableRows(deployed.queries.columns, values), tmp_path / "bad.csv")
    assert main([*argv, str(bad)]) == 3
    assert "target column 'T4U': row 4 holds 'high', expected a number" in capsys.readouterr().err
    assert main([*argv, str(deployed.csv), "--out", str(tmp_path / "p.txt")]) == 2


@pytest.fixture(scope="module")
def vector_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EnsembleRegressor]:
    """A regressor on 4 named features (genes), adapted to 8 synthetic examples."""
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(8, 4, generator=g)
    sy = 1 + sx[:, 0] - 2 * sx[:, 3]
    torch.manual_seed(0)
    learner = build("metasgd", MLP(4, [8], batch_norm=False), 1, task="regression",
                    input_shape=(4,))  # fmt: skip
    ensemble = adapt_ensemble(learner, sx, sy, members=3)
    path = tmp_path_factory.mktemp("vec") / "genes.onnx"
    pre = Preprocessing.for_vectors(4, features=["g0", "g1", "g2", "g3"])
    regressor_to_onnx(ensemble, path, preprocessing=pre, target="g9", support_x=sx, support_y=sy)
    return path, ensemble


def test_vectors_by_feature_name_and_nan_inputs(vector_model):
    path, ensemble = vector_model
    model = EdgeRegressor(path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = ensemble.interval(torch.from_numpy(x))
    shuffled = np.concatenate([x[:, [2, 0, 3, 1]], np.ones((5, 1), np.float32)], 1)
    got = model.predict(shuffled, features=["g2", "g0", "g3", "g1", "extra"])
    _close(got.prediction, want.mean.numpy())
    _close(got.upper, want.upper.numpy())
    assert got.target == "g9" and len(got) == 5
    with pytest.raises(ValueError, match=r"lack 1 of the model's 4 features \(e\.g\. g1\)"):
        model.predict(x[:, :3], features=["g0", "g2", "g3"])
    with pytest.raises(ValueError, match=r"needs shape \[n, 4\] with n >= 1, got \[5, 3\]"):
        model.predict(x[:, :3], preprocessed=True)
    with pytest.raises(TypeError, match="needs float32 model inputs, got dtype float64"):
        model.predict(x.astype(np.float64), preprocessed=True)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="example 1 contains NaN"):
        model.predict(x)
    with pytest.raises(ValueError, match="example 1 contains NaN"):
        model.predict(x, preprocessed=True)


def test_torch_free_weights_hash_equals_the_onnx_packages(vector_model):
    """medmeta.edge.weights reads the hash from the file's bytes without onnx: the same
    value for dynamo and TorchScript exports and for tensors in the typed fields."""
    from medmeta.edge.weights import metadata_props, weights_sha256
    from medmeta.export.graphs import RegressionIntervalGraph

    path, ensemble = vector_model
    data = path.read_bytes()
    assert weights_sha256(data) == onnx_weights_sha256(onnx.load(str(path)))
    assert json.loads(metadata_props(data)["medmeta"])["role"] == "regressor"
    script = _export_torchscript(RegressionIntervalGraph(ensemble), (torch.randn(3, 4),), ["x"],
                                 ["prediction", "lower", "upper", "member_std"],
                                 {"x": {0: "batch"}}, 18)  # fmt: skip
    assert any(n.op_type == "Constant" for n in script.graph.node)
    assert weights_sha256(script.SerializeToString()) == onnx_weights_sha256(script)
    from onnx import TensorProto, helper

    typed = [helper.make_tensor("a", TensorProto.FLOAT, [2], [1.5, -2.0]),
             helper.make_tensor("b", TensorProto.INT64, [3], [-1, 5, 2**40]),
             helper.make_tensor("c", TensorProto.INT8, [2], [-3, 4]),
             helper.make_tensor("d", TensorProto.DOUBLE, [], [2.5]),
             helper.make_tensor("e", TensorProto.BOOL, [2], [True, False])]  # fmt: skip
    node = helper.make_node("Constant", [], ["k"],
                            value=helper.make_tensor("v", TensorProto.INT32, [2], [-7, 9]))  # fmt: skip
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info(
        "k", TensorProto.INT32, [2])], initializer=typed)  # fmt: skip
    model = helper.make_model(graph)
    assert not any(t.raw_data for t in model.graph.initializer)
    before = weights_sha256(model.SerializeToString())
    assert before == onnx_weights_sha256(model)
    model.graph.initializer[1].int64_data[0] = 7  # a changed value changes the hash
    assert before != weights_sha256(model.SerializeToString()) == onnx_weights_sha256(model)


def test_predict_h5ad_cells_by_gene_name_with_the_target_gene_as_truth(vector_model, tmp_path,
                                                                       capsys):  # fmt: skip
    anndata = pytest.importorskip("anndata")
    pd = pytest.importorskip("pandas")
    path, ensemble = vector_model
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)  # g0..g3, the model's order
    truth = rng.standard_normal(6).astype(np.float32)
    genes = ["g3", "g9", "g1", "g0", "extra", "g2"]  # another order, the target, an extra gene
    table = np.stack([x[:, 3], truth, x[:, 1], x[:, 0], np.ones(6, np.float32), x[:, 2]], 1)
    cells = pd.DataFrame(index=[f"cell{i}" for i in range(6)])
    anndata.AnnData(X=table, obs=cells, var=pd.DataFrame(index=genes)).write_h5ad(
        tmp_path / "cells.h5ad"
    )
    argv = ["predict", "--model", str(path), "--inputs", str(tmp_path / "cells.h5ad"), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    want = ensemble.interval(torch.from_numpy(x))
    rows = summary["predictions"]
    assert [r["input"] for r in rows] == list(cells.index)
    _close(np.array([r["prediction"] for r in rows]), want.mean.numpy())
    np.testing.assert_allclose([r["true"] for r in rows], truth, rtol=1e-6)
    err = (truth - want.mean.numpy()).astype(np.float64)
    assert summary["with_truth"] == 6 and summary["mse"] == pytest.approx((err**2).mean(), 1e-5)
    table[2, 0] = np.nan  # a NaN input value: refused (by the reader here), naming the cell
    anndata.AnnData(X=table, obs=cells, var=pd.DataFrame(index=genes)).write_h5ad(
        tmp_path / "nan.h5ad"
    )
    assert main(["predict", "--model", str(path), "--inputs", str(tmp_path / "nan.h5ad")]) == 3
    assert "nan.h5ad: expression matrix has 1 NaN/infinite values (first in cell 2)" in (
        capsys.readouterr().err
    )


def test_predict_reads_a_parquet_table_like_its_csv(deployed, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.read_csv(deployed.csv).to_parquet(tmp_path / "rows.parquet")  # typed columns, NaN
    results = []
    for path in (deployed.csv, tmp_path / "rows.parquet"):
        assert main(["predict", "--model", str(deployed.path), "--inputs", str(path),
                     "--json"]) == 0  # fmt: skip
        results.append(json.loads(capsys.readouterr().out))
    csv_run, parquet_run = results
    assert parquet_run["predictions"] == csv_run["predictions"]
    assert parquet_run["with_truth"] == 58 and parquet_run["mse"] == csv_run["mse"]
