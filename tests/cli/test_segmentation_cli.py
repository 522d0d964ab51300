"""Few-shot segmentation through the command line, on the embedded DSB 2018 nuclei
(``dsb_nuclei``, real microscopy): ``train --task segmentation`` -> ``eval`` -> ``adapt`` ->
``predict`` -> ``export`` -> ``predict`` on the exported ONNX without PyTorch, for every
segmentation method; NIfTI volumes in and out; the HTML report; and bad input, each a
one-line error naming the file or flag with what was expected and what was found.

Tiny settings (32x32 inputs, SegEncoder width 8, 3 meta-steps) keep the file fast; learning
itself is tested on real data in ``tests/algorithms/test_segmenters.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta import algorithms
from medmeta.cli import main
from medmeta.cli._model import load_model, read_card
from medmeta.cli._torchfree import run_without_torch
from medmeta.data import load

SEGMENTERS = algorithms.available("segmentation")
TINY = ["--image-size", "32", "--width", "8", "--steps", "3", "--meta-batch", "1",
        "--val-every", "3", "--val-episodes", "2", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: tiny convolutions only lose time to thread hand-offs on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nuclei():
    return load("dsb_nuclei")


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def support(nuclei, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/images/*.png with ROOT/masks/*.png (0/255) and a classes.txt naming label 1."""
    root = tmp_path_factory.mktemp("support")
    for i in (3, 40, 77, 150):
        _png(root / "images" / f"cell{i}.png", nuclei.images[i])
        _png(root / "masks" / f"cell{i}.png", (255 * nuclei.masks[i]).astype(np.uint8))
    (root / "classes.txt").write_text("nucleus\n")
    return root


