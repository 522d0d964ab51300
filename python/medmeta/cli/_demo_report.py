"""The demo's report: what the run measured, as :class:`~medmeta.report.ReportData` (summary
lines, evaluations, the adapted task's embeddings and support examples, the export and its
edge check, latency, notes) written by :func:`medmeta.report.write_report`."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medmeta import __version__
from medmeta.cli._demo_edge import raw_examples

if TYPE_CHECKING:
    from medmeta.cli._demo import DemoRun
    from medmeta.report import ReportPaths

__all__ = ["DemoReport", "versions", "write_demo_report"]


@dataclass(frozen=True)
class DemoReport:
    """The report's files and the parts the terminal summary shows."""

    paths: ReportPaths
    adaptation: dict[str, Any]
    export: dict[str, Any]


def export_info(run: DemoRun, checks: dict[str, Any]) -> dict[str, Any]:
    """The export section: files, size, opset, parity with PyTorch on and off the device,
    and the int8 model's parity on the task's held-out queries."""
    exported = run.exported
    info: dict[str, Any] = {
        "path": exported.classifier.name,
        "size_mb": exported.classifier.stat().st_size / 2**20,
        "opset": exported.metadata.get("opset"),
        "exporter": exported.exporter,
        "parity_max_abs_diff": checks["classifier"]["max_abs_diff"],
        "edge_agreement": checks["classifier"]["agreement"],
        "edge_accuracy": checks["classifier"]["accuracy"],
        "files": sorted(p.name for p in run.folder.glob("model*.onnx")),
    }
    if "enrolment" in checks:
        info["enrolment_max_abs_diff"] = checks["enrolment"]["max_abs_diff"]
        if "prototype_max_abs_diff" in checks["enrolment"]:
            info["enrolment_prototype_max_abs_diff"] = checks["enrolment"]["prototype_max_abs_diff"]
    if exported.int8 is not None:
        from medmeta.export.quantize import parity_report

        a = run.adapted  # on the task's held-out queries, not the support it was calibrated on
        parity = parity_report(exported.classifier, exported.int8, a.query_x.numpy(),
                               a.query_y.numpy(), threads=torch.get_num_threads())  # fmt: skip
        info["int8_path"] = exported.int8.name
        info["int8_size_mb"] = exported.int8.stat().st_size / 2**20
        for key in ("max_abs_prob_diff", "top1_agreement", "float_accuracy", "int8_accuracy"):
            info[f"int8_{key}"] = parity[key]
        info["int8_accuracy_change"] = f"{100 * parity['accuracy_change']:+.2f}"
    elif run.int8 and not run.family.int8:
        info["int8"] = f"not exported: {run.family.int8_note}"
    return info


def _summary(run: DemoRun, wall: float) -> list[tuple[str, str]]:
    f, s, fit = run.family, run.settings, run.trained.fit
    t = 1.0 if run.temperature is None else float(run.temperature)
    return [
        ("dataset", f.description),
        ("meta-training classes", ", ".join(run.trained.card["training"]["classes"])),
        ("novel (test) classes", ", ".join(f.novel_classes)),
        ("algorithm", f"{run.algorithm}, {f.backbone_text.format(width=s.width)}"),
        ("meta-training", f"{fit.last_step} steps x {s.meta_batch} episodes, "
                          f"{f.ways}-way {f.shots}-shot {s.queries}-query, Adam 1e-3, seed {run.seed}"),
        ("validation", f"best step {fit.best_step}: {100 * (fit.best_accuracy or 0):.1f} ± "
                       f"{100 * (fit.best_ci95 or 0):.1f}% on {f.validation_source}"),
        ("calibration", f"temperature {t:.3f} fitted on validation episodes"),
        ("device", f"{run.device} ({torch.get_num_threads()} threads)"),
        ("wall time", f"{time.perf_counter() - wall:.0f} s"),
    ]  # fmt: skip


