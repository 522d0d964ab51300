"""``regressor_to_onnx``: an adapted bootstrap ensemble of MAML-family regressors as one ONNX
file whose outputs equal the ensemble's interval, with its metadata and weights hash."""

from __future__ import annotations

import csv
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers_edge import edit_onnx_metadata, tamper_weights
from medmeta.algorithms import build
from medmeta.algorithms.ensemble_regressor import EnsembleRegressor, adapt_ensemble
from medmeta.edge import EdgeModel, EdgeModelError, EdgeRegressor, Preprocessing
from medmeta.edge.schema import REGRESSION_OUTPUTS
from medmeta.export import (
    ExportError,
    read_metadata,
    regressor_to_onnx,
    to_onnx,
    verify_weights,
    weights_sha256,
)
from medmeta.nn import MLP

F, K = 6, 12
NAMES = [f"lab_{i}" for i in range(F)]


def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support ``[K, F]``, ``[K]`` and queries ``[9, F]`` of y = 5 + 2 x0 - x1 + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(K + 9, F, generator=g)
    y = 5 + 2 * x[:, 0] - x[:, 1] + 0.3 * torch.randn(K + 9, generator=g)
    return x[:K], y[:K], x[K:]


def _ensemble(name: str, batch_norm: bool = False, members: int = 4) -> EnsembleRegressor:
    sx, sy, _ = _task()
    torch.manual_seed(0)
    learner = build(name, MLP(F, [16], batch_norm=batch_norm), 1, task="regression",
                    input_shape=(F,))  # fmt: skip
    return adapt_ensemble(learner, sx, sy, members=members, level=0.9,
                          generator=torch.Generator().manual_seed(3))  # fmt: skip


