"""``write_report``: the report folder (HTML, Markdown, JSON and PNG figures)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from medmeta._files import atomic_write_bytes
from medmeta.report.data import FORMAT, ReportData, ReportPaths, check_report_data, to_jsonable
from medmeta.report.document import build_document
from medmeta.report.embedding import EmbeddingMap
from medmeta.report.figures import PLOT_NAMES, draw_figures
from medmeta.report.html import render_html
from medmeta.report.markdown import render_markdown

__all__ = ["report_dict", "write_report"]

logger = logging.getLogger(__name__)


def report_dict(
    data: ReportData, plots: dict[str, str], emb_map: EmbeddingMap | None = None
) -> dict[str, Any]:
    """The content of ``report.json`` (strict JSON data: NaN becomes ``None``).

    The raw embeddings and support examples are not stored (they can be large); the 2-D map
    of the embeddings is, and the examples' kind, shape, labels and feature names; the
    regression part is stored whole (its points, level, evaluations and their stats).
    """
    d: dict[str, Any] = {
        "format": FORMAT,
        "title": data.title,
        "created": data.created,
        "summary": [[k, v] for k, v in data.summary],
        "history": data.history,
        "evaluations": [{"name": name, **r.to_dict()} for name, r in data.evaluations],
        "embedding_map": None,
        "adaptation": data.adaptation,
        "export": data.export,
        "latency": data.latency,
        "notes": list(data.notes),
        "command": data.command,
        "versions": data.versions,
        "plots": dict(plots),
        "examples": None,
        "regression": data.regression,
    }
    if data.examples is not None:
        d["examples"] = {"kind": data.example_kind, "shape": list(data.examples.shape),
                         "labels": data.example_labels, "features": data.example_features}  # fmt: skip
    if emb_map is not None and data.embeddings is not None:
        d["embedding_map"] = {
            "method": emb_map.method,
            "n": int(data.embeddings.shape[0]),
            "dim": int(data.embeddings.shape[1]),
            "explained_variance_ratio": emb_map.explained,
            "index": emb_map.index,
            "points": emb_map.points,
            "labels": emb_map.labels,
            "predictions": None
            if data.embedding_predictions is None
            else data.embedding_predictions[emb_map.index],
            "prototypes": emb_map.prototypes,
            "class_names": data.class_names,
        }
    return to_jsonable(d)


def place_plots(
    out: Path, names: Sequence[str], draw: Callable[[Path], Mapping[str, Path]]
) -> dict[str, Path]:
    """Draw PNGs with ``draw(tmp_folder) -> {name: path}`` into a private temporary folder,
    then move each into ``out/plots/<name>.png`` (atomic rename); a name not drawn this time
    loses its old file. Returns ``{name: final path}`` of the drawn ones."""
    tmp = Path(tempfile.mkdtemp(prefix=".plots-", dir=out))
    try:
        drawn = draw(tmp)
        plots_dir = out / "plots"
        plots_dir.mkdir(exist_ok=True)
        paths: dict[str, Path] = {}
        for name in names:
            target = plots_dir / f"{name}.png"
            if name in drawn:
                os.replace(drawn[name], target)
                paths[name] = target
            else:
                target.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def write_report(
    out_dir: str | os.PathLike[str],
    data: ReportData,
    *,
    max_points: int = 3000,
    seed: int = 0,
) -> ReportPaths:
    """Write ``report.html``, ``report.md``, ``report.json`` and ``plots/*.png`` to ``out_dir``.

    ``report.html`` is one self-contained file (figures embedded, inline CSS, no scripts, no
    external fonts) that can be sent or archived on its own; ``report.md`` links the figures
    by relative path (``plots/<name>.png``), kept for those who want the PNGs. Parts of ``data`` that are ``None`` or empty are left out. Every file
    is written atomically; figures of an earlier report in the same folder that this one
    does not have are removed, so the folder never mixes two reports.

    Args:
        out_dir: the report folder (created if needed).
        data: what to show (checked first; nothing is written when a check fails).
        max_points: most embeddings drawn on the 2-D map (a seeded subset beyond).
        seed: seeds that subset.

    Returns:
        :class:`~medmeta.report.data.ReportPaths`.

    Raises:
        TypeError, ValueError: ``data`` has a part of the wrong type or shape.
        ImportError: matplotlib is not installed.
    """
    checked = check_report_data(data)
    if checked.created is None:
        checked = replace(
            checked, created=datetime.now().astimezone().isoformat(timespec="seconds")
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir must be a folder, got the file {out}")
    out.mkdir(parents=True, exist_ok=True)

    drawn: dict[str, Any] = {}

    def draw(tmp: Path) -> dict[str, Path]:
        figures, drawn["emb_map"] = draw_figures(checked, tmp, max_points=max_points, seed=seed)
        return figures

    plot_paths = place_plots(out, PLOT_NAMES, draw)
    emb_map = drawn["emb_map"]

    rel = {name: f"plots/{p.name}" for name, p in plot_paths.items()}
    doc = build_document(checked, rel, emb_map)
    paths = ReportPaths(
        html=out / "report.html",
        markdown=out / "report.md",
        plots=plot_paths,
        json=out / "report.json",
    )
    text = json.dumps(report_dict(checked, rel, emb_map), indent=1, allow_nan=False)
    atomic_write_bytes(paths.json, (text + "\n").encode("utf-8"))
    atomic_write_bytes(paths.markdown, render_markdown(doc).encode("utf-8"))
    figures = {rel[name]: path.read_bytes() for name, path in plot_paths.items()}
    atomic_write_bytes(paths.html, render_html(doc, figures).encode("utf-8"))
    logger.info("report written to %s (%d figures)", paths.html, len(plot_paths))
    return paths
