"""DICOM and NIfTI on the command line, from the real sample files: a class folder of DICOM
slices trains with a CT window that the model keeps in its preprocessing, ``predict`` takes a
DICOM file, a DICOM series folder and a NIfTI volume (every slice an input) and says what it
read and how it is windowed and resized; ``train`` and ``adapt`` print a data line first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.cli import main
from medmeta.cli._model import read_card

pytestmark = pytest.mark.slow  # trains and exports a small model through the CLI

FILES = Path(__file__).resolve().parents[1] / "data" / "files"
RUN = ["--ways", "2", "--shots", "2", "--queries", "3", "--steps", "6", "--meta-batch", "2",
       "--width", "8", "--image-size", "32", "--val-every", "3", "--val-episodes", "4"]  # fmt: skip


def _dicom_classes(root: Path, n: int = 12) -> Path:
    """Two classes of CT slices (the real CT_small.dcm, shifted by -150 or +150 HU, with noise)."""
    import pydicom

    rng = np.random.default_rng(0)
    for name, shift in (("low", -150), ("high", 150)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            ds = pydicom.dcmread(FILES / "CT_small.dcm")
            base = ds.pixel_array.astype(np.int32)
            noisy = base + shift + rng.integers(-20, 20, base.shape)
            ds.PixelData = noisy.clip(0, 4000).astype(ds.pixel_array.dtype).tobytes()
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 5.0 * i]  # a series: one slice every 5 mm
            ds.InstanceNumber = i + 1
            ds.save_as(root / name / f"slice{i:02d}.dcm")
    return root


@pytest.fixture(scope="module")
def dicom_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dicom")
    data = _dicom_classes(root / "classes")
    out = root / "run"
    assert (
        main(["train", "--data", str(data), "--window", "soft_tissue", *RUN, "--out", str(out)])
        == 0
    )
    onnx = root / "ct.onnx"
    assert main(["export", "--model", str(out), "--support", str(data), "--shots", "3",
                 "--out", str(onnx)]) == 0  # fmt: skip
    return out, onnx


def test_train_on_dicom_class_folders_keeps_the_window(dicom_model, capsys):
    out, _ = dicom_model
    card = read_card(out)
    assert card["preprocessing"]["window"] == [40.0, 400.0]  # soft_tissue, in HU
    assert card["preprocessing"]["input_shape"] == [1, 32, 32]


def test_train_prints_a_data_line_first(tmp_path: Path, capsys):
    data = _dicom_classes(tmp_path / "classes", n=6)
    assert main(["train", "--data", str(data), "--window", "40,400", *RUN, "--steps", "2",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("data: "))
    assert "12 examples in 2 classes (6-6 per class)" in line
    assert "images 128x128 with 1 channel" in line and "resized to 32x32" in line
    assert "windowed at center 40, width 400" in line


@pytest.mark.parametrize("kind", ["dicom", "series", "nifti"])
def test_predict_reads_dicom_series_and_nifti(dicom_model, kind, tmp_path: Path, capsys):
    _, onnx = dicom_model
    if kind == "dicom":
        inputs, n = [str(FILES / "CT_small.dcm")], 1
    elif kind == "series":
        _dicom_classes(tmp_path / "c", n=3)
        inputs, n = [str(tmp_path / "c" / "low")], 3
    else:
        inputs, n = [str(FILES / "anatomical.nii")], None
    assert main(["predict", "--model", str(onnx), "--inputs", *inputs, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    if n is not None:
        assert out["inputs"] == n
    else:
        assert out["inputs"] > 10  # one input per axial slice
    assert "window center 40, width 400" in out["read"] and "resized to 32x32" in out["read"]
    assert {"dicom": "DICOM ", "series": "DICOM series", "nifti": "NIfTI"}[kind] in out["read"]
    assert all(0 <= p["probability"] <= 1 for p in out["predictions"])


def test_adapt_prints_the_data_line_and_warns_on_conversion(dicom_model, tmp_path, capsys, caplog):
    out, _ = dicom_model
    data = _dicom_classes(tmp_path / "classes", n=4)
    assert main(["adapt", "--model", str(out), "--support", str(data), "--shots", "2",
                 "--out", str(tmp_path / "adapted")]) == 0  # fmt: skip
    assert "resized to 32x32" in capsys.readouterr().err
    assert "converted to the model's input 1x32x32" in caplog.text
