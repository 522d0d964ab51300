"""``medmeta train`` 5-way with 3 validation classes, then ``medmeta eval`` and ``adapt``
3-way (a rare-disease set with fewer classes than training had), for a metric learner and
MAML; a model with an N-way output layer refuses more ways with a one-line error; a model
folder that lost best.pt says so and drops the temperature fitted on it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from medmeta.cli import main
from medmeta.cli._model import read_card

TRAIN = [
    "--data", "pbc_blood", "--classes", "0-4", "--val-classes", "5-7", "--ways", "5",
    "--shots", "1", "--queries", "2", "--steps", "4", "--meta-batch", "1", "--width", "8",
    "--val-every", "2", "--val-episodes", "6", "--quiet", "--json",
]  # fmt: skip
pytestmark = pytest.mark.slow  # two CLI trainings

PARAMS = {"protonet": [], "maml": ["--param", "inner_steps=1", "--param", "eval_steps=2"]}


@pytest.fixture(scope="module", params=sorted(PARAMS))
def five_way_model(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fewer") / request.param
    argv = ["train", *TRAIN, "--algorithm", request.param, *PARAMS[request.param]]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_train_five_way_validates_three_way(five_way_model: Path, capsys):
    card = read_card(five_way_model)
    assert card["episodes"]["ways"] == 5
    assert card["training"]["val_classes"] == ["monocyte", "neutrophil", "platelet"]
    assert 0.0 <= card["training"]["val_accuracy"] <= 1.0 and card["temperature"] > 0
    assert card["checkpoint"] == "best.pt"


def test_eval_and_adapt_three_way(five_way_model: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    code = main(["eval", "--model", str(five_way_model), "--data", "pbc_blood", "--classes",
                 "5-7", "--ways", "3", "--shots", "1", "--queries", "4", "--episodes", "6",
                 "--json", "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ways"] == 3 and set(result["per_class"]) == {"monocyte", "neutrophil",
                                                                 "platelet"}  # fmt: skip
    assert len(result["confusion"]) == 3 and 0.0 <= result["accuracy"] <= 1.0
    out = tmp_path / "adapted"
    code = main(["adapt", "--model", str(five_way_model), "--support", "pbc_blood",
                 "--classes", "5-7", "--shots", "2", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["monocyte", "neutrophil", "platelet"]


def test_more_ways_than_the_output_layer_is_refused(five_way_model: Path, capsys):
    capsys.readouterr()
    code = main(["eval", "--model", str(five_way_model), "--data", "pbc_blood", "--classes",
                 "0-5", "--ways", "6", "--shots", "1", "--queries", "2", "--episodes", "2",
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    if five_way_model.name == "maml":
        assert code == 2 and "classifies at most 5 classes" in err[0], err
        assert err[0].startswith("medmeta eval: error:")
    else:  # a metric learner classifies any N
        assert code == 0, err


def test_missing_best_checkpoint_is_said_and_its_temperature_dropped(
    five_way_model: Path, tmp_path: Path, capsys, caplog
):
    copy = tmp_path / "copy"
    shutil.copytree(five_way_model, copy)
    (copy / "best.pt").unlink()
    capsys.readouterr()
    caplog.set_level(logging.WARNING, logger="medmeta")
    code = main(["eval", "--model", str(copy), "--data", "pbc_blood", "--classes", "5-7",
                 "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "2",
                 "--json", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "names best.pt, which is missing; using last.pt" in caplog.text  # a logged warning
    assert json.loads(captured.out)["temperature"] is None
