"""``medmeta eval --report DIR`` for a segmentation model: gather what the report shows (the
evaluation, the first and the lowest-Dice episodes drawn again from the evaluation's seed,
the model card's training facts and history) and write it with
:func:`medmeta.report.segmentation.write_segmentation_report`."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from medmeta import __version__
from medmeta.cli._model import TrainedModel
from medmeta.cli._seg_eval import episode_examples, result_dict
from medmeta.data import SegmentationDataset

__all__ = ["write_report"]

#: Episodes shown as examples (the first ones) and in the failure gallery (the worst).
N_EXAMPLES, N_FAILURES = 3, 4


def _history(folder: Path) -> list[dict] | None:
    try:
        return json.loads((folder / "log.json").read_text("utf-8")).get("history")
    except (OSError, ValueError, AttributeError):
        return None


def _summary(model: TrainedModel, data: str, classes: list[str]) -> list[tuple[str, str]]:
    card, t = model.card, model.card.get("training", {})
    shape = "x".join(map(str, model.preprocessing.input_shape))
    rows = [("model", str(model.folder)), ("algorithm", card["algorithm"]),
            ("backbone", f"{card['backbone']['name']} {card['backbone'].get('kwargs') or ''}"),
            ("input", f"{shape} (channels x height x width)"), ("data", data),
            ("classes evaluated", ", ".join(classes))]  # fmt: skip
    if t:
        how = "self-supervised (superpixels)" if t.get("self_supervised") else "on masks"
        rows.append(("training", f"{t.get('steps')} steps {how} on {t.get('data')}"))
        if t.get("val_dice") is not None:
            rows.append(("validation Dice", f"{100 * t['val_dice']:.1f} ± "
                         f"{100 * (t.get('val_ci95') or 0):.1f}% ({t.get('validation')})"))  # fmt: skip
    return rows


def _episodes(examples: dict[int, dict], indices: list[int], label: str) -> list[dict]:
    out = []
    for k in indices:
        e = dict(examples[k])
        e["title"] = f"{label} {k}, {', '.join(e['classes'])}\nDice {100 * e['dice']:.1f}%"
        out.append(e)
    return out


def write_report(
    folder: str, model: TrainedModel, dataset: SegmentationDataset, classes: list[str],
    result: Any, *, data: str, min_foreground: int, device: str, command: str,
) -> Path:  # fmt: skip
    """Write the report to ``folder``; returns the path of ``report.html``."""
    import torch

    from medmeta.report.segmentation import SegmentationReportData, write_segmentation_report

    order = np.argsort(result.episode_dice, kind="stable")
    worst = [int(k) for k in order[:N_FAILURES]]
    first = list(range(min(N_EXAMPLES, result.episodes)))
    drawn = episode_examples(model, dataset, classes, result, sorted({*first, *worst}),
                             min_foreground, device)  # fmt: skip
    notes = [
        "Scores are on the model's input size "
        f"({'x'.join(map(str, model.preprocessing.input_shape[1:]))}); masks were resized to it "
        "(each pixel takes the class covering most of it).",
    ]
    if model.card.get("training", {}).get("data") == data:
        notes.append("The evaluation data is the training data: give held-out images or "
                     "classes (--data / --classes) for an unbiased estimate.")  # fmt: skip
    report = SegmentationReportData(
        title=f"medmeta segmentation report: {model.card['algorithm']} on {data}",
        summary=_summary(model, data, classes), result=result_dict(result, min_foreground),
        examples=_episodes(drawn, first, "episode"), failures=_episodes(drawn, worst, "episode"),
        history=_history(model.folder), notes=notes, command=command,
        versions={"medmeta": __version__, "torch": torch.__version__.split("+")[0],
                  "python": platform.python_version()},
    )  # fmt: skip
    return write_segmentation_report(folder, report).html