def _export(ensemble: EnsembleRegressor, path: Path, **kwargs):
    sx, sy, _ = _task()
    pre = Preprocessing.for_vectors(F, features=NAMES)
    return regressor_to_onnx(ensemble, path, preprocessing=pre, target="TSH", support_x=sx,
                             support_y=sy, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def maml_file(tmp_path_factory: pytest.TempPathFactory):
    ensemble = _ensemble("maml")
    path = tmp_path_factory.mktemp("reg") / "reg.onnx"
    held = {"rows": 40, "mse": 0.31, "r2": float("nan"), "coverage": 0.9, "curve": [1.0, 2.0]}
    result = _export(ensemble, path, algorithm="maml", held_out=held,
                     training={"steps": 5, "groups": ["a", "b"], "val_r2": 0.2})  # fmt: skip
    return ensemble, result


@pytest.mark.parametrize(
    ("name", "batch_norm"),
    [("maml", False), ("fomaml", False), ("metasgd", False), ("reptile", False), ("maml", True)],
)
def test_onnx_outputs_equal_the_ensembles_interval(name, batch_norm, tmp_path):
    ensemble = _ensemble(name, batch_norm)
    result = _export(ensemble, tmp_path / f"{name}.onnx", algorithm=name)
    _, _, queries = _task()
    model = EdgeRegressor(result.path)
    for x in (queries, queries[:1]):  # the batch axis is dynamic
        got = model.predict(x.numpy(), preprocessed=True)
        want = ensemble.interval(x)
        scale = float(want.upper.abs().max())
        for key, ref in zip(("prediction", "lower", "upper", "member_std"),
                            (want.mean, want.lower, want.upper, want.member_std), strict=True):  # fmt: skip
            np.testing.assert_allclose(getattr(got, key), ref.numpy(), rtol=1e-5,
                                       atol=1e-6 * scale, err_msg=f"{name} {key}")  # fmt: skip
    # the comparison means something: a real interval around the prediction
    assert (got.lower < got.prediction).all() and (got.prediction < got.upper).all()
    want = ensemble.interval(queries)
    assert float(want.member_std.max()) > 1e-4 and float(ensemble.noise_std) > 1e-3
    assert (
        result.relative_diff < 1e-5
        and result.max_abs_diff == result.metadata["check"]["max_abs_diff"]
    )


def test_metadata_describes_the_regressor(maml_file):
    ensemble, result = maml_file
    meta = read_metadata(result.path)
    assert meta == result.metadata
    assert meta["role"] == "regressor" and meta["task"] == "regression"
    assert meta["algorithm"] == "maml" and meta["target"] == {"name": "TSH"}
    assert meta["outputs"] == list(REGRESSION_OUTPUTS)
    assert meta["input_shape"] == [F] and meta["n_features"] == F
    assert meta["interval"] == {"members": 4, "level": 0.9, "z": pytest.approx(1.6448536),
                                "noise_std": pytest.approx(float(ensemble.noise_std))}  # fmt: skip
    assert Preprocessing.from_dict(meta["preprocessing"]).features == tuple(NAMES)
    # scalars only; NaN becomes null
    assert meta["held_out"] == {"rows": 40, "mse": 0.31, "r2": None, "coverage": 0.9}
    assert meta["training"] == {"steps": 5, "val_r2": 0.2}
    _, sy, _ = _task()
    assert meta["support_size"] == K
    assert meta["support_targets"]["mean"] == pytest.approx(float(sy.mean()), rel=1e-6)
    assert meta["weights_sha256"] == weights_sha256(onnx.load(str(result.path)))
    assert verify_weights(result.path)
    model = EdgeRegressor(result.path)
    assert (model.target, model.level, model.members) == ("TSH", 0.9, 4)


def test_tampered_weights_are_refused(maml_file, tmp_path):
    _, result = maml_file
    tamper_weights(result.path, tmp_path / "tampered.onnx")
    assert not verify_weights(tmp_path / "tampered.onnx")
    with pytest.raises(EdgeModelError, match="weights do not match the weights_sha256"):
        EdgeRegressor(tmp_path / "tampered.onnx")


def test_each_runtime_refuses_the_other_kind_of_model(maml_file, tmp_path):
    _, result = maml_file
    with pytest.raises(EdgeModelError, match=r"is a regressor.*EdgeRegressor"):
        EdgeModel(result.path)
    g = torch.Generator().manual_seed(0)
    sx, sy = torch.randn(8, F, generator=g), torch.arange(8) % 2
    torch.manual_seed(0)
    learner = build("maml", MLP(F, [8], batch_norm=False), 2, input_shape=(F,))
    classifier = to_onnx(learner, tmp_path / "clf.onnx", support_x=sx, support_y=sy).classifier
    with pytest.raises(EdgeModelError, match=r"is a classifier, not a regressor.*EdgeModel"):
        EdgeRegressor(classifier)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("interval"), "lacks required keys \\['interval'\\]"),
        (lambda m: m["interval"].update(level=1.5), "metadata interval must be"),
        (lambda m: m["interval"].update(members=1), "metadata interval must be"),
        (lambda m: m.update(target="TSH"), "metadata target must be"),
        (lambda m: m.update(outputs=["prediction"]), "a regressor's outputs must be"),
        (lambda m: m.update(task="classification"), "task must be 'regression'"),
    ],
)
def test_invalid_regressor_metadata_is_refused(maml_file, tmp_path, edit, match):
    _, result = maml_file
    edit_onnx_metadata(result.path, tmp_path / "bad.onnx", edit)
    with pytest.raises(EdgeModelError, match=match):
        EdgeRegressor(tmp_path / "bad.onnx")


