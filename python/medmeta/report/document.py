"""The report's content as plain blocks (sections of paragraphs, tables, figures...),
built once from :class:`~medmeta.report.data.ReportData` and rendered to HTML and Markdown
by :mod:`medmeta.report.html` and :mod:`medmeta.report.markdown`, so both formats carry the
same text and numbers. Blocks hold unescaped text; each renderer escapes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmeta.eval.evaluate import EvalResult
from medmeta.report.data import ReportData
from medmeta.report.embedding import EmbeddingMap
from medmeta.report.figures import EXAMPLE_PLOTS
from medmeta.report.formatting import (
    MISSING,
    capitalize,
    field_label,
    field_value,
    fmt_ci,
    fmt_float,
    fmt_float_ci,
    fmt_ms,
    fmt_pct,
    fmt_pct_interval,
    is_missing,
)

__all__ = [
    "Bullets",
    "Code",
    "Document",
    "Figure",
    "FigureGrid",
    "KeyValues",
    "Paragraph",
    "Section",
    "Table",
    "Tile",
    "Tiles",
    "build_document",
]


@dataclass(frozen=True)
class Paragraph:
    text: str
    muted: bool = False


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    title: str | None = None


@dataclass(frozen=True)
class KeyValues:
    pairs: list[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    """``header`` ``[C]``, ``rows`` ``[R][C]``; ``numeric[c]`` right-aligns column c.

    ``groups`` (optional) spans header cells: ``[(label, width), ...]`` covering the C
    columns (empty label: no group). HTML draws them as a second header row; Markdown, which
    has one header row, prefixes the group label to each column's header.
    """

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    caption: str | None = None
    groups: list[tuple[str, int]] | None = None

    def flat_header(self) -> list[str]:
        """The header with group labels prefixed (``"3-way 5-shot: Sensitivity"``)."""
        if not self.groups:
            return list(self.header)
        out, i = [], 0
        for label, width in self.groups:
            for h in self.header[i : i + width]:
                out.append(f"{label}: {h}" if label else h)
            i += width
        return out + list(self.header[i:])


@dataclass(frozen=True)
class Figure:
    """``src``: path relative to the report folder."""

    src: str
    caption: str
    alt: str
    number: int


@dataclass(frozen=True)
class FigureGrid:
    """Figures shown side by side where the page is wide enough."""

    figures: list[Figure]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Tiles:
    tiles: list[Tile]


Block = Paragraph | Bullets | KeyValues | Table | Figure | FigureGrid | Code | Tiles


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]


def singular(unit: str) -> str:
    """``"images"`` -> ``"image"`` (regular plurals; anything else is kept)."""
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def glossary(unit: str = "images") -> list[str]:
    """How to read the classification metrics, for examples called ``unit`` (plural)."""
    one = singular(unit)
    return [
        f"Accuracy: share of query {unit} given the right class, averaged over episodes; "
        "± is the 95% confidence interval of that mean (1.96 standard errors).",
        f"Sensitivity of a class: of the {unit} truly of that class, the share recognised as "
        f"it (recall). Specificity: of the {unit} of other classes, the share not given that "
        "class.",
        "Balanced accuracy: mean sensitivity over classes (not inflated by frequent classes).",
        "Macro-F1: mean over classes of the harmonic mean of precision and sensitivity.",
        f"AUROC: probability that the model scores a random {one} of a class above a random "
        f"{one} of another class (one-vs-rest, averaged); 0.5 is chance, 1.0 perfect ranking.",
        "ECE (expected calibration error): average gap between the model's confidence and its "
        "accuracy; 0 means a stated 80% confidence is right 80% of the time. "
        "NLL and Brier score: lower is better.",
    ]


#: The glossary of an image report.
GLOSSARY = glossary()


REGRESSION_GLOSSARY = [
    "MSE (mean squared error): the average squared distance between prediction and truth, in "
    "the target's squared unit; lower is better.",
    "R²: 1 - MSE / variance of the true values; 1 is perfect, 0 is no better than predicting "
    "their mean, below 0 is worse.",
    "Coverage: the share of true values inside their predictive interval; it should be close "
    "to the interval's level. Width: the mean length of the intervals.",
]


class _Figures:
    """Numbers figures in order of appearance."""

    def __init__(self, plots: Mapping[str, str]) -> None:
        self.plots = plots
        self.count = 0

    def get(self, name: str, caption: str, alt: str) -> Figure | None:
        if name not in self.plots:
            return None
        self.count += 1
        return Figure(self.plots[name], caption, alt, self.count)


def _chance(r: EvalResult) -> str:
    return fmt_pct(1.0 / r.ways, 1) if r.ways else MISSING


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``accuracy`` of ``n`` independent images."""
    if n <= 0:
        return math.nan, math.nan
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _drawn_from(r: EvalResult, unit: str) -> str:
    n = getattr(r, "distinct_images", None)
    return "" if n is None else f" drawn from {n:,} distinct {unit}"


