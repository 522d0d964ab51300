"""Draw the report's PNG figures from checked :class:`~medmeta.report.data.ReportData`,
reusing :mod:`medmeta.eval.plots` (matplotlib, Agg canvas, loaded on use)."""

from __future__ import annotations

from pathlib import Path

from medmeta.eval import plots
from medmeta.report import family_figures
from medmeta.report.data import ReportData
from medmeta.report.embedding import EmbeddingMap, pca_map
from medmeta.report.regression import plot_regression_curves

__all__ = ["EXAMPLE_PLOTS", "PLOT_NAMES", "draw_examples", "draw_figures", "draw_regression"]

#: Every figure a report can have, in the order they appear (file ``plots/<name>.png``).
PLOT_NAMES = (
    "learning_curves",
    "confusion_matrix",
    "per_class",
    "reliability",
    "support_images",
    "signal_traces",
    "feature_values",
    "embedding_map",
    "regression_intervals",
    "latency",
)

#: The figure of each ``ReportData.example_kind``.
EXAMPLE_PLOTS = {"image": "support_images", "signal": "signal_traces", "vector": "feature_values"}


def draw_examples(data: ReportData, folder: Path) -> dict[str, Path]:
    """The family's figure of the support examples (``{}`` when there are none)."""
    if data.examples is None or data.example_kind is None:
        return {}
    name = EXAMPLE_PLOTS[data.example_kind]
    path, x, y = folder / f"{name}.png", data.examples, data.example_labels
    if data.example_kind == "image":
        family_figures.plot_support_images(x, y, path, class_names=data.class_names)
    elif data.example_kind == "signal":
        family_figures.plot_signal_traces(x, y, path, class_names=data.class_names)
    else:
        family_figures.plot_feature_values(
            x, y, path, class_names=data.class_names, feature_names=data.example_features,
            xlabel="value as the model reads it",
        )  # fmt: skip
    return {name: path}


def draw_regression(data: ReportData, folder: Path) -> dict[str, Path]:
    """Predicted vs true with intervals (``{}`` without ``data.regression``)."""
    reg = data.regression
    if reg is None:
        return {}
    path = plots.plot_regression_intervals(
        reg["true"], reg["pred"], reg["lower"], reg["upper"], folder / "regression_intervals.png",
        title=f"Predictions: {reg['points']}" if reg.get("points") else None,
        level=reg["level"], target=reg.get("target"),
    )  # fmt: skip
    return {"regression_intervals": path}


def draw_figures(
    data: ReportData, folder: Path, *, max_points: int = 3000, seed: int = 0
) -> tuple[dict[str, Path], EmbeddingMap | None]:
    """Write ``folder/<name>.png`` for each part of ``data`` that is present.

    Args:
        data: checked report data (arrays as numpy).
        folder: where the PNGs go.
        max_points: most embeddings drawn on the map (seeded subset beyond).
        seed: seeds that subset.

    Returns:
        ``({name: path}, the embedding map or None)``.
    """
    out: dict[str, Path] = {}
    rows = [r for r in data.history or () if r.get("loss") is not None]
    if rows:  # a regression's history holds R² where a classifier's holds accuracy
        draw = plot_regression_curves if data.regression is not None else plots.plot_learning_curves
        out["learning_curves"] = draw(
            data.history, folder / "learning_curves.png", title="Meta-training"
        )
    if data.evaluations:
        name, result = list(data.evaluations)[-1]
        out["confusion_matrix"] = plots.plot_confusion_matrix(
            result, folder / "confusion_matrix.png", title=f"Confusion matrix, {name}"
        )
        out["per_class"] = plots.plot_per_class(
            result, folder / "per_class.png", title=f"Per-class sensitivity and specificity, {name}"
        )
        out["reliability"] = plots.plot_reliability_diagram(
            result,
            folder / "reliability.png",
            title=f"Reliability, {name} (ECE {result.ece:.3f})",
        )
    out |= draw_examples(data, folder)
    out |= draw_regression(data, folder)
    emb_map = None
    if data.embeddings is not None and len(data.embeddings):
        emb_map = pca_map(
            data.embeddings,
            data.embedding_labels,
            data.prototypes,
            max_points=max_points,
            seed=seed,
        )
        wrong = None
        if data.embedding_predictions is not None and data.embedding_labels is not None:
            wrong = (data.embedding_predictions != data.embedding_labels)[emb_map.index]
        out["embedding_map"] = plots.plot_embedding_map(
            emb_map.points,
            folder / "embedding_map.png",
            labels=emb_map.labels,
            prototypes=emb_map.prototypes,
            class_names=data.class_names,
            misclassified=wrong,
            axis_labels=emb_map.axis_labels(),
            method=emb_map.method,
        )
    if data.latency and any(r.get("p50_ms") is not None for r in data.latency):
        out["latency"] = plots.plot_latency(data.latency, folder / "latency.png")
    return out, emb_map
