"""Embedded datasets: every one loads with the documented classes and counts, carries its
license and citation, and is listed in the docs; CHAOS stays out of the package."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import medmeta
from medmeta.data import (
    CROSS_DOMAIN_DATASETS,
    DEFAULT_DATASET,
    ArrayDataset,
    DataError,
    SegmentationDataset,
    dataset_info,
    list_datasets,
    load,
)
from medmeta.data.assay_tasks import AssayTable
from medmeta.data.formats.table import ClinicalTable
from medmeta.data.registry import main, verify

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
EMBEDDED = [d.name for d in list_datasets()]
EXTERNAL = [d.name for d in list_datasets(include_external=True) if not d.embedded]


def test_expected_sets_are_embedded():
    assert set(EMBEDDED) == {
        "pbc_blood",
        "brain_tumor_mri",
        "knee_xray_kl",
        "khan",
        "nci60",
        "pbmc68k_celltypes",
        "thyroid",
        "ecg_beats",
        "pig_cvp",
        "dsb_nuclei",
        "tox21",
        "toxcast",
    }
    assert set(EXTERNAL) == {"chaos_mr_t2", "dsb2018_nuclei"}
    assert DEFAULT_DATASET == "pbc_blood" and dataset_info("pbc_blood").license == "CC BY 4.0"
    assert all(dataset_info(n).kind == "image" for n in CROSS_DOMAIN_DATASETS)


@pytest.mark.parametrize("name", EMBEDDED)
def test_every_embedded_dataset_loads_as_documented(name):
    info = dataset_info(name)
    ds = load(name)
    assert tuple(ds.class_names) == info.classes
    assert ds.class_counts() == info.examples_per_class
    assert len(ds) == info.n_examples
    # segmentation counts: images containing each class; molecules: actives per assay
    if info.kind not in ("segmentation", "molecules"):
        assert len(ds) == sum(info.examples_per_class.values())
    assert ds.meta["license"] == info.license and ds.meta["citation"] == info.citation
    expected_type = {
        "table": ClinicalTable,
        "segmentation": SegmentationDataset,
        "molecules": AssayTable,
    }.get(info.kind, ArrayDataset)
    assert isinstance(ds, expected_type)
    if info.kind == "image":
        assert ds.x.dtype == np.uint8
    verify(name)  # sha256 and counts against the manifest
    text = info.license_text()
    assert text and info.file.split(".")[0] in text
    assert info.citation and info.source and info.license


def test_documented_shapes():
    assert load("pbc_blood").x.shape == (4800, 28, 28, 3)
    assert load("brain_tumor_mri").x.shape == (2400, 64, 64)
    assert load("knee_xray_kl").x.shape == (2651, 64, 64)
    assert load("pig_cvp").x.shape == (312, 1, 2000)
    pbmc = load("pbmc68k_celltypes")
    assert pbmc.meta["matrix"] == "lognorm" and pbmc.x.min() >= 0.0
    scaled = load("pbmc68k_celltypes", matrix="scaled")
    assert scaled.x.min() < 0.0
    tissue = load("nci60", labels="tissue")
    assert tissue.class_counts() == dataset_info("nci60").extra["examples_per_class_tissue"]


def test_bad_names_and_options():
    with pytest.raises(DataError, match=r"unknown dataset 'bloodmnist'; available: \["):
        load("bloodmnist")
    with pytest.raises(DataError, match="takes no options"):
        load("pbc_blood", size=32)
    with pytest.raises(DataError, match="matrix='lognorm' or 'scaled'"):
        load("pbmc68k_celltypes", matrix="raw")


def test_non_commercial_data_is_not_shipped(monkeypatch):
    pkg = resources.files("medmeta.datasets")
    names = [p.name for p in pkg.iterdir()]
    assert not any("chaos" in n.lower() for n in names)
    total = sum(p.stat().st_size for p in Path(str(pkg)).rglob("*") if p.is_file())
    assert total < 35e6, f"embedded data is {total / 1e6:.1f} MB"
    monkeypatch.delenv("MEDMETA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"not shipped with medmeta \(license: CC BY-NC-SA"):
        load("chaos_mr_t2")


@pytest.mark.skipif(
    not (SHARED / "chaos_mr_t2.npz").is_file(), reason="shared data folder not available"
)
def test_external_segmentation_sets_load_from_a_folder():
    for name in EXTERNAL:
        ds = load(name, root=SHARED)
        info = dataset_info(name)
        assert isinstance(ds, SegmentationDataset)
        assert ds.class_counts() == info.examples_per_class
        assert len(ds) == info.n_examples
    chaos = load("chaos_mr_t2", root=SHARED)
    assert len(np.unique(chaos.groups)) == 20  # patients


def test_docs_table_lists_every_dataset():
    docs = REPO / "docs" / "datasets.md"
    readme = resources.files("medmeta.datasets").joinpath("README.md").read_text("utf-8")
    if not docs.is_file():
        pytest.skip("docs/ not available (installed package)")
    text = docs.read_text("utf-8")
    for info in list_datasets(include_external=True):
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{info.name}`")), None)
        assert row is not None, f"{info.name} missing from docs/datasets.md"
        assert info.license in row
        counts = info.examples_per_class.values()
        assert re.search(rf"\b{min(counts)}\b", row) and re.search(rf"\b{max(counts)}\b", row)
        assert f"| {info.num_classes} |" in row
        assert info.name in readme


def test_cli_lists_and_describes():
    out = io.StringIO()
    assert main([], out=out) == 0
    listing = out.getvalue()
    assert all(n in listing for n in EMBEDDED) and "chaos_mr_t2" not in listing
    out = io.StringIO()
    assert main(["--all"], out=out) == 0 and "chaos_mr_t2" in out.getvalue()
    out = io.StringIO()
    assert main(["knee_xray_kl", "--license"], out=out) == 0
    assert "KL4: 251" in out.getvalue() and "Osteoarthritis Initiative" in out.getvalue()
    out = io.StringIO()
    assert main(["nope"], out=out) == 2 and "unknown dataset" in out.getvalue()
    pkg_root = str(Path(medmeta.__file__).resolve().parents[1])
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import runpy; "
            "sys.argv = ['medmeta.data']; "
            "runpy.run_module('medmeta.data', run_name='__main__')",
            pkg_root,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "pbc_blood" in run.stdout