def _summary_tiles(data: ReportData) -> list[Tile]:
    tiles: list[Tile] = []
    for name, r in list(data.evaluations)[-2:]:
        tiles.append(
            Tile(
                f"Accuracy, {name}",
                fmt_ci(r.accuracy, r.ci95),
                f"95% CI over {r.episodes} episodes"
                + _drawn_from(r, data.unit)
                + f"; chance {_chance(r)}",
            )
        )
    if data.evaluations:
        name, r = list(data.evaluations)[-1]
        tiles.append(
            Tile(
                f"AUROC, {name}",
                fmt_float_ci(r.auroc, r.auroc_ci95),
                "95% CI over episodes; 0.5 = chance, 1.0 = perfect ranking",
            )
        )
    ad = data.adaptation or {}
    if not is_missing(ad.get("accuracy")):
        shots = ad.get("shots")
        label = f"New {shots}-shot task" if shots is not None else "New task"
        note = ""
        if "queries" in ad:
            low, high = wilson_interval(float(ad["accuracy"]), int(ad["queries"]))
            note = (
                f"95% CI {100 * low:.1f}-{100 * high:.1f}% over its {ad['queries']} held-out "
                f"{data.unit} (the finite test set)"
            )
        tiles.append(Tile(label, fmt_pct(ad["accuracy"]), note))
    tiles += _regression_tiles(data)
    ex = data.export or {}
    if "edge_agreement" in ex and not is_missing(ex["edge_agreement"]):
        note = "ONNX" + (f", opset {ex['opset']}" if "opset" in ex else "")
        tiles.append(Tile("Edge runtime agreement", fmt_pct(ex["edge_agreement"]), note))
    return tiles


def _regression_tiles(data: ReportData) -> list[Tile]:
    """R² and the interval's coverage: of the last episode evaluation, else of the points."""
    reg = data.regression
    if reg is None:
        return []
    level = f"{100 * reg['level']:g}%"
    if reg["evaluations"]:
        name, s = reg["evaluations"][-1]
        where = f"{name}: 95% CI over {s.get('episodes', MISSING)} episodes"
    else:
        s, where = reg["stats"], f"over the {reg['stats']['n']} points in the figure"
    return [Tile("R²", fmt_float_ci(s.get("r2"), s.get("r2_ci95")), where + "; 1 = perfect"),
            Tile(f"Coverage of the {level} interval", fmt_ci(s.get("coverage"),
                 s.get("coverage_ci95")), where + f"; nominal {level}")]  # fmt: skip


