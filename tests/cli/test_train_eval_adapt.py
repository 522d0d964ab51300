"""``medmeta train``, ``eval`` and ``adapt`` on real blood-cell images, with their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.cli import main
from medmeta.cli._model import load_model, read_card


def test_train_writes_a_model_folder_with_card_checkpoints_and_logs(trained_model: Path):
    names = {p.name for p in trained_model.iterdir()}
    assert {
        "model.json",
        "best.pt",
        "last.pt",
        "log.csv",
        "log.json",
        "learning_curves.png",
    } <= names
    card = read_card(trained_model)
    assert card["algorithm"] == "protonet"
    assert card["training"]["classes"] == ["basophil", "eosinophil", "erythroblast",
                                           "immature_granulocyte", "lymphocyte"]  # fmt: skip
    assert card["training"]["val_classes"] == ["monocyte", "neutrophil", "platelet"]
    assert card["preprocessing"]["input_shape"] == [3, 28, 28]
    assert card["backbone"] == {
        "name": "conv4",
        "input_shape": [3, 28, 28],
        "kwargs": {"hidden": 16},
    }
    assert card["temperature"] > 0
    model = load_model(trained_model)
    assert model.learner.ways == 3 and not model.learner.training


def test_train_again_resumes_instead_of_retraining(trained_model: Path, train_args, capsys):
    before = torch.load(trained_model / "last.pt", weights_only=True)["step"]
    assert main(["train", *train_args, "--out", str(trained_model), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == before == 12


def test_eval_json_reports_accuracy_well_above_chance_with_a_ci(trained_model: Path, capsys):
    code = main(["eval", "--model", str(trained_model), "--data", "pbc_blood", "--classes", "5-7",
                 "--shots", "5", "--queries", "10", "--episodes", "40", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ways"] == 3 and result["episodes"] == 40
    assert result["accuracy"] > 1 / 3 + 0.25, result["accuracy"]
    assert 0 < result["ci95"] < 0.2
    assert set(result["per_class"]) == {"monocyte", "neutrophil", "platelet"}
    assert result["temperature"] == pytest.approx(read_card(trained_model)["temperature"])


def test_eval_text_output_and_plots(trained_model: Path, tmp_path: Path, capsys):
    code = main(["eval", "--model", str(trained_model), "--data", "pbc_blood", "--classes", "5-7",
                 "--episodes", "10", "--quiet", "--temperature", "none", "--plots", str(tmp_path)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "3-way 5-shot, 10 episodes: accuracy" in out and "platelet" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "confusion_matrix.png",
        "per_class.png",
        "reliability.png",
    }


def test_adapt_writes_a_standalone_folder_and_reports_held_out_accuracy(
    trained_model: Path, tmp_path: Path, capsys
):
    out = tmp_path / "adapted"
    code = main(["adapt", "--model", str(trained_model), "--support", "pbc_blood", "--classes",
                 "monocyte,neutrophil,platelet", "--shots", "5", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == ["monocyte", "neutrophil", "platelet"] and info["shots"] == 5
    assert info["held_out_examples"] == 3 * 600 - 15
    assert info["held_out_accuracy"] > 1 / 3 + 0.25
    model = load_model(out)
    assert model.is_adapted
    x, y, names = model.support()
    assert (
        x.shape == (15, 3, 28, 28)
        and x.dtype == torch.float32
        and y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    )
    assert names == info["classes"]


def test_config_file_sets_defaults_and_flags_win(tmp_path: Path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "pbc_blood"\nclasses = "0-4"\nways = 3\nshots = 1\nqueries = 2\n'
                   'steps = 2\nmeta-batch = 1\nwidth = "8"\nquiet = true\n')  # fmt: skip
    out = tmp_path / "m"
    assert main(["train", "--config", str(cfg), "--steps", "3", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    card = read_card(out)
    assert card["episodes"] == {"ways": 3, "shots": 1, "queries": 2}
    assert card["backbone"]["kwargs"] == {"hidden": 8}


def _image_folder(root: Path, counts: dict[str, int]) -> None:
    from PIL import Image

    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((28, 28, 3), 20 * i, np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--out", "x"], 2, "--data"),
        (["train", "--data", "pbc_blood", "--out", "x", "--ways", "three"], 2, "--ways"),
        (["train", "--data", "no/such/file.npz", "--out", "x"], 3, "no/such/file.npz"),
        (["train", "--data", "not_a_dataset", "--out", "x"], 3, "not an embedded dataset"),
        (
            ["train", "--data", "pbc_blood", "--classes", "0-2", "--ways", "5", "--out", "x"],
            3,
            "--ways",
        ),
        (["train", "--data", "pbc_blood", "--classes", "0-12", "--out", "x"], 3, "out of range"),
        (["train", "--data", "pbc_blood", "--algorithm", "magic", "--out", "x"], 2, "--algorithm"),
        (["eval", "--model", "no_such_folder", "--data", "pbc_blood"], 4, "not a model folder"),
        (["train", "--config", "missing.toml", "--out", "x"], 2, "missing.toml"),
        # an existing file as the output folder, or above it: usage, before any work
        (["train", "--data", "pbc_blood", "--out", "afile"], 2, "--out afile: expected a folder"),
        (["train", "--data", "pbc_blood", "--out", "afile/run"], 2, "(afile is a file)"),
        (["adapt", "--model", "m", "--support", "pbc_blood", "--out", "afile"], 2, "--out afile"),
        (["demo", "--out", "afile"], 2, "--out afile"),
        # counts out of range are usage errors naming the flag
        (
            ["train", "--data", "pbc_blood", "--ways", "1", "--out", "x"],
            2,
            "--ways: must be an integer >= 2, got 1",
        ),
        (["eval", "--model", "m", "--data", "pbc_blood", "--ways", "1"], 2, "--ways"),
        (["train", "--data", "pbc_blood", "--shots", "0", "--out", "x"], 2, "--shots"),
        (["eval", "--model", "m", "--data", "pbc_blood", "--episodes", "0"], 2, "--episodes"),
        # a data error names the folder, not "dataset:"
        (
            ["train", "--data", "small", "--ways", "2", "--shots", "5", "--out", "x"],
            3,
            "small: 2 class(es) have fewer than shots + queries",
        ),
    ],
)
def test_errors_are_one_line_with_a_meaningful_exit_status(
    argv, code, needle, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    _image_folder(tmp_path / "small", {"a": 2, "b": 9})
    assert main(argv) == code
    # the data line may come first (train reports its data before work starts)
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("data: ")]
    assert err and err[0].startswith(f"medmeta {argv[0]}: error:") and needle in err[0], err
    assert "Traceback" not in "\n".join(err)


def test_unknown_config_key_is_a_usage_error(tmp_path: Path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("wayz = 3\n")
    assert main(["train", "--config", str(cfg), "--data", "pbc_blood", "--out", "x"]) == 2
    assert "unknown key 'wayz'" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path):
    with pytest.raises(Exception, match="not an embedded dataset"):
        main(["--debug", "train", "--data", "not_a_dataset", "--out", str(tmp_path)])


def test_help_lists_commands_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "train", "eval", "adapt", "export", "predict", "datasets", "bench",
                 "examples:", "exit status:"):  # fmt: skip
        assert word in out
