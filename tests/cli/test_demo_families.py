"""``medmeta demo --family``: the family registry (splits that follow the benchmark protocols,
a clear error for an unknown family), the raw files the torch-free check reads, and the
signals and tables demos end to end (``--quick``; marked slow)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmarks.protocol_families import PROTOCOLS

from medmeta.cli import _data, main
from medmeta.cli._demo_edge import write_inputs
from medmeta.cli._demo_families import FAMILIES, get_family, split_family
from medmeta.edge.cli.errors import UsageError

PNG = b"\x89PNG\r\n\x1a\n"


def test_an_unknown_family_is_a_usage_error_listing_the_families(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--family", "audio", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "--family must be one of images, signals, tables, expression, regression, got 'audio'"
    ) in err
    assert not out.exists()  # refused before anything is written
    with pytest.raises(UsageError, match="images, signals, tables, expression, regression"):
        get_family("Images")


@pytest.mark.parametrize("name", ["signals", "tables", "expression"])
def test_family_splits_follow_the_benchmark_protocols(name: str):
    family, protocol = FAMILIES[name], PROTOCOLS[name]
    assert (family.dataset, family.ways, family.backbone) == (
        protocol.data, protocol.ways, protocol.backbone)  # fmt: skip
    assert set(family.novel_classes) == set(protocol.test)
    assert set(family.train_classes) | set(family.val_classes) == set(protocol.train)
    assert set(family.task_classes) <= set(family.novel_classes)
    assert family.shots in protocol.shots and family.eval_queries == protocol.queries


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_split_is_disjoint_and_holds_out_validation(name: str):
    family = FAMILIES[name]
    data = _data.load_dataset(family.dataset)
    need = family.shots + family.quick.queries
    train, val, novel = split_family(family, data, seed=0, need=need)
    names = np.asarray(data.class_names)
    seen = [set(names[np.unique(part.labels)]) for part in (train, val, novel)]
    assert seen[0] == set(family.train_classes) and seen[2] == set(family.novel_classes)
    assert not (seen[0] | seen[1]) & seen[2]  # nothing of the novel classes is trained on
    counts = np.bincount(val.labels, minlength=len(names))
    assert (counts[counts > 0] >= need).all()  # every validation class fills an episode
    if family.val_classes:  # validation animals: none of them trains
        assert seen[1] == set(family.val_classes) and not seen[0] & seen[1]
    else:  # held-out examples of the training classes: none is also trained on
        assert len(train) + len(val) == int(np.isin(data.labels, np.unique(train.labels)).sum())
    if name == "images":  # the demo's split: 15% of each of the 600 images per type
        assert len(val) == 5 * 90 and len(train) == 5 * 510
    if name == "expression":  # 19 memory T cells cannot spare an episode: all of them train
        memory = list(names).index("CD4+/CD45RO+ Memory")
        assert counts[memory] == 0 and (train.labels == memory).sum() == 19


def test_raw_inputs_are_written_as_a_device_reads_them(tmp_path: Path):
    from medmeta.cli.predict import READERS

    thyroid = _data.load_dataset("thyroid")
    rows = thyroid.x.take(np.arange(6))
    labels = np.array([0, 1, 2, 0, 1, 2])
    names = ["a,b", "hyper", "repl"]  # a comma in a class name survives the CSV
    inputs = READERS.inputs([str(write_inputs(tmp_path / "rows", rows, labels, names))])
    assert inputs.raw.columns == rows.columns
    np.testing.assert_array_equal(inputs.raw.values, rows.values)
    assert [inputs.class_names[k] for k in inputs.labels] == [names[k] for k in labels]
    signals = np.random.default_rng(0).normal(size=(4, 1, 50)).astype(np.float32)
    back = np.load(write_inputs(tmp_path / "sig", signals, labels[:4], names))
    np.testing.assert_array_equal(back["X"], signals)
    assert back["class_names"].tolist() == names
    images = np.zeros((2, 8, 8, 3), np.uint8)
    assert "images" in np.load(write_inputs(tmp_path / "img", images, labels[:2], names))


def _demo(tmp_path_factory: pytest.TempPathFactory, family: str) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp(family) / "demo"
    capture = pytest.MonkeyPatch()
    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        code = main(["demo", "--family", family, "--quick", "--quiet", "--device", "cpu",
                     "--out", str(out)])  # fmt: skip
    finally:
        capture.undo()
    assert code == 0
    return out, buffer.getvalue()


@pytest.fixture(scope="module")
def signals_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _demo(tmp_path_factory, "signals")


@pytest.fixture(scope="module")
def tables_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _demo(tmp_path_factory, "tables")


def _check_pipeline(out: Path, family: str, plot: str) -> dict:
    """What every family's demo must show: files, a torch-free edge check within the
    tolerance, finite metrics and latencies, and the family's figure."""
    for name in ("model/model.json", "adapted/support.pt", "model.onnx", "model.embed.onnx",
                 "report.html", "report.md", "report.json", "timings.json"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["plots"][plot] == f"plots/{plot}.png"
    assert (out / report["plots"][plot]).read_bytes()[:8] == PNG
    assert f"plots/{plot}.png" in (out / "report.md").read_text()
    export = report["export"]
    assert export["parity_max_abs_diff"] < 1e-5 and export["enrolment_max_abs_diff"] < 1e-5
    assert export["enrolment_prototype_max_abs_diff"] < 1e-5  # enrolled on the device
    assert export["edge_agreement"] == 1.0
    for e in report["evaluations"]:
        assert np.isfinite([e["accuracy"], e["ci95"], e["auroc"], e["ece"]]).all()
    assert np.isfinite([row["p50_ms"] for row in report["latency"]]).all()
    assert report["examples"]["labels"] == sorted(report["examples"]["labels"])
    dataset = FAMILIES[family].dataset
    assert any(dataset in value for key, value in report["summary"] if key == "dataset")
    return report


@pytest.mark.slow
def test_signals_demo_trains_on_animals_and_checks_the_export_without_torch(signals_demo):
    out, text = signals_demo
    report = _check_pipeline(out, "signals", "signal_traces")
    assert report["examples"]["kind"] == "signal"
    assert report["examples"]["shape"] == [25, 1, 1000]  # 5 animals x 5 recordings, window
    evaluations = {e["name"]: e for e in report["evaluations"]}
    assert evaluations["5-way 5-shot"]["accuracy"] > 0.2 + 0.15  # chance is 20%
    assert report["adaptation"]["classes"] == [f"pig_{i}" for i in range(41, 46)]
    raw = np.load(out / "edge_check" / "queries.npz")
    assert raw["X"].shape == (5, 1, 2000)  # raw recordings: the device crops and scales them
    assert "new 5-shot task (pig_41, pig_42, pig_43, pig_44, pig_45)" in text
    assert "other recordings" in text


@pytest.mark.slow
def test_tables_demo_fits_the_encoding_on_training_rows_and_predicts_csv_rows(tables_demo):
    out, text = tables_demo
    report = _check_pipeline(out, "tables", "feature_values")
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["preprocessing"]["kind"] == "table"
    assert set(card["training"]["classes"]) == set(FAMILIES["tables"].train_classes)
    evaluations = {e["name"]: e for e in report["evaluations"]}
    assert evaluations["3-way 5-shot"]["accuracy"] > 1 / 3 + 0.2
    rows = (out / "edge_check" / "queries.csv").read_text().splitlines()
    assert rows[0].endswith(",target") and "TSH" in rows[0].split(",")
    assert len(rows) - 1 == report["adaptation"]["queries"]  # the raw rows of the queries
    assert report["export"]["edge_accuracy"] == pytest.approx(report["adaptation"]["accuracy"])
    md = (out / "report.md").read_text()
    assert "Query rows" in md and "No int8 model for this family" in md
    assert not (out / "model.int8.onnx").exists()  # skipped for tables, and said so
    assert report["export"]["int8"].startswith("not exported: its activations")
    assert "ORT int8" not in {row["runtime"] for row in report["latency"]}
    assert "other rows" in text