def _training_text(history: Sequence[Mapping[str, Any]], regression: bool = False) -> str | None:
    """The last step's loss and training score and the best validation score: accuracy,
    or R² (and the validation MSE) for a regression."""
    rows = [r for r in history if not is_missing(r.get("loss"))]
    if not rows:
        return None
    last = rows[-1]
    text = (
        f"Meta-training ran to step {last['step']}: final training loss {fmt_float(last['loss'])}"
    )
    if regression:
        text += " (MSE of the episodes' standardised targets)"
    if not is_missing(last.get("accuracy")):
        score = (f"R² {fmt_float(last['accuracy'])}" if regression
                 else f"accuracy {fmt_pct(last['accuracy'], 1)}")  # fmt: skip
        text += f", training-episode {score}"
    val = [r for r in history if not is_missing(r.get("val_accuracy"))]
    if val:
        best = max(val, key=lambda r: float(r["val_accuracy"]))
        if regression:
            score = f"R² {fmt_float_ci(best['val_accuracy'], best.get('val_ci95'))}"
            if not is_missing(best.get("val_loss")):
                score += f" (MSE {fmt_float(best['val_loss'], 4)})"
        else:
            score = f"accuracy {fmt_ci(best['val_accuracy'], best.get('val_ci95'))}"
        text += f"; best validation {score} at step {best['step']}"
    return text + "."


def _metrics_table(evals: Sequence[tuple[str, EvalResult]]) -> Table:
    header = ["Evaluation", "Episodes", "Accuracy (95% CI)", "Chance", "Balanced accuracy",
              "Macro-F1", "AUROC (95% CI)", "ECE", "NLL", "Brier"]  # fmt: skip
    rows = [
        [
            name,
            str(r.episodes),
            fmt_ci(r.accuracy, r.ci95),
            _chance(r),
            fmt_pct(r.balanced_accuracy),
            fmt_float(r.macro_f1),
            fmt_float_ci(r.auroc, r.auroc_ci95),
            fmt_float(r.ece),
            fmt_float(r.nll),
            fmt_float(r.brier),
        ]
        for name, r in evals
    ]
    return Table(header, rows, [False] + [True] * 9, "Metrics on episodes of held-out classes")


def _per_class_table(evals: Sequence[tuple[str, EvalResult]], unit: str = "images") -> Table:
    classes: list[str] = []
    for _, r in evals:
        classes += [c for c in r.class_names if c not in classes]
    header = ["Class"]
    groups = [("", 1)]
    for name, _ in evals:
        header += ["Sensitivity", "Specificity"]
        groups.append((name, 2))
    header.append(f"{capitalize(unit)} (query draws)")
    groups.append((evals[-1][0], 1))
    rows = []
    for c in classes:
        row = [c]
        for _, r in evals:
            stats = r.per_class.get(c)
            row += (
                [
                    fmt_pct_interval(stats["sensitivity"], stats.get("sensitivity_ci")),
                    fmt_pct_interval(stats["specificity"], stats.get("specificity_ci")),
                ]
                if stats
                else [MISSING, MISSING]
            )
        last = evals[-1][1].per_class.get(c)
        if not last:
            row.append(MISSING)
        elif last.get("images") is not None:
            row.append(f"{last['images']:,} ({last['support']:,})")
        else:
            row.append(f"({last['support']:,})")
        rows.append(row)
    return Table(
        header,
        rows,
        [False] + [True] * (len(header) - 1),
        "Per-class sensitivity and specificity (95% interval: bootstrap over the episodes, so it "
        f"reflects which support and query {unit} were drawn, not the finite test set)",
        groups,
    )


