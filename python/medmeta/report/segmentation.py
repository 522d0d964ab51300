"""The report of a few-shot segmentation model: ``report.html`` (one self-contained page),
``report.md``, ``report.json`` and ``plots/*.png``, written by ``medmeta eval --report DIR``.

It shows the Dice and IoU over seeded episodes with their 95% CIs, a per-class table and
bar chart, query images with the predicted and true outlines (the first episodes), a
failure gallery (the lowest-Dice episodes) and the learning curves. The page is built from
the same blocks and renderers as the classification report
(:mod:`medmeta.report.document`, :mod:`medmeta.report.html`, :mod:`medmeta.report.markdown`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from medmeta._files import atomic_write_bytes
from medmeta.report import seg_figures
from medmeta.report.data import ReportPaths, to_jsonable
from medmeta.report.document import (
    Bullets,
    Code,
    Document,
    KeyValues,
    Paragraph,
    Section,
    Table,
    Tile,
    Tiles,
    _Figures,
)
from medmeta.report.formatting import capitalize, fmt_ci
from medmeta.report.html import render_html
from medmeta.report.markdown import render_markdown
from medmeta.report.writer import place_plots

__all__ = ["SEG_PLOT_NAMES", "SegmentationReportData", "write_segmentation_report"]

logger = logging.getLogger(__name__)

FORMAT = "medmeta.segmentation-report/1"
#: The figures a segmentation report can have (``plots/<name>.png``), in page order.
SEG_PLOT_NAMES = ("per_class_dice", "examples", "failures", "learning_curves")

GLOSSARY = [
    "Dice of a class in an episode: 2 |P ∩ T| / (|P| + |T|) over all the episode's query "
    "pixels, P the predicted and T the true pixels of the class; 1 is a perfect overlap, 0 "
    "none. IoU (Jaccard): |P ∩ T| / |P ∪ T|, always at most the Dice.",
    "Each episode segments new query images from a few labelled support images; an "
    "episode's score is the mean over its classes, and ± is the 95% confidence interval of "
    "the mean over episodes (1.96 standard errors), which reflects which images were drawn.",
    "Per-class rows average the episodes that drew the class. A class absent from both the "
    "prediction and the truth of an episode counts as a perfect 1.",
]


@dataclass
class SegmentationReportData:
    """What a segmentation report shows.

    Attributes:
        title: the page title.
        summary: ordered ``(key, value)`` lines (model, data, protocol, ...).
        result: the evaluation as a dict: ``dice``, ``dice_ci95``, ``iou``, ``iou_ci95``,
            ``per_class`` (``{class: {"dice", "dice_ci95", "iou", "iou_ci95",
            "episodes"}}``), ``ways``, ``shots``, ``queries``, ``episodes``, ``seed``.
        examples, failures: episodes to draw, each ``{"title", "support_image",
            "support_mask", "query_images", "true_masks", "pred_masks", "dice",
            "classes"}`` (see :func:`medmeta.report.seg_figures.plot_outlines`).
        history: ``meta_fit`` history rows (``accuracy`` = training Dice), or None.
        notes, command, versions, created: as in :class:`medmeta.report.ReportData`.
    """

    title: str
    summary: list[tuple[str, str]]
    result: Mapping[str, Any]
    examples: Sequence[Mapping[str, Any]] = ()
    failures: Sequence[Mapping[str, Any]] = ()
    history: list[dict] | None = None
    notes: Sequence[str] = ()
    command: str | None = None
    versions: dict[str, str] | None = field(default=None)
    created: str | None = None


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> Table:
    rows = [[name, str(r["episodes"]), fmt_ci(r["dice"], r["dice_ci95"]),
             fmt_ci(r["iou"], r["iou_ci95"])] for name, r in per_class.items()]  # fmt: skip
    return Table(["Class", "Episodes", "Dice (95% CI)", "IoU (95% CI)"], rows,
                 [False, True, True, True],
                 "Per-class Dice and IoU (mean over the episodes that drew the class, 95% CI)")  # fmt: skip


def _protocol(r: Mapping[str, Any]) -> str:
    return (f"{r['ways']}-way {r['shots']}-shot, {r['queries']} queries per episode, "
            f"{r['episodes']} episodes (seed {r['seed']})")  # fmt: skip


def _evaluation(data: SegmentationReportData, figs: _Figures) -> Section:
    r = data.result
    sec = Section("evaluation", "Evaluation")
    sec.blocks.append(Paragraph(
        f"Each episode ({_protocol(r)}) segments query images of classes from a few labelled "
        "support images, as the model would meet a new structure in use."
    ))  # fmt: skip
    sec.blocks.append(_per_class_table(r["per_class"]))
    fig = figs.get("per_class_dice", "Dice and IoU per class; whiskers are the 95% CIs over "
                   "the episodes that drew the class.", "per-class Dice bar chart")  # fmt: skip
    if fig:
        sec.blocks.append(fig)
    sec.blocks.append(Bullets(GLOSSARY, "How to read these numbers"))
    return sec


def _gallery(data: SegmentationReportData, figs: _Figures) -> list[Section]:
    out = []
    fig = figs.get("examples", "Query images of the first episodes: the true outline solid, "
                   "the prediction dashed; left, the support image with its mask.",
                   "query images with predicted and true outlines")  # fmt: skip
    if fig:
        out.append(Section("examples", "Examples", [fig]))
    fig = figs.get("failures", "Failure gallery: the episodes with the lowest Dice (solid: "
                   "truth, dashed: prediction).", "lowest-Dice episodes")  # fmt: skip
    if fig:
        dice = ", ".join(f"{100 * e['dice']:.1f}%" for e in data.failures)
        out.append(Section("failures", "Failure gallery", [
            Paragraph(f"The {len(data.failures)} lowest-Dice episodes (Dice {dice}). Look for "
                      "systematic errors: missed small structures, leaks into neighbours, "
                      "a support image unlike the queries."), fig]))  # fmt: skip
    return out


def build_segmentation_document(data: SegmentationReportData, plots: Mapping[str, str]) -> Document:
    """The report's sections (see the module docstring); ``plots`` maps the drawn figures'
    names to their paths relative to the report folder."""
    figs, r = _Figures(plots), data.result
    tiles = Tiles([
        Tile("Dice", fmt_ci(r["dice"], r["dice_ci95"]), f"95% CI over {r['episodes']} episodes"),
        Tile("IoU", fmt_ci(r["iou"], r["iou_ci95"]), "95% CI over episodes"),
        Tile("Protocol", f"{r['ways']}-way {r['shots']}-shot", f"{r['queries']} queries each"),
    ])  # fmt: skip
    sections = [Section("summary", "Summary",
                        [tiles, KeyValues([(capitalize(k), v) for k, v in data.summary])])]  # fmt: skip
    sections.append(_evaluation(data, figs))
    sections += _gallery(data, figs)
    fig = figs.get("learning_curves", "Meta-training: loss (left); Dice of training episodes "
                   "and of validation episodes with its 95% CI (right).", "learning curves")  # fmt: skip
    if fig:
        sections.append(Section("training", "Meta-training", [fig]))
    if data.notes:
        sections.append(Section("notes", "Notes and caveats", [Bullets(list(data.notes))]))
    repro = Section("reproducibility", "Reproducibility")
    if data.command:
        repro.blocks.append(Code(data.command))
    if data.versions:
        repro.blocks.append(KeyValues(list(data.versions.items())))
    repro.blocks.append(Paragraph("The numbers are in report.json next to this page; figures "
                                  "are in plots/.", muted=True))  # fmt: skip
    sections.append(repro)
    return Document(data.title, f"Report created {data.created}" if data.created else "", sections)


def _draw(data: SegmentationReportData, folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if data.result.get("per_class"):
        out["per_class_dice"] = seg_figures.plot_per_class_dice(
            data.result["per_class"], folder / "per_class_dice.png"
        )
    if data.examples:
        out["examples"] = seg_figures.plot_outlines(
            data.examples, folder / "examples.png", title="First episodes"
        )
    if data.failures:
        out["failures"] = seg_figures.plot_outlines(
            data.failures, folder / "failures.png", title="Lowest-Dice episodes"
        )
    if data.history and any(row.get("loss") is not None for row in data.history):
        out["learning_curves"] = seg_figures.plot_dice_curves(
            data.history, folder / "learning_curves.png"
        )
    return out  # fmt: skip


def _json(data: SegmentationReportData, plots: Mapping[str, str]) -> dict[str, Any]:
    gallery = lambda eps: [{"title": e["title"], "dice": e["dice"],  # noqa: E731
                            "classes": e["classes"]} for e in eps]  # fmt: skip
    return to_jsonable({
        "format": FORMAT, "title": data.title, "created": data.created,
        "summary": [[k, v] for k, v in data.summary], "evaluation": dict(data.result),
        "examples": gallery(data.examples), "failures": gallery(data.failures),
        "history": data.history, "notes": list(data.notes), "command": data.command,
        "versions": data.versions, "plots": dict(plots),
    })  # fmt: skip


def write_segmentation_report(out_dir: str | os.PathLike[str],
                              data: SegmentationReportData) -> ReportPaths:  # fmt: skip
    """Write ``report.html`` (figures embedded), ``report.md``, ``report.json`` and
    ``plots/*.png`` to ``out_dir``, each atomically; figures of an earlier report there that
    this one lacks are removed.

    Raises:
        ImportError: matplotlib is not installed.
    """
    if data.created is None:
        data.created = datetime.now().astimezone().isoformat(timespec="seconds")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = place_plots(out, SEG_PLOT_NAMES, lambda tmp: _draw(data, tmp))
    rel = {name: f"plots/{p.name}" for name, p in paths.items()}
    doc = build_segmentation_document(data, rel)
    result = ReportPaths(out / "report.html", out / "report.md", paths, out / "report.json")
    text = json.dumps(_json(data, rel), indent=1, allow_nan=False)
    atomic_write_bytes(result.json, (text + "\n").encode("utf-8"))
    atomic_write_bytes(result.markdown, render_markdown(doc).encode("utf-8"))
    figures = {rel[n]: p.read_bytes() for n, p in paths.items()}
    atomic_write_bytes(result.html, render_html(doc, figures).encode("utf-8"))
    logger.info("segmentation report written to %s (%d figures)", result.html, len(paths))
    return result