@pytest.fixture(scope="module")
def queries(nuclei, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flat layout: <name>.png beside <name>_mask.png, sizes 64x64 and a 50x40 crop."""
    root = tmp_path_factory.mktemp("queries")
    for i in (200, 250):
        _png(root / f"q{i}.png", nuclei.images[i])
        _png(root / f"q{i}_mask.png", nuclei.masks[i])
    _png(root / "crop.png", nuclei.images[270][:50, :40])
    _png(root / "crop_mask.png", nuclei.masks[270][:50, :40])
    return root


@pytest.fixture(scope="module", params=SEGMENTERS)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg") / request.param
    argv = ["train", "--task", "segmentation", "--algorithm", request.param,
            "--data", "dsb_nuclei", *TINY, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def _json(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_pipeline_train_eval_adapt_predict_export(
    trained: Path, support: Path, queries: Path, tmp_path: Path, capsys
):
    card = read_card(trained)
    assert card["task_type"] == "segmentation" and card["algorithm"] in SEGMENTERS
    assert card["backbone"]["name"] == "segencoder"
    assert card["preprocessing"]["input_shape"] == [3, 32, 32]
    assert card["training"]["classes"] == ["nucleus"] and not card["training"]["self_supervised"]
    assert "held-out images" in card["training"]["validation"]
    assert {"best.pt", "last.pt", "log.json", "learning_curves.png"} <= {
        p.name for p in trained.iterdir()
    }
    assert load_model(trained).learner.task == "segmentation"  # rebuilt from backbone_spec

    assert main(["eval", "--model", str(trained), "--data", "dsb_nuclei", "--episodes", "4",
                 "--json"]) == 0  # fmt: skip
    ev = _json(capsys)
    assert ev["task"] == "segmentation" and ev["episodes"] == 4 and ev["ways"] == ev["shots"] == 1
    assert 0 <= ev["dice"] <= 1 and 0 <= ev["iou"] <= ev["dice"] and ev["dice_ci95"] >= 0
    assert set(ev["per_class"]) == {"nucleus"} and len(ev["episode_dice"]) == 4

    adapted = tmp_path / "adapted"
    assert main(["adapt", "--model", str(trained), "--support", str(support), "--out",
                 str(adapted), "--json"]) == 0  # fmt: skip
    info = _json(capsys)
    assert info["classes"] == ["nucleus"] and info["support_images"] == 4
    assert read_card(adapted)["kind"] == "adapted" and (adapted / "support.pt").is_file()

    masks = tmp_path / "masks"
    assert main(["predict", "--model", str(adapted), "--inputs", str(queries), "--out",
                 str(masks), "--json"]) == 0  # fmt: skip
    pred = _json(capsys)
    assert pred["inputs"] == 3 and pred["classes"] == ["background", "nucleus"]
    for row in pred["predictions"]:
        image = _read(Path(row["input"]))
        mask = _read(Path(row["mask"]))
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1} and row["dice"] is not None
    assert _read(masks / "crop.png").shape == (50, 40)
    again = tmp_path / "again"  # a trained folder adapts to --support in memory, identically
    assert main(["predict", "--model", str(trained), "--support", str(support), "--inputs",
                 str(queries), "--out", str(again)]) == 0  # fmt: skip
    for name in ("q200.png", "q250.png", "crop.png"):
        np.testing.assert_array_equal(_read(again / name), _read(masks / name))
    capsys.readouterr()

    onnx = tmp_path / "onnx" / "nuclei.onnx"
    assert main(["export", "--model", str(adapted), "--out", str(onnx), "--exporter",
                 "torchscript", "--json"]) == 0  # fmt: skip
    files = _json(capsys)["files"]
    encoder = Path(files["encoder"])
    assert encoder.name == "nuclei.encoder.onnx" and Path(files["head"]).is_file()
    edge = tmp_path / "edge_masks"
    run = run_without_torch(["predict", "--model", str(encoder), "--inputs", str(queries),
                             "--out", str(edge)])  # fmt: skip
    assert run.returncode == 0, run.stderr
    enrolled = tmp_path / "enrolled"  # the device enrols the support set itself
    run = run_without_torch(["predict", "--model", str(encoder), "--support", str(support),
                             "--inputs", str(queries), "--out", str(enrolled)])  # fmt: skip
    assert run.returncode == 0, run.stderr
    for name in ("q200.png", "q250.png", "crop.png"):  # the device agrees with PyTorch
        for folder in (edge, enrolled):
            agree = (_read(folder / name) == _read(masks / name)).mean()
            assert agree > 0.99, (folder.name, name, agree)


def test_report_has_outlines_per_class_table_and_failures(trained: Path, tmp_path: Path, capsys):
    report = tmp_path / "report"
    assert main(["eval", "--model", str(trained), "--data", "dsb_nuclei", "--episodes", "6",
                 "--report", str(report), "--json"]) == 0  # fmt: skip
    ev = _json(capsys)
    html = (report / "report.html").read_text("utf-8")
    assert "Per-class Dice and IoU" in html and "<td>nucleus</td>" in html
    assert "Failure gallery" in html and html.count("data:image/png;base64,") == 4
    assert {p.name for p in (report / "plots").iterdir()} == {
        "per_class_dice.png", "examples.png", "failures.png", "learning_curves.png",
    }  # fmt: skip
    saved = json.loads((report / "report.json").read_text("utf-8"))
    worst = sorted(ev["episode_dice"])[:4]  # the gallery redraws the lowest-Dice episodes
    assert [e["dice"] for e in saved["failures"]] == pytest.approx(worst)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


LPS = np.diag([-0.7, -0.7, 2.0, 1.0])  # not RAS+: the slices are reoriented when read


@pytest.fixture(scope="module")
def volumes(nuclei, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/images/case.nii.gz with ROOT/labels/case.nii.gz: 5 gray slices, labels 0/1."""
    root = tmp_path_factory.mktemp("nifti")
    gray = np.moveaxis(nuclei.images[100:105].mean(-1) / 255, 0, 2).astype(np.float32)
    _nifti(root / "images" / "case.nii.gz", gray, LPS)
    _nifti(root / "labels" / "case.nii.gz", np.moveaxis(nuclei.masks[100:105], 0, 2), LPS)
    return root


def test_nifti_support_and_queries_give_a_label_map_on_the_volume_grid(
    trained: Path, volumes: Path, tmp_path: Path, capsys
):
    import nibabel as nib

    adapted = tmp_path / "adapted"
    assert main(["adapt", "--model", str(trained), "--support", str(volumes), "--class-names",
                 "nucleus", "--out", str(adapted)]) == 0  # fmt: skip
    assert "from 5 support image(s)" in capsys.readouterr().out
    out = tmp_path / "masks"
    image = volumes / "images" / "case.nii.gz"
    assert main(["predict", "--model", str(adapted), "--inputs", str(image), "--out",
                 str(out)]) == 0  # fmt: skip
    written, source = nib.load(str(out / "case.nii.gz")), nib.load(str(image))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}


