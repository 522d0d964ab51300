"""PNG figures of a segmentation report (matplotlib, object API on the Agg canvas, loaded on
use): per-class Dice with 95% CIs, query images with the predicted and true outlines, and
the Dice learning curves of meta-training.

Outlines are matplotlib contours of each class's binary map at level 0.5: the truth solid,
the prediction dashed, each in its own colour (a pair per class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmeta.eval.plots import PathLike, _figure, _save

if TYPE_CHECKING:
    pass

__all__ = ["CLASS_COLOURS", "plot_dice_curves", "plot_outlines", "plot_per_class_dice"]

#: Outline colours of episode class k (1-based): ``CLASS_COLOURS[(k - 1) % 4]`` is
#: ``(truth, prediction)``.
CLASS_COLOURS = (("#00e5ff", "#ff1744"), ("#76ff03", "#d500f9"), ("#ffea00", "#2979ff"),
                 ("#ff9100", "#00bfa5"))  # fmt: skip


def plot_per_class_dice(per_class: Mapping[str, Mapping[str, float]], path: PathLike,
                        *, title: str | None = None) -> Path:  # fmt: skip
    """Horizontal bars of each class's mean Dice and IoU over the episodes that drew it,
    with their 95% CIs as error bars.

    Args:
        per_class: ``{class: {"dice", "dice_ci95", "iou", "iou_ci95", "episodes"}}`` (a
            ``SegmentationResult.per_class``; fractions in [0, 1]).
        path: the PNG to write.
    """
    names = list(per_class)
    fig = _figure(7.5, 1.2 + 0.55 * max(1, len(names)))
    ax = fig.subplots()
    y = np.arange(len(names), dtype=np.float64)
    for offset, key, colour in ((-0.18, "dice", "tab:blue"), (0.18, "iou", "tab:gray")):
        v = np.array([per_class[n][key] for n in names], dtype=np.float64)
        ci = np.array([per_class[n][f"{key}_ci95"] for n in names], dtype=np.float64)
        ax.barh(y + offset, 100 * v, height=0.34, xerr=100 * np.nan_to_num(ci), capsize=3,
                color=colour, label=f"{'IoU' if key == 'iou' else 'Dice'} (95% CI)")  # fmt: skip
        for yi, vi, ci_i in zip(y + offset, v, np.nan_to_num(ci), strict=True):
            ax.text(min(100 * (vi + ci_i) + 1.5, 93), yi, f"{100 * vi:.1f}", va="center",
                    fontsize=8)  # fmt: skip
    ax.set_yticks(y, [f"{n} (n={per_class[n].get('episodes', '?')})" for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% (mean over episodes)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "Dice and IoU per class")
    return _save(fig, path)


def _show(ax: Any, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest",
              vmin=0, vmax=1)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: Any, labels: np.ndarray, classes: int, predicted: bool) -> None:
    for k in range(1, classes + 1):
        binary = (labels == k).astype(np.float32)
        if binary.any() and not binary.all():
            ax.contour(binary, levels=[0.5], colors=CLASS_COLOURS[(k - 1) % 4][int(predicted)],
                       linestyles="dashed" if predicted else "solid", linewidths=1.2)  # fmt: skip


def plot_outlines(examples: Sequence[Mapping[str, Any]], path: PathLike, *,
                  title: str | None = None, max_queries: int = 4) -> Path:  # fmt: skip
    """One row per episode: its first support image with the support mask's outline, then
    its query images with the true (solid) and predicted (dashed) outlines.

    Args:
        examples: ``{"title", "support_image" [H, W(, 3)] in [0, 1], "support_mask" [H, W],
            "query_images" (list of images), "true_masks" [Q, H, W], "pred_masks" [Q, H, W],
            "classes" (names of labels 1..N)}`` per episode.
        path: the PNG to write.
        max_queries: the most query images drawn per episode.
    """
    cols = 1 + min(max_queries, max(len(e["query_images"]) for e in examples))
    fig = _figure(1.9 * cols, 2.0 * len(examples) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(examples), cols, squeeze=False))
    for row, e in zip(axes, examples, strict=True):
        n = len(e["classes"])
        _show(row[0], e["support_image"])
        _outline(row[0], e["support_mask"], n, False)
        row[0].set_title("support", fontsize=8)
        row[0].set_ylabel(e["title"], fontsize=8)
        for j, ax in enumerate(row[1:]):
            if j >= len(e["query_images"]):
                ax.axis("off")
                continue
            _show(ax, e["query_images"][j])
            _outline(ax, e["true_masks"][j], n, False)
            _outline(ax, e["pred_masks"][j], n, True)
            ax.set_title(f"query {j + 1}", fontsize=8)
    from matplotlib.lines import Line2D

    same = all(list(e["classes"]) == list(examples[0]["classes"]) for e in examples)
    names = examples[0]["classes"] if same else [
        f"label {k}" for k in range(1, 1 + max(len(e["classes"]) for e in examples))
    ]  # fmt: skip
    handles = [
        Line2D([], [], color=CLASS_COLOURS[k % 4][int(pred)], linestyle="--" if pred else "-",
               label=f"{c}: {'prediction' if pred else 'truth'}")
        for k, c in enumerate(names) for pred in (False, True)
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)),
               fontsize=8)  # fmt: skip
    fig.suptitle(title or "Query images", fontsize=10)
    return _save(fig, path)


def plot_dice_curves(history: Sequence[Mapping[str, Any]], path: PathLike,
                     *, title: str | None = None) -> Path:  # fmt: skip
    """Training loss (left) and the Dice of training and validation episodes with its 95%
    CI (right) from ``meta_fit`` history rows (``accuracy`` is the Dice there)."""
    fig = _figure(10, 4)
    ax_loss, ax_dice = fig.subplots(1, 2)
    rows = [r for r in history if r.get("loss") is not None]
    ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue",
                 label="train loss")  # fmt: skip
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_dice.plot([r["step"] for r in rows], [100 * r["accuracy"] for r in rows],
                 color="tab:blue", label="training episodes")  # fmt: skip
    val = [r for r in history if r.get("val_accuracy") is not None]
    if val:
        ax_dice.errorbar([r["step"] for r in val], [100 * r["val_accuracy"] for r in val],
                         yerr=[100 * (r.get("val_ci95") or 0) for r in val], fmt="o-",
                         color="tab:orange", capsize=3, label="validation (95% CI)")  # fmt: skip
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("foreground Dice (%)")
    ax_dice.set_ylim(0, 100)
    ax_dice.legend(loc="lower right")
    ax_dice.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