def test_bad_arguments_are_named(maml_file, tmp_path):
    ensemble, _ = maml_file
    sx, sy, _ = _task()
    pre = Preprocessing.for_vectors(F)
    cases = [
        (dict(ensemble=torch.nn.Linear(F, 1)), TypeError, "ensemble: expected an EnsembleRegr"),
        (dict(support_x=sx.clone().fill_(float("nan"))), ValueError, "support_x: contains NaN"),
        (dict(support_x=sx[:, :4]), ValueError, "differ from the preprocessing's input_shape"),
        (dict(support_y=sy[:3]), ValueError, "support_y: expected \\[12\\] targets"),
        (dict(target={"unit": "mU/l"}), ValueError, "target: expected a column name"),
        (dict(opset=12), ValueError, "opset: expected an int >= 17"),
    ]
    for change, error, match in cases:
        kwargs = {"ensemble": ensemble, "path": tmp_path / "x.onnx", "preprocessing": pre,
                  "target": "TSH", "support_x": sx, "support_y": sy, **change}  # fmt: skip
        with pytest.raises(error, match=match):
            regressor_to_onnx(**kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_check_writes_no_file(maml_file, tmp_path, monkeypatch):
    from medmeta.export import regression

    ensemble, _ = maml_file
    run = regression._run_onnx
    # onnxruntime off by 1e-3 of the target's scale (about 10): over the 1e-4 tolerance
    monkeypatch.setattr(regression, "_run_onnx", lambda m, f: [o + 1e-2 for o in run(m, f)])
    with pytest.raises(ExportError, match=r"differs from eager PyTorch by 0\.01"):
        _export(ensemble, tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


@pytest.mark.slow  # train, adapt, export and predict through the CLI (about 20 s)
def test_cli_train_adapt_export_predict_agree(tmp_path, capsys):
    """``medmeta export`` of an adapted thyroid folder; ``medmeta predict`` (torch blocked) on
    the clinic's rows that were not in the support set reproduces the adapted folder's
    held-out MSE and coverage."""
    from medmeta.cli import main
    from medmeta.cli._model import load_model
    from medmeta.cli._reg_workflow import load_ensemble
    from medmeta.cli._torchfree import run_without_torch
    from medmeta.edge.table import read_csv_rows

    train, adapted, out = tmp_path / "train", tmp_path / "adapted", tmp_path / "t4u.onnx"
    assert main(["train", "--task", "regression", "--data", "thyroid", "--target", "T4U",
                 "--group-by", "referral_source", "--classes", "SVI,SVHC", "--val-classes",
                 "STMW", "--drop-missing-targets", "--steps", "4", "--shots", "5", "--queries",
                 "5", "--meta-batch", "2", "--width", "16", "--val-every", "2",
                 "--val-episodes", "4", "--quiet", "--out", str(train)]) == 0  # fmt: skip
    export = ["export", "--out", str(out), "--model"]
    assert main([*export, str(train)]) == 2  # trained, not adapted: adapt first
    assert "not adapted to a task; run `medmeta adapt --model" in capsys.readouterr().err
    assert main(["adapt", "--model", str(train), "--support", "thyroid", "--classes", "SVHD",
                 "--shots", "10", "--drop-missing-targets", "--out", str(adapted)]) == 0  # fmt: skip
    assert main([*export, str(adapted), "--int8"]) == 2 and not out.exists()
    assert "--int8: not for a regression model" in capsys.readouterr().err
    assert main([*export, str(adapted)]) == 0
    model = load_model(adapted)
    meta = read_metadata(out)
    assert meta["interval"]["members"] == 10 and meta["target"]["name"] == "T4U"
    assert meta["held_out"] == pytest.approx(model.card["task"]["held_out"])
    assert meta["training"]["steps"] == 4 and meta["algorithm"] == "maml"

    rows = read_csv_rows(files("medmeta.datasets") / "thyroid.csv")
    rows = rows.take((rows.column("referral_source") == "SVHD") & (rows.column("T4U") != ""))
    x = model.preprocessing(rows)
    support_x, _, _ = model.support()
    in_support = (np.abs(x[:, None] - support_x.numpy()[None]).max(-1) == 0).any(1)
    assert in_support.sum() == 10 and len(rows) == 68
    held = rows.take(~in_support)
    path = tmp_path / "held_out.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(held.columns)
        writer.writerows(held.values.tolist())
    want = load_ensemble(model).interval(torch.from_numpy(model.preprocessing(held)))
    proc = run_without_torch(["predict", "--model", str(out), "--inputs", str(path), "--json"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    got = np.array([r["prediction"] for r in summary["predictions"]])
    np.testing.assert_allclose(got, want.mean.numpy(), rtol=1e-5, atol=1e-6)
    card = model.card["task"]["held_out"]
    assert summary["with_truth"] == card["rows"] == 58
    assert summary["mse"] == pytest.approx(card["mse"], rel=1e-5)
    assert summary["coverage"] == pytest.approx(card["coverage"])
