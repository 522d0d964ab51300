"""``medmeta-edge``, the device's command (in-process here; the built wheel runs it in
test_edge_wheel.py): predict on PNG files and labelled folders, info, and the documented exit
statuses with one-line errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.edge.cli import main
from medmeta.export import ExportResult


def _pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for p, im in zip(paths, images, strict=True):
        Image.fromarray(im).save(p)
    return paths


def test_predict_labelled_folder_prints_accuracy(exported: ExportResult, task, tmp_path, capsys):
    for c, name in enumerate(task.class_names):
        _pngs(tmp_path / "labelled" / name, task.query_raw[task.query_y == c])
    code = main(["predict", "--model", str(exported.classifier), "--inputs",
                 str(tmp_path / "labelled"), "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"] == len(task.query_raw) and out["accuracy"] > 0.6
    assert {p["true"] for p in out["predictions"]} == set(task.class_names)


def test_predict_enrols_support_folder_and_writes_csv(
    exported: ExportResult, task, tmp_path, capsys
):
    _pngs(tmp_path / "enrol" / task.new_class_name, task.new_support_raw)
    files = _pngs(tmp_path / "queries", task.new_query_raw)
    out_csv = tmp_path / "preds.csv"
    code = main(["predict", "--model", str(exported.embedder), "--support", str(tmp_path / "enrol"),
                 "--inputs", *map(str, files[:5]), "--out", str(out_csv)])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("5 inputs")
    assert out_csv.read_text().splitlines()[0].startswith("input,prediction,probability,ood")


def test_info_prints_metadata(exported: ExportResult, capsys):
    assert main(["info", "--model", str(exported.embedder)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["role"] == "embedder" and meta["enrolled_support"] is True


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["predict", "--model", "{tmp}/missing.onnx", "--inputs", "a.png"],
            4,
            "no such model file",
        ),
        (["predict", "--model", "{model}", "--inputs", "{tmp}/scores.npz"], 3, "not an image file"),
        (["predict", "--model", "{model}", "--inputs", "{tmp}/empty"], 3, "no image files"),
        (
            [
                "predict",
                "--model",
                "{model}",
                "--support",
                "{tmp}/nothing",
                "--inputs",
                "{tmp}/empty",
            ],
            3,
            "expected a folder with one sub-folder",
        ),
        (
            ["predict", "--model", "{model}", "--inputs", "{tmp}/broken.png"],
            3,
            "broken.png: not a readable image",
        ),
        (["predict", "--model", "{model}"], 2, "--inputs"),
    ],
)
def test_errors_are_one_line_with_the_documented_status(
    exported: ExportResult, tmp_path: Path, capsys, argv, code, message
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "scores.npz").write_bytes(b"")
    argv = [a.format(tmp=tmp_path, model=exported.embedder) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medmeta-edge {argv[0]}: error:") and message in err
    assert len(err.splitlines()) == 1