def test_nifti_label_map_round_trips_to_the_source_orientation(volumes: Path, tmp_path: Path):
    import nibabel as nib

    from medmeta.cli._segio import write_nifti_labels
    from medmeta.data import nifti_slices

    labels = volumes / "labels" / "case.nii.gz"
    canonical = nifti_slices(labels).astype(np.int64)  # what predict computes, in RAS+
    out = write_nifti_labels(volumes / "images" / "case.nii.gz", canonical, tmp_path / "l.nii")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj),
                                  np.asarray(nib.load(str(labels)).dataobj))  # fmt: skip


# ----------------------------------------------------------------------------- bad input


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_a_volume_without_the_requested_organ_is_named(
    trained: Path, volumes: Path, tmp_path: Path, nuclei, capsys
):
    empty = tmp_path / "vols"
    for sub in ("images", "labels"):
        (empty / sub).mkdir(parents=True)
        for name in ("case.nii.gz",):
            (empty / sub / name).write_bytes((volumes / sub / name).read_bytes())
    _nifti(empty / "images" / "blank.nii.gz", np.zeros((64, 64, 2), np.float32), LPS)
    _nifti(empty / "labels" / "blank.nii.gz", np.zeros((64, 64, 2), np.uint8), LPS)
    code, err = _error(["adapt", "--model", str(trained), "--support", str(empty),
                        "--class-names", "nucleus", "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 3 and "blank.nii.gz" in err
    assert "no voxel of the requested class(es) nucleus (label 1)" in err


@pytest.fixture
def bad_folder(nuclei, tmp_path: Path):
    def make(mask: np.ndarray, image: np.ndarray | None = None) -> Path:
        root = tmp_path / "bad"
        _png(root / "a.png", nuclei.images[0] if image is None else image)
        _png(root / "a_mask.png", mask)
        _png(root / "b.png", nuclei.images[1])
        _png(root / "b_mask.png", nuclei.masks[1])
        return root

    return make


def test_a_mask_whose_shape_differs_from_its_image(trained: Path, bad_folder, nuclei, capsys):
    root = bad_folder(nuclei.masks[0][:, :32])
    code, err = _error(["adapt", "--model", str(trained), "--support", str(root), "--out",
                        str(root / "out")], capsys)  # fmt: skip
    assert code == 3 and "a_mask.png" in err
    assert "mask is 64x32 (HxW) but its image is 64x64" in err


def test_labels_outside_the_class_list(trained: Path, bad_folder, nuclei, capsys):
    root = bad_folder((3 * nuclei.masks[0]).astype(np.uint8))
    code, err = _error(["adapt", "--model", str(trained), "--support", str(root),
                        "--class-names", "nucleus", "--out", str(root / "out")], capsys)  # fmt: skip
    assert code == 3 and "a_mask.png" in err
    assert "label 3 is outside the class list 0..1 (background, nucleus" in err


def test_an_empty_support_mask(trained: Path, bad_folder, nuclei, capsys):
    root = bad_folder(np.zeros((64, 64), np.uint8))
    code, err = _error(["adapt", "--model", str(trained), "--support", str(root), "--out",
                        str(root / "out")], capsys)  # fmt: skip
    assert code == 3 and "a.png" in err and "support mask is empty (background only)" in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--task", "segmentation", "--algorithm", "protonet", "--data", "dsb_nuclei"], 2,
         "--algorithm protonet is a classification method; --task segmentation takes alpnet"),
        (["--task", "classification", "--algorithm", "panet", "--data", "pbc_blood"], 2,
         "--algorithm panet is a segmentation method; --task classification takes"),
        (["--data", "dsb_nuclei"], 3,
         "dsb_nuclei: a classification dataset is needed: use --task segmentation"),
        (["--task", "segmentation", "--data", "pbc_blood"], 3,
         "pbc_blood: holds class labels, not masks"),
        (["--data", "pbc_blood", "--backbone", "segencoder"], 2,
         "--backbone segencoder is the encoder of the segmentation methods"),
        (["--task", "segmentation", "--data", "dsb_nuclei", "--backbone", "conv4"], 2,
         "--backbone conv4: segmentation methods take segencoder"),
        (["--data", "pbc_blood", "--self-supervised"], 2,
         "--self-supervised applies to --task segmentation"),
    ],
)  # fmt: skip
def test_task_and_algorithm_mismatches(argv, code, message, tmp_path: Path, capsys):
    got, err = _error(["train", *argv, *TINY, "--out", str(tmp_path / "m")], capsys)
    assert got == code and message in err, err


