"""``medmeta export`` and ``medmeta predict`` round trip on real images; predict runs in a
process where torch cannot be imported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.cli import main
from medmeta.cli._torchfree import run_without_torch
from medmeta.data import load

pytestmark = pytest.mark.slow  # train, adapt, export and predict through the CLI, end to end


@pytest.fixture(scope="module")
def adapted_folder(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "task"
    assert main(["adapt", "--model", str(trained_model), "--support", "pbc_blood", "--classes", "5-7",
                 "--shots", "5", "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def exported(adapted_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert (
        main(["export", "--model", str(adapted_folder), "--form", "both", "--out", str(out)]) == 0
    )
    return out


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw uint8 images of the three novel classes, in the flat NPZ layout."""
    blood = load("pbc_blood")
    rng = np.random.default_rng(1)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(blood.labels == c), 20, replace=False)
                                  for c in (5, 6, 7)]))  # fmt: skip
    path = tmp_path_factory.mktemp("q") / "queries.npz"
    np.savez(
        path,
        images=blood.x[idx],
        labels=blood.labels[idx],
        class_names=np.asarray(blood.class_names),
    )
    return path


def test_export_writes_classifier_and_enrolment_pair(exported: Path):
    names = sorted(p.name for p in exported.parent.iterdir())
    assert "model.onnx" in names and any("embed" in n for n in names), names


def test_predict_without_torch_matches_the_adapted_model(
    exported: Path, queries: Path, tmp_path: Path
):
    out = tmp_path / "preds.npz"
    proc = run_without_torch(["predict", "--model", str(exported), "--inputs", str(queries),
                              "--out", str(out), "--json"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["inputs"] == 60 and summary["classes"] == ["monocyte", "neutrophil", "platelet"]
    assert summary["accuracy"] > 1 / 3 + 0.25
    probs = np.load(out)["probabilities"]
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_predict_with_enrolment_on_the_device(exported: Path, queries: Path, tmp_path: Path):
    embedder = next(p for p in exported.parent.iterdir() if "embed" in p.name)
    out = tmp_path / "preds.csv"
    proc = run_without_torch(["predict", "--model", str(embedder), "--support", "pbc_blood",
                              "--classes", "5-7", "--inputs", str(queries), "--out", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout.splitlines()[-1]
    lines = out.read_text().splitlines()
    assert len(lines) == 61 and lines[0].startswith("input,prediction,probability,ood,true")


def test_predict_single_image_files(exported: Path, tmp_path: Path, capsys):
    from PIL import Image

    blood = load("pbc_blood")
    files = []
    for c in (5, 7):  # a monocyte and a platelet
        i = int(np.flatnonzero(blood.labels == c)[0])
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(blood.x[i]).save(files[-1])
    assert main(["predict", "--model", str(exported), "--inputs", *map(str, files)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith(str(files[0])) and out[-1].startswith("2 inputs")


@pytest.mark.parametrize(
    ("make", "code", "needle"),
    [
        (lambda p: p.write_bytes(b"not an onnx file"), 4, "cannot be loaded as an ONNX model"),
        (lambda p: None, 4, "no such model file"),
    ],
)
def test_predict_rejects_bad_model_files(make, code, needle, queries: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad.onnx"
    make(bad)
    assert main(["predict", "--model", str(bad), "--inputs", str(queries)]) == code
    err = capsys.readouterr().err
    assert err.startswith("medmeta predict: error:") and "Traceback" not in err
    assert needle in err


def test_export_needs_a_support_set_for_a_trained_model(
    trained_model: Path, tmp_path: Path, capsys
):
    assert main(["export", "--model", str(trained_model), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--support" in capsys.readouterr().err


def test_int8_export_reports_parity_on_held_out_examples(
    trained_model: Path, tmp_path: Path, capsys
):
    """The int8 parity is measured on the task's examples outside the support set it was
    calibrated on, and printed as a readable summary with the accuracy change's CI."""
    out = tmp_path / "model.onnx"
    argv = ["export", "--model", str(trained_model), "--support", "pbc_blood", "--classes", "5-7",
            "--shots", "5", "--int8", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    parity = json.loads(capsys.readouterr().out)["int8_parity"]
    blood = load("pbc_blood")
    held_out = (
        int(np.isin(blood.labels, [5, 6, 7]).sum()) - 15
    )  # every task example but the support
    assert parity["examples"] == held_out and parity["on"].startswith("held-out examples")
    assert 0.9 <= parity["top1_agreement"] <= 1.0
    assert 0 <= parity["accuracy_change_ci95"] < 0.05
    assert main([*argv[:-1], str(tmp_path / "again.onnx")]) == 0
    text = capsys.readouterr().out
    assert f"int8 parity on {held_out} held-out examples" in text
    assert "top-1 agreement" in text and "(change " in text and "points, 95% CI)" in text