def _notes(run: DemoRun, quick: bool) -> list[str]:
    f = run.family
    notes = [
        f"Validation (best checkpoint, temperature) uses {f.validation_source}, never the "
        f"novel {f.novel_noun}, so the test numbers are unbiased.",
        f"Latency is one forward pass on preprocessed {f.input_text} inputs on this machine; "
        "rerun `medmeta bench edge` for controlled numbers.",
        *f.caveats,
    ]
    if run.int8 and not f.int8:
        notes.append(f"No int8 model for this family: {f.int8_note}")
    if quick:
        notes.insert(0, "Quick mode: a few training steps and episodes to check the pipeline; "
                        "the numbers are not representative.")  # fmt: skip
    return notes


def _map_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` seeded indices of each label, for a readable embedding map."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def support_examples(run: DemoRun) -> dict[str, Any]:
    """The adapted task's support set for the family's figure: raw images, signals as the
    model reads them (its window, standardised per record), or feature vectors (encoded
    table rows, expression) with their names."""
    a = run.adapted
    kind = run.model.preprocessing.kind
    if kind == "image":
        x, names = raw_examples(run.task_raw, a.support_index), None
        kind_name = "image"
    elif kind == "series":
        x, names, kind_name = a.support_x.numpy(), None, "signal"
    else:
        pre = run.model.preprocessing
        names = pre.table.feature_names if pre.table is not None else pre.features
        x, kind_name = a.support_x.numpy(), "vector"
    return {"examples": x, "example_labels": a.support_y.numpy(), "example_kind": kind_name,
            "example_features": None if names is None else list(names)}  # fmt: skip


def versions() -> dict[str, str]:
    """The versions of medmeta, torch, Python and onnxruntime (the report's reproducibility)."""
    out = {"medmeta": __version__, "torch": torch.__version__.split("+")[0],
           "python": platform.python_version()}  # fmt: skip
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def write_demo_report(
    run: DemoRun, checks: dict[str, Any], logits: torch.Tensor, latency: list[dict[str, Any]],
    *, quick: bool, wall: float,
) -> DemoReport:  # fmt: skip
    """Write ``report.html`` / ``report.md`` / ``report.json`` and the plots of ``run``.

    Args:
        run: the finished run (trained, evaluated, adapted, exported).
        checks: :func:`medmeta.cli._demo_edge.edge_check`'s result.
        logits: ``[n, N]`` eager logits of the task's queries.
        latency: :func:`medmeta.cli._demo_latency.measure_latency`'s rows.
        quick: a ``--quick`` run (said in the notes).
        wall: ``time.perf_counter()`` at the start of the run.
    """
    from medmeta.report import ReportData, write_report

    a, f = run.adapted, run.family
    net = a.adapted.cpu().eval()
    with torch.inference_mode():
        shown = _map_subset(a.query_y.numpy(), per_class=60, seed=run.seed)
        embed = getattr(net, "embed", None)
        embeddings = embed(a.query_x[shown]).numpy() if embed is not None else None
        predictions = logits[shown].argmax(-1).numpy()
    export = export_info(run, checks)
    adaptation = {"classes": a.class_names, "shots": f.shots, "queries": len(a.query_y),
                  "accuracy": a.accuracy}  # fmt: skip
    run.stages.stop()
    prototypes = getattr(net, "prototypes", None)
    data = ReportData(
        title=f"medmeta demo: {f.subject}, {f.ways}-way few-shot on {f.novel_title}",
        summary=_summary(run, wall), history=run.trained.fit.history,
        evaluations=list(run.evaluations.items()), embeddings=embeddings,
        embedding_labels=a.query_y.numpy()[shown],
        prototypes=None if prototypes is None else prototypes.numpy(),
        class_names=a.class_names, adaptation=adaptation, export=export, latency=latency,
        notes=_notes(run, quick), command=run.command, versions=versions(),
        embedding_predictions=predictions, unit=f.unit, class_noun=f.task_noun,
        **support_examples(run),
    )  # fmt: skip
    return DemoReport(write_report(run.folder, data), adaptation, export)
