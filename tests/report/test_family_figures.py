"""The family figures of a report's support set (images per class, example signal traces per
class, the most class-separating features of vectors) and the checks of
``ReportData.examples``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medmeta.data import load
from medmeta.edge.preprocess import standardize_records
from medmeta.eval import plots
from medmeta.report import ReportData, write_report
from medmeta.report import family_figures as ff

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pigs() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """5 recordings of each of 4 animals, standardised per record: ``[20, 1, 2000]``."""
    data = load("pig_cvp")
    index = np.concatenate([np.flatnonzero(data.labels == c)[:5] for c in (40, 41, 42, 43)])
    x = standardize_records(np.asarray(data.x[index], np.float32))
    return x, np.repeat(np.arange(4), 5), [data.class_names[c] for c in (40, 41, 42, 43)]


@pytest.fixture
def figures(monkeypatch) -> list:
    drawn: list = []
    save = plots._save
    monkeypatch.setattr(ff, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    return drawn


def test_signal_traces_draw_a_row_per_class_with_a_few_traces_each(pigs, figures, tmp_path):
    x, y, names = pigs
    out = ff.plot_signal_traces(x, y, tmp_path / "t.png", class_names=names)
    assert out.read_bytes()[:8] == PNG
    axes = figures[0].axes
    assert len(axes) == 4 * ff.TRACES_PER_CLASS
    rows = [ax.get_ylabel().split("\n")[0] for ax in axes[:: ff.TRACES_PER_CLASS]]
    assert rows == names
    line = axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), x[0, 0])  # the first support trace, as given
    assert axes[-1].get_xlabel() == "sample"
    with pytest.raises(ValueError, match=r"signals must have shape \[n, C, L\]"):
        ff.plot_signal_traces(x[:, 0], y, tmp_path / "bad.png")


@pytest.mark.parametrize(
    "images",
    [
        np.random.default_rng(0).integers(0, 255, (6, 9, 9, 3), dtype=np.uint8),
        np.random.default_rng(0).random((6, 3, 9, 9)),  # channels first, in [0, 1]
        np.random.default_rng(0).normal(100, 50, (6, 9, 9)),  # gray, any range
    ],
)  # fmt: skip
def test_support_images_accept_the_stored_layouts(images, figures, tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    ff.plot_support_images(images, labels, tmp_path / "s.png", class_names=["a", "b"])
    shown = [im.get_array() for ax in figures[0].axes for im in ax.get_images()]
    assert len(shown) == 6
    assert all(float(np.min(a)) >= 0.0 and float(np.max(a)) <= 1.0 for a in shown)


def test_the_separating_features_come_first(tmp_path, figures):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    x = rng.normal(0, 1, (18, 12))
    x[:, 7] += 5.0 * y  # separates the classes
    x[:, 3] += 2.0 * (y == 1)  # separates one class a little
    x[:, 5] = 1.0  # constant
    order = ff.separating_features(x, y, top=12)
    assert order[0] == 7 and order[1] == 3 and order[-1] == 5
    names = [f"gene{i}" for i in range(12)]
    ff.plot_feature_values(x, y, tmp_path / "f.png", class_names=["a", "b", "c"],
                           feature_names=names, top=4)  # fmt: skip
    ticks = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    assert ticks[:2] == ["gene7", "gene3"] and len(ticks) == 4


def _report(pigs, **change) -> ReportData:
    x, y, names = pigs
    parts = {"examples": x[:, :, :1000], "example_labels": y, "example_kind": "signal",
             "class_names": names, "unit": "recordings", **change}  # fmt: skip
    return ReportData(title="signals", summary=[("data", "pig_cvp")], **parts)


def test_a_signal_report_shows_the_traces_in_the_adaptation_section(pigs, tmp_path):
    paths = write_report(tmp_path, _report(pigs))
    assert set(paths.plots) == {"signal_traces"}
    md = paths.markdown.read_text()
    assert "## Adaptation to a new task" in md and "plots/signal_traces.png" in md
    assert "one row per class (3 of its 5 examples per class)" in md
    assert json.loads(paths.json.read_text())["examples"] == {
        "kind": "signal", "shape": [20, 1, 1000], "labels": np.repeat(np.arange(4), 5).tolist(),
        "features": None}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"example_kind": "audio"}, "example_kind must be one of image, signal, vector"),
        ({"example_kind": None}, "example_kind must be one of"),
        ({"example_labels": np.full(20, 4)}, r"example_labels must lie in \[0, 4\)"),
        ({"example_labels": np.zeros(19, np.int64)}, r"one label per example \(\[20\]\)"),
        ({"example_labels": None}, "example_labels are needed"),
        ({"examples": np.full((20, 1, 8), np.nan)}, "examples has 20 rows with NaN"),
        ({"examples": np.zeros((20, 8))}, "kind 'signal' must have 3 dimensions"),
        ({"example_features": ["a"]}, "example_features apply to vectors"),
        ({"examples": np.zeros((20, 3)), "example_kind": "vector", "example_features": ["a"]},
         "must name the 3 features"),
        ({"examples": None}, "example_labels is given without ReportData.examples"),
    ],
)  # fmt: skip
def test_bad_examples_are_refused_before_writing(pigs, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path, _report(pigs, **change))
    assert not list(tmp_path.iterdir())


def test_unit_and_class_words_must_be_text(pigs, tmp_path):
    with pytest.raises(ValueError, match=r"ReportData\.unit must be a non-empty str"):
        write_report(tmp_path, _report(pigs, unit=""))
