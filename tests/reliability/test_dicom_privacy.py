"""Patient names, ids, birth dates and the other DICOM identifiers never reach logs (DEBUG
included), warnings, error messages, tracebacks, model cards, checkpoints, training logs,
plots, ONNX files or predictions: DICOM files whose identifying attributes hold marker
strings go through ``medmeta train / eval / adapt / export / predict`` and every artefact is
scanned. Patient ids become HMAC-SHA256 keys with a per-dataset salt."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import shutil
import traceback
import warnings
from pathlib import Path

import pytest

from medmeta.cli import main
from medmeta.data import DataError
from reliability import dicom_markers as M

pydicom = pytest.importorskip("pydicom")

from medmeta.data.formats.dicom import (  # noqa: E402  (needs pydicom)
    dataset_salt,
    load_dicom_folder,
    load_dicom_series,
    patient_key,
    read_dicom,
)


def test_marked_files_hold_every_marker(tmp_path):
    """The scan is not vacuous: each marker is in the files it must not leave."""
    path = M.write_marked(tmp_path / "a.dcm", patient=3, shift=0, index=0)
    blob = path.read_bytes()
    stored = {part for value in M.MARKERS.values() for part in value.split("^")}
    assert stored <= set(M.found_in_bytes(blob)) | {v for v in stored if v.startswith(M.UID_ROOT)}
    assert M.UID_ROOT in M.found_in_bytes(blob) and M.patient_id(3).encode() in blob


def test_patient_keys_are_hmac_with_a_per_dataset_salt(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDMETA_PATIENT_SALT", raising=False)
    sites = {}
    for site in ("site_a", "site_b"):
        for k in range(2):
            for i in range(2):
                M.write_marked(tmp_path / site / f"c{k}" / f"s{i}.dcm", patient=k, shift=0, index=i)
        sites[site] = load_dicom_folder(tmp_path / site)
    a, b = sites["site_a"], sites["site_b"]
    salt = dataset_salt(tmp_path / "site_a")
    expected = [hmac.new(salt.encode(), M.patient_id(k).encode(), hashlib.sha256).hexdigest()[:16]
                for k in (0, 0, 1, 1)]  # fmt: skip
    assert a.groups.tolist() == expected  # one key per patient, the dataset's salt
    assert not set(a.groups.tolist()) & set(b.groups.tolist())  # unlinkable across datasets
    assert load_dicom_folder(tmp_path / "site_a").groups.tolist() == expected  # stable
    shutil.copytree(tmp_path / "site_a", tmp_path / "copy" / "site_a")  # moved: same keys
    assert load_dicom_folder(tmp_path / "copy" / "site_a").groups.tolist() == expected
    info = a.meta["patient_key"]
    assert info == {"scheme": "hmac-sha256/16", "salt": "per-dataset",
                    "salt_fingerprint": hashlib.sha256(salt.encode()).hexdigest()[:8]}  # fmt: skip
    assert salt not in json.dumps(a.meta, default=str)
    series = load_dicom_series(tmp_path / "site_a" / "c1")
    assert series.patient_key == patient_key(M.patient_id(1), dataset_salt(tmp_path / "site_a" / "c1"))  # fmt: skip
    monkeypatch.setenv("MEDMETA_PATIENT_SALT", "a site secret")  # another secret, other keys
    assert not set(load_dicom_folder(tmp_path / "site_a").groups.tolist()) & set(expected)
    given = load_dicom_folder(tmp_path / "site_a", salt="given salt")
    assert given.groups[0] == patient_key(M.patient_id(0), "given salt")
    assert given.meta["patient_key"]["salt"] == "given"


def _invalid_values(path: Path) -> Path:
    """Values pydicom complains about when they are read, quoting them: a malformed UID
    and a too long PatientID."""
    from pydicom import config

    ds = pydicom.dcmread(path)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SeriesInstanceUID = f"{M.UID_ROOT}.QX"
            ds.PatientID = M.patient_id(0) * 6
            ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = mode
    return path


def test_pydicom_messages_that_quote_values_are_muted(tmp_path, caplog):
    """pydicom decodes elements lazily and warns (warning + log record) with the value on
    first access: read_dicom shows neither, only a DEBUG line with their count."""
    path = _invalid_values(M.write_marked(tmp_path / "a.dcm", patient=0, shift=0, index=0))
    caplog.clear()  # pydicom logged the values as they were written
    levels = (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="medmeta"),
        caplog.at_level(logging.DEBUG, logger="pydicom"),
    )  # whatever earlier tests set
    with levels[0], levels[1], levels[2], warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_dicom(path)
    assert image.pixels.shape == (1, 128, 128)
    assert caught == []
    assert M.found_in_text(caplog.text) == []
    assert "pydicom warned" in caplog.text  # there were messages, and they were muted


def _corruptions(path: Path, n_random: int = 40) -> list[tuple[str, bytes]]:
    """Damaged copies of a marked file: truncations, no pixel data, a bad header, short
    pixel data, not DICOM, and seeded random byte changes in the header."""
    good = path.read_bytes()
    ds = pydicom.dcmread(path)
    del ds.PixelData
    out = [(f"truncated at {n}", good[:n]) for n in (132, 400, 1000, 3000, 20000)]
    no_pixels = path.with_name("nopix.dcm")
    ds.save_as(no_pixels)
    out.append(("no pixel data", no_pixels.read_bytes()))
    ds = pydicom.dcmread(path)
    ds.Rows = 0
    ds.save_as(no_pixels)
    out.append(("Rows 0", no_pixels.read_bytes()))
    out.append(("not DICOM", b"QXFAMILY7Q is not a DICOM file"))
    rng = random.Random(7)
    for i in range(n_random):
        b = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            b[rng.randint(132, 3000)] = rng.randint(0, 255)
        out.append((f"random {i}", bytes(b)))
    return out


def test_errors_on_marked_files_quote_no_identifier(tmp_path, caplog):
    """A damaged marked file: the error names the file and the problem, and neither its
    message, its traceback (chained causes included), warnings nor DEBUG logs hold a
    marker."""
    source = M.write_marked(tmp_path / "good.dcm", patient=0, shift=0, index=0)
    errors = 0
    for what, blob in _corruptions(source):
        path = tmp_path / "bad.dcm"
        path.write_bytes(blob)
        caplog.clear()
        with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                read_dicom(path)
                text = ""
            except DataError as err:
                errors += 1
                assert str(path) in str(err), what
                text = "".join(traceback.format_exception(err))
            except Exception as err:  # robustness is the fuzz tests' matter; privacy is ours
                text = "".join(traceback.format_exception(err))
        shown = text + caplog.text + "\n".join(str(w.message) for w in caught)
        assert M.found_in_text(shown) == [], (what, shown[-800:])
    assert errors >= 9  # the deliberate corruptions fail (and most random ones)


@pytest.mark.slow  # the whole CLI pipeline on DICOM class folders
def test_cli_pipeline_on_marked_dicom_leaks_nothing(tmp_path, capfd, caplog):
    data = M.marked_classes(tmp_path / "data")
    model, adapted, export = tmp_path / "model", tmp_path / "adapted", tmp_path / "export"
    plots, onnx = tmp_path / "plots", tmp_path / "export" / "model.onnx"
    runs = [
        ["train", "--data", str(data), "--classes", "c0,c1", "--val-classes", "c2,c3",
         "--ways", "2", "--shots", "1", "--queries", "1", "--steps", "2", "--meta-batch", "1",
         "--width", "4", "--image-size", "16", "--val-every", "1", "--val-episodes", "2",
         "--window", "soft_tissue", "--out", str(model)],
        ["eval", "--model", str(model), "--data", str(data), "--classes", "c2,c3", "--shots",
         "1", "--queries", "1", "--episodes", "2", "--json", "--plots", str(plots)],
        ["adapt", "--model", str(model), "--support", str(data), "--classes", "c2,c3",
         "--shots", "1", "--out", str(adapted), "--json"],
        ["export", "--model", str(adapted), "--out", str(onnx), "--json"],
        ["predict", "--model", str(onnx), "--inputs", str(data / "c2" / "s0.dcm"),
         str(data / "c3" / "s1.dcm"), "--json"],
        ["predict", "--model", str(onnx), "--inputs", str(data), "--json"],
    ]  # fmt: skip
    shown = []
    with caplog.at_level(logging.DEBUG):
        for argv in runs:
            assert main(["--debug", *argv]) == 0, argv
            out, err = capfd.readouterr()
            shown.append(out + err)
    assert json.loads(shown[-1][shown[-1].index("{") :])["classes"] == ["c2", "c3"]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) > 0  # DEBUG was on
    logs = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records
    )  # every record, every logger
    assert M.found_in_text("\n".join(shown)) == []
    assert M.found_in_text(logs) == []
    outputs = [model, adapted, export, plots]
    assert {p.name for p in model.iterdir()} >= {"model.json", "best.pt", "last.pt", "log.csv",
                                                 "log.json", "learning_curves.png"}  # fmt: skip
    assert onnx.exists() and any(plots.iterdir())
    assert M.found_in_files(outputs) == {}


@pytest.mark.slow  # a CLI training that stops on a damaged file
def test_cli_error_on_a_damaged_marked_file(tmp_path, capfd, caplog):
    data = M.marked_classes(tmp_path / "data", classes=2, per_class=3)
    bad = data / "c1" / "s1.dcm"
    bad.write_bytes(bad.read_bytes()[:3000])
    argv = ["train", "--data", str(data), "--ways", "2", "--shots", "1", "--queries", "1",
            "--steps", "1", "--out", str(tmp_path / "m")]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        assert main(argv) == 3  # a data error: one line naming the file
        err = capfd.readouterr().err
        with pytest.raises(DataError) as info:
            main(["--debug", *argv])
    assert err.strip().splitlines() == [f"medmeta train: error: {bad}: no pixel data (no PixelData "
                                        "element): the file may be truncated, or it is a "
                                        "non-image object such as a structured report or "
                                        "presentation state"]  # fmt: skip
    trace = "".join(traceback.format_exception(info.value))
    assert M.found_in_text(err + trace + capfd.readouterr().err + caplog.text) == []