def test_export_and_predict_need_a_support_set(trained: Path, queries: Path, tmp_path: Path,
                                              capsys):  # fmt: skip
    code, err = _error(["export", "--model", str(trained), "--out", str(tmp_path / "m.onnx")],
                       capsys)  # fmt: skip
    assert code == 2 and "is not adapted to a task: give --support" in err
    code, err = _error(["predict", "--model", str(trained), "--inputs", str(queries), "--out",
                        str(tmp_path / "masks")], capsys)  # fmt: skip
    assert code == 2 and "is not adapted to a task: give --support" in err


# -------------------------------------------------------- other data and validation modes


def test_images_without_masks_train_self_supervised(nuclei, tmp_path: Path, capsys):
    root = tmp_path / "unlabelled"
    for i in range(6):
        _png(root / f"img{i}.png", nuclei.images[i])
    out = tmp_path / "ssl"
    assert main(["train", "--algorithm", "alpnet", "--data", str(root), *TINY, "--out",
                 str(out), "--json"]) == 0  # fmt: skip
    summary = _json(capsys)
    assert summary["self_supervised"] and summary["validation"] is None
    card = read_card(out)
    assert card["training"]["self_supervised"] and card["checkpoint"] == "last.pt"


def test_held_out_classes_validate_and_evaluate_by_name(nuclei, tmp_path: Path, capsys):
    """Nuclei of fluorescence images as one class, of stained (H&E-like) images as another:
    train on one, validate and evaluate on the other."""
    stained = nuclei.images.std(-1).mean((1, 2)) > 8  # colour; gray images have R = G = B
    assert 40 < stained.sum() < 100
    masks = np.where(stained[:, None, None], 2 * nuclei.masks, nuclei.masks).astype(np.uint8)
    data = tmp_path / "two.npz"
    np.savez(data, images=nuclei.images, masks=masks, source_ids=np.arange(len(nuclei)),
             class_names=np.array(["background", "nucleus_fluo", "nucleus_stained"]))  # fmt: skip
    out = tmp_path / "m"
    assert main(["train", "--algorithm", "panet", "--data", str(data), "--classes",
                 "nucleus_fluo", "--val-classes", "nucleus_stained", *TINY, "--out",
                 str(out)]) == 0  # fmt: skip
    training = read_card(out)["training"]
    assert training["classes"] == ["nucleus_fluo"]
    assert training["val_classes"] == ["nucleus_stained"]
    assert training["validation"] == "held-out classes nucleus_stained"
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(data), "--classes",
                 "nucleus_stained", "--episodes", "2", "--json"]) == 0  # fmt: skip
    assert set(_json(capsys)["per_class"]) == {"nucleus_stained"}


def test_learns_nuclei_of_unseen_images_through_the_cli(nuclei, tmp_path: Path, capsys):
    """PANet at 64x64, 40 meta-steps on 200 images: 1-shot episodes on the 100 others reach
    a Dice 0.06 above the all-foreground mask (untrained: about 0.2, trained: about 0.39)."""
    for name, rows in (("train", slice(0, 200)), ("test", slice(200, 300))):
        np.savez(tmp_path / f"{name}.npz", images=nuclei.images[rows], masks=nuclei.masks[rows],
                 class_names=np.array(nuclei.class_names))  # fmt: skip
    out = tmp_path / "m"
    assert main(["train", "--algorithm", "panet", "--data", str(tmp_path / "train.npz"),
                 "--width", "16,32,32", "--steps", "40", "--meta-batch", "2", "--lr", "3e-3",
                 "--val-every", "40", "--val-episodes", "4", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(tmp_path / "test.npz"),
                 "--episodes", "20", "--seed", "100", "--min-foreground", "16", "--json"]) == 0  # fmt: skip
    dice = _json(capsys)["dice"]
    share = nuclei.masks[200:].mean((1, 2))
    all_foreground = float(np.mean(2 * share / (1 + share)))
    assert dice > all_foreground + 0.06, (dice, all_foreground)


def test_a_corrupt_npz_is_a_data_error(tmp_path: Path, capsys):
    bad = tmp_path / "scans.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip archive")
    got, err = _error(["train", "--task", "segmentation", "--data", str(bad), *TINY, "--out",
                       str(tmp_path / "m")], capsys)  # fmt: skip
    assert got == 3 and "not a valid .npz (zip) archive" in err and str(bad) in err, err