def _latency_table(rows: Sequence[Mapping[str, Any]], unit: str = "images") -> Table:
    baseline = str(rows[0]["runtime"])
    base_at = {
        r.get("batch"): float(r["p50_ms"])
        for r in rows
        if str(r["runtime"]) == baseline and not is_missing(r.get("p50_ms"))
    }
    header = ["Runtime", "Batch", "Median (p50)", "99th percentile", f"Median per {singular(unit)}",
              f"Speed-up vs {baseline}"]  # fmt: skip
    out = []
    for r in rows:
        batch, p50 = r.get("batch"), r.get("p50_ms")
        per_image = (
            fmt_ms(float(p50) / batch)
            if isinstance(batch, int) and batch > 0 and not is_missing(p50)
            else MISSING
        )
        base = base_at.get(batch)
        speed = (
            f"{base / float(p50):.2f}×"
            if base is not None and not is_missing(p50) and float(p50) > 0
            else MISSING
        )
        out.append([str(r["runtime"]), str(batch if batch is not None else MISSING),
                    fmt_ms(p50), fmt_ms(r.get("p99_ms")), per_image, speed])  # fmt: skip
    return Table(header, out, [False, True, True, True, True, True], "Inference latency")


def _fields(d: Mapping[str, Any], unit: str = "images") -> KeyValues:
    def label(k: str) -> str:
        return f"Query {unit}" if k == "queries" else field_label(k)

    return KeyValues([(label(k), field_value(k, v)) for k, v in d.items() if v is not None])


def _map_caption(data: ReportData, emb_map: EmbeddingMap | None) -> str:
    assert data.embeddings is not None
    n, dim = data.embeddings.shape
    text = f"{n} query embeddings projected to 2-D by PCA"
    if emb_map is not None:
        ex = emb_map.explained
        text += f" ({100 * ex[0]:.0f}% + {100 * ex[1]:.0f}% of the variance)"
        if len(emb_map.points) < n:
            text += f", {len(emb_map.points)} of them shown"
    text += "."
    if data.prototypes is not None:
        text += (
            " Stars are the class prototypes (means of the support embeddings), mapped the "
            "same way."
        )
    if data.embedding_predictions is not None:
        text += " Ringed points are misclassified."
    return text + f" The map only approximates distances in the {dim}-dimensional embedding space."


def _of(shown: int, k: int) -> str:
    """``"3 of its 5 examples"`` (``"its 5 examples"`` when all are shown)."""
    return f"its {k} examples" if shown == k else f"{shown} of its {k} examples"


def _examples_caption(data: ReportData) -> str:
    """The caption of the support examples' figure (what is drawn, per class)."""
    from medmeta.report.family_figures import (
        IMAGES_PER_CLASS,
        TOP_FEATURES,
        TRACES_PER_CLASS,
    )

    assert data.examples is not None and data.example_labels is not None
    per_class = np.bincount(data.example_labels)
    k = int(per_class[per_class > 0].min())
    if data.example_kind == "image":
        shown = min(k, IMAGES_PER_CLASS)
        return (f"Support images of the new task, one row per class ({_of(shown, k)} "
                "per class), as stored before preprocessing.")  # fmt: skip
    if data.example_kind == "signal":
        shown = min(k, TRACES_PER_CLASS)
        return (f"Example support recordings of the new task, one row per class "
                f"({_of(shown, k)} per class), as the model reads them (after its "
                "preprocessing, e.g. its window and the per-record standardisation to mean 0, "
                "standard deviation 1); x-axis in samples.")  # fmt: skip
    top = min(TOP_FEATURES, data.examples.shape[1])
    return (f"The {top} of {data.examples.shape[1]} features that best separate the new "
            f"task's classes on its {len(data.examples)} support examples (largest ratio of "
            "between-class to within-class variance), as the model reads them: each example "
            "a dot, each class mean a bar.")  # fmt: skip


def _regression_row(name: str, count: str, s: Mapping[str, Any], level: float) -> list[str]:
    return [name, count, fmt_float_ci(s.get("mse"), s.get("mse_ci95"), 4),
            fmt_float_ci(s.get("r2"), s.get("r2_ci95")),
            fmt_ci(s.get("coverage"), s.get("coverage_ci95")),
            fmt_float_ci(s.get("width"), s.get("width_ci95"), 4)]  # fmt: skip


