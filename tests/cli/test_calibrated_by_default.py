"""Probabilities are calibrated by default: ``medmeta train`` without ``--val-classes`` holds
out examples of the training classes to fit the temperature (and says so in its output and the
model card), ``predict`` then gives probabilities below 1 on a class never seen; where nothing
can be held out, train and predict warn that the probabilities are uncalibrated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.cli import main
from medmeta.cli._model import read_card
from medmeta.data import load

pytestmark = pytest.mark.slow  # train, export and predict through the CLI

SMALL_RUN = ["--ways", "3", "--shots", "2", "--queries", "4", "--steps", "12", "--meta-batch", "2",
             "--width", "16", "--val-every", "6", "--val-episodes", "20", "--quiet"]  # fmt: skip


def _pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def test_train_without_val_classes_calibrates_and_predict_is_not_all_certain(
    tmp_path: Path, capsys, caplog
):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="medmeta"):
        assert main(["train", "--data", "pbc_blood", "--classes", "0-4", *SMALL_RUN,
                     "--out", str(out)]) == 0  # fmt: skip
    assert "no --val-classes: holding out" in caplog.text
    assert (
        "held-out examples (20% of each class) of the training classes" in capsys.readouterr().out
    )
    card = read_card(out)
    assert card["temperature"] is not None and card["temperature"] != 1.0
    assert "held-out examples" in card["calibration"]
    assert card["checkpoint"] == "best.pt"  # the held-out examples also select the checkpoint

    onnx = tmp_path / "model.onnx"
    assert main(["export", "--model", str(out), "--support", "pbc_blood", "--classes", "0-2",
                 "--shots", "5", "--out", str(onnx)]) == 0  # fmt: skip
    blood = load("pbc_blood")
    unseen = _pngs(tmp_path / "unseen", blood.x[blood.labels == 7][:20])  # a class never trained on
    capsys.readouterr()
    caplog.clear()
    assert main(["predict", "--model", str(onnx), "--inputs", str(unseen), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = [p["probability"] for p in result["predictions"]]
    assert np.mean(top) < 0.99 and min(top) < 0.95, top
    assert "held-out examples" in result["calibration"]
    assert "UNCALIBRATED" not in caplog.text


def test_without_data_to_hold_out_train_and_predict_warn(tmp_path: Path, capsys, caplog):
    blood = load("pbc_blood")
    data = tmp_path / "tiny"
    for c in range(3):  # 8 images a class: one episode (2 + 4) each, nothing to spare
        _pngs(data / blood.class_names[c], blood.x[blood.labels == c][:8])
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="medmeta"):
        assert main(["train", "--data", str(data), *SMALL_RUN, "--out", str(out)]) == 0
    assert "probabilities are UNCALIBRATED" in caplog.text
    assert "probabilities: UNCALIBRATED" in capsys.readouterr().out
    card = read_card(out)
    assert card["temperature"] is None and card["calibration"] is None

    onnx = tmp_path / "model.onnx"
    assert main(["export", "--model", str(out), "--support", str(data), "--shots", "2",
                 "--out", str(onnx)]) == 0  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medmeta"):
        assert (
            main(["predict", "--model", str(onnx), "--inputs", str(data / blood.class_names[0])])
            == 0
        )
    assert "probabilities are UNCALIBRATED" in caplog.text