def _regression_table(reg: Mapping[str, Any]) -> Table:
    """Metrics over test episodes (with 95% CIs) and of the points in the figure."""
    level = reg["level"]
    header = ["Evaluation", "Episodes / points", "MSE (95% CI)", "R² (95% CI)",
              f"Coverage of the {100 * level:g}% interval", "Mean interval width"]  # fmt: skip
    rows = [_regression_row(name, str(s.get("episodes", MISSING)) + " episodes", s, level)
            for name, s in reg["evaluations"]]  # fmt: skip
    stats = reg["stats"]
    rows.append(_regression_row(reg.get("points") or "points in the figure",
                                f"{stats['n']} points", stats, level))  # fmt: skip
    return Table(header, rows, [False] + [True] * 5,
                 "Regression metrics (± is the 95% CI over episodes; the figure's points are "
                 "pooled)")  # fmt: skip


def _regression_section(data: ReportData, figs: _Figures) -> Section:
    reg = data.regression
    assert reg is not None
    stats, level = reg["stats"], reg["level"]
    target = f" of {reg['target']}" if reg.get("target") else ""
    sec = Section("regression", "Regression with predictive intervals")
    sec.blocks.append(Paragraph(
        f"Predictions{target} with {100 * level:g}% predictive intervals: a well calibrated "
        f"interval holds the true value {100 * level:g}% of the time (coverage); narrower "
        f"intervals at that coverage are better. Of the {stats['n']} points in the figure, "
        f"{stats['n'] - stats['outside']} lie inside their interval "
        f"(coverage {fmt_pct(stats['coverage'], 1)})."
    ))  # fmt: skip
    sec.blocks.append(_regression_table(reg))
    fig = figs.get(
        "regression_intervals",
        f"Predicted against true values{target}: each bar is a point's {100 * level:g}% "
        "interval, red points have their true value outside it; the dashed line is a perfect "
        "prediction.",
        "predicted against true values with intervals",
    )
    if fig:
        sec.blocks.append(fig)
    sec.blocks.append(Bullets(REGRESSION_GLOSSARY, "How to read these numbers"))
    return sec


def _summary_section(data: ReportData) -> Section:
    summary = Section("summary", "Summary")
    tiles = _summary_tiles(data)
    if tiles:
        summary.blocks.append(Tiles(tiles))
    if data.summary:
        summary.blocks.append(KeyValues([(capitalize(k), v) for k, v in data.summary]))
    return summary


def _training_section(data: ReportData, figs: _Figures) -> Section:
    assert data.history
    sec = Section("training", "Meta-training")
    regression = data.regression is not None
    text = _training_text(data.history, regression)
    if text:
        sec.blocks.append(Paragraph(text))
    caption = (
        "Learning curves: training loss (left); accuracy on training episodes and on "
        "validation episodes of held-out classes with its 95% CI (right)."
    )
    if regression:
        caption = (
            "Learning curves: training loss (left); MSE of the validation episodes in the "
            "target's units (middle); R² of training episodes and of validation episodes of "
            "held-out tasks with its 95% CI (right; 0 is predicting the queries' own mean)."
        )
    fig = figs.get("learning_curves", caption, "learning curves")
    if fig:
        sec.blocks.append(fig)
    return sec


def _evaluation_section(data: ReportData, figs: _Figures) -> Section:
    evals = list(data.evaluations)
    last_name, last = evals[-1]
    sec = Section("evaluation", "Evaluation on held-out classes")
    sec.blocks.append(
        Paragraph(
            f"Each episode is a small classification task on {data.class_noun} never seen "
            "during meta-training: a few labelled examples per class (support), then new "
            f"{data.unit} to classify (queries)."
        )
    )
    sec.blocks.append(_metrics_table(evals))
    sec.blocks.append(_per_class_table(evals, data.unit))
    grid: list[Figure] = []
    for name, caption, alt in (
        ("confusion_matrix",
         f"Confusion matrix ({last_name}): rows are the true class, columns the predicted "
         "class; each cell shows the share of the true class and, in brackets, the count.",
         "confusion matrix"),
        ("per_class",
         f"Sensitivity and specificity of each class ({last_name}).",
         "per-class sensitivity and specificity"),
        ("reliability",
         f"Reliability diagram ({last_name}, ECE {fmt_float(last.ece)}): accuracy of the "
         "predictions in each confidence bin against the diagonal of perfect calibration; "
         "below, the share of predictions per bin.",
         "reliability diagram"),
    ):  # fmt: skip
        fig = figs.get(name, caption, alt)
        if fig:
            grid.append(fig)
    if grid:
        sec.blocks.append(FigureGrid(grid))
    sec.blocks.append(Bullets(glossary(data.unit), "How to read these numbers"))
    return sec


def _adaptation_section(
    data: ReportData, figs: _Figures, emb_map: EmbeddingMap | None
) -> Section | None:
    """The new task: its fields, the family's figure of its support set, the embedding map."""
    has_map = "embedding_map" in figs.plots and data.embeddings is not None
    example_plot = next((n for n in EXAMPLE_PLOTS.values() if n in figs.plots), None)
    if not (data.adaptation or has_map or example_plot):
        return None
    sec = Section("adaptation", "Adaptation to a new task")
    if data.adaptation:
        sec.blocks.append(_fields(data.adaptation, data.unit))
    if example_plot and data.examples is not None:
        fig = figs.get(example_plot, _examples_caption(data), example_plot.replace("_", " "))
        if fig:
            sec.blocks.append(fig)
    if has_map:
        fig = figs.get("embedding_map", _map_caption(data, emb_map), "2-D PCA map of embeddings")
        if fig:
            sec.blocks.append(fig)
    return sec


def _latency_section(data: ReportData, figs: _Figures) -> Section:
    assert data.latency
    sec = Section("latency", "Latency", [_latency_table(data.latency, data.unit)])
    fig = figs.get(
        "latency",
        "Latency per batch: bars show the median, whiskers reach the 99th percentile.",
        "latency chart",
    )
    if fig:
        sec.blocks.append(fig)
    return sec


def _reproducibility_section(data: ReportData) -> Section:
    repro = Section("reproducibility", "Reproducibility")
    if data.command:
        repro.blocks.append(Code(data.command))
    if data.versions:
        repro.blocks.append(KeyValues(list(data.versions.items())))
    repro.blocks.append(
        Paragraph(
            "The numbers of this report are in report.json next to it; figures are in plots/.",
            muted=True,
        )
    )
    return repro


def build_document(
    data: ReportData, plots: Mapping[str, str], emb_map: EmbeddingMap | None = None
) -> Document:
    """The report's sections from checked ``data``.

    Args:
        data: the report data (see :func:`~medmeta.report.data.check_report_data`).
        plots: ``{name: path relative to the report folder}`` of the drawn figures
            (:data:`~medmeta.report.figures.PLOT_NAMES`); missing names are left out.
        emb_map: the 2-D map of the embeddings (for its caption).
    """
    figs = _Figures(plots)
    sections = [_summary_section(data)]
    if data.history:
        sections.append(_training_section(data, figs))
    if data.evaluations:
        sections.append(_evaluation_section(data, figs))
    adaptation = _adaptation_section(data, figs, emb_map)
    if adaptation is not None:
        sections.append(adaptation)
    if data.regression is not None:
        sections.append(_regression_section(data, figs))
    if data.export:
        sections.append(Section("export", "Export and edge runtime", [_fields(data.export)]))
    if data.latency:
        sections.append(_latency_section(data, figs))
    if data.notes:
        sections.append(Section("notes", "Notes and caveats", [Bullets(list(data.notes))]))
    sections.append(_reproducibility_section(data))
    subtitle = f"Report created {data.created}" if data.created else ""
    return Document(data.title, subtitle, sections)
