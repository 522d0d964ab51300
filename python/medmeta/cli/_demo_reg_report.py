"""The regression demo's report: what :mod:`medmeta.cli._demo_regression` measured, as
:class:`~medmeta.report.ReportData` (summary lines with the inputs and the rows left out,
learning curves, the regression section -- predicted against true values with intervals for
the test clinic's held-out rows and the metrics over episodes beside ridge and the support
mean -- the adapted task, the export and its torch-free check, latency, and notes stating
whether meta-learning beats the baselines, with 95% CIs), written by
:func:`medmeta.report.write_report`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medmeta.cli import _regression as R
from medmeta.cli._demo_report import DemoReport, versions
from medmeta.edge.table import MISSING

if TYPE_CHECKING:
    from medmeta.cli._demo_families import RegressionFamily
    from medmeta.cli._demo_regression import RegressionRun

__all__ = ["conclusion", "missing_targets", "write_regression_report"]

#: How a paired 95% CI of (model MSE - baseline MSE) reads.
VERDICTS = {-1: "better", 0: "no significant difference", 1: "worse"}


def missing_targets(family: RegressionFamily) -> dict[str, tuple[int, int]]:
    """``{group: (rows without the target, rows)}`` of the family's table, as
    ``--drop-missing-targets`` leaves them out."""
    from medmeta.data import registry

    rows = registry.load(family.dataset, rows=True).x
    groups = np.char.strip(rows.column(family.group_by).astype(str))
    missing = np.isin(np.char.lower(np.char.strip(rows.column(family.target).astype(str))),
                      list(MISSING))  # fmt: skip
    return {str(g): (int(missing[groups == g].sum()), int((groups == g).sum()))
            for g in sorted(set(groups.tolist()))}  # fmt: skip


def _groups(run: RegressionRun, part: str) -> str:
    """``"other (3,454 patients), SVI (2,040)"``: the part's groups with their rows."""
    counts = run.data.counts()
    names = run.split.names(run.data, part).split(",")
    ids = [run.data.group_names.index(n) for n in names]
    return ", ".join(f"{n} ({counts[g]:,}{' ' + run.family.unit if i == 0 else ''})"
                     for i, (n, g) in enumerate(zip(names, ids, strict=True)))  # fmt: skip


def _inputs(run: RegressionRun) -> str:
    """The model's input columns and what is not an input, from its encoding."""
    f, pre = run.family, run.model.preprocessing
    columns = list(pre.table.columns) if pre.table is not None else []
    return (f"{len(columns)} columns, encoded as {pre.input_shape[0]} features fitted on the "
            f"training {f.group_noun}' rows (numbers standardised with a missing-value "
            f"indicator, categories and 0/1 flags one-hot): {', '.join(columns)}. Not inputs: "
            f"{f.target} (the target), {f.group_by} (the task) and the table's class column "
            f"({R.EMBEDDED_CLASS_COLUMN!r}, here the diagnosis)")  # fmt: skip


def _summary(run: RegressionRun, wall: float) -> list[tuple[str, str]]:
    f, s, t = run.family, run.settings, run.trained
    val = t.card["training"]
    gone = missing_targets(f)
    test_missing, test_rows = gone[f.test_group]
    best = (f"best step {t.fit.best_step}: MSE {val['val_mse']:.4g}, R² {val['val_r2']:.3f} ± "
            f"{val['val_r2_ci95']:.3f} on episodes of {run.split.names(run.data, 'val')}"
            if val["val_mse"] is not None else "none (the last step is kept)")  # fmt: skip
    return [
        ("dataset", f.description),
        ("target", f"{f.target}: {f.target_text}"),
        ("rows left out", f"{run.data.dropped:,} of {run.data.dropped + len(run.data):,} have no "
                          f"{f.target} (--drop-missing-targets), {test_missing} of the "
                          f"{test_rows} at {f.test_group}"),
        ("tasks", f"each value of {f.group_by} (one of the {f.group_noun}) is a task"),
        ("meta-training " + f.group_noun, _groups(run, "train")),
        ("validation", _groups(run, "val")),
        ("test (new task)", f"{_groups(run, 'test')}: never trained or validated on"),
        ("inputs", _inputs(run)),
        ("algorithm", f"{run.algorithm}, {f.backbone_text.format(width=s.width)}"),
        ("meta-training", f"{t.fit.last_step} steps x {s.meta_batch} episodes, "
                          f"{f.adapt_shots}-shot {s.queries}-query, Adam 1e-3, seed {run.seed}"),
        ("validation result", best),
        ("interval", f"{f.members}-member bootstrap ensemble, {100 * f.level:g}% normal "
                     "interval (member spread and out-of-bag noise)"),
        ("device", f"{run.device} ({torch.get_num_threads()} threads)"),
        ("wall time", f"{time.perf_counter() - wall:.0f} s"),
    ]  # fmt: skip


def _evaluations(run: RegressionRun) -> list[tuple[str, dict[str, Any]]]:
    """Per K: the support mean, ridge, one adaptation, then the ensemble (the last row is
    the ensemble at the largest K: the report's tiles show it)."""
    rows = []
    for k, e in run.evaluations.items():
        for key, label in (("support_mean", "support mean"), ("ridge", "ridge (LOO)")):
            if e.baselines.get(key) is not None:
                rows.append((f"{k}-shot: {label}", e.baselines[key]))
        rows.append((f"{k}-shot: {run.algorithm}, one adaptation", e.single))
        rows.append((f"{k}-shot: {run.algorithm}, {run.family.members}-member ensemble",
                     e.metrics))  # fmt: skip
    return rows


def _verdict(diff: float, ci: float) -> int:
    return -1 if diff + ci < 0 else 1 if diff - ci > 0 else 0


def conclusion(run: RegressionRun) -> list[str]:
    """One line per K (the model's MSE against each baseline, with the paired difference
    and its 95% CI) and the conclusion: does meta-learning beat the baselines here?"""
    f, lines, verdicts = run.family, [], {}
    for k, e in run.evaluations.items():
        m, parts = e.metrics, []
        for key, label in (("ridge", "ridge (LOO)"), ("support_mean", "the support mean")):
            b = e.baselines.get(key)
            if b is None:
                continue
            verdicts[k, label] = v = _verdict(b["mse_diff"], b["mse_diff_ci95"])
            parts.append(f"{label} {b['mse']:.3f} ± {b['mse_ci95']:.3f} (paired difference "
                         f"{b['mse_diff']:+.3f} ± {b['mse_diff_ci95']:.3f}: {VERDICTS[v]})")  # fmt: skip
        lines.append(f"K = {k} ({e.settings['episodes']} episodes at {f.test_group}): "
                     f"{run.algorithm}'s MSE {m['mse']:.3f} ± {m['mse_ci95']:.3f} against "
                     + " and ".join(parts) + f"; its {100 * f.level:g}% intervals cover "
                     f"{100 * m['coverage']:.1f} ± {100 * m['coverage_ci95']:.1f}% of the "
                     "queries.")  # fmt: skip
    baselines = sorted({label for _, label in verdicts})
    if all(v == -1 for v in verdicts.values()):
        text = (f"Conclusion: meta-learning on the other {f.group_noun} beats "
                f"{' and '.join(baselines)} fitted on the same K {f.unit} at {f.test_group}, "
                "at every K (every paired 95% CI of the MSE difference excludes 0).")  # fmt: skip
    else:
        not_better = [f"{label} at K = {k} ({VERDICTS[v]})" for (k, label), v in verdicts.items()
                      if v != -1]  # fmt: skip
        text = (f"Conclusion: meta-learning does not beat every baseline here: against "
                f"{', '.join(not_better)} its MSE is not lower with 95% confidence.")  # fmt: skip
    text += (
        f" Both baselines see only the K {f.unit} of the episode; the model also "
        f"brings what it learned at the other {f.group_noun}."
    )
    return [*lines, text]


def _r2_note(run: RegressionRun) -> str:
    k = max(run.evaluations)
    e = run.evaluations[k]
    m, mean = e.metrics, e.baselines["support_mean"]
    return (f"R² of an episode is measured against the mean of its own {e.settings['queries']} "
            f"queries, which no method knows: at K = {k} {run.algorithm} scores "
            f"{m['r2']:.3f} ± {m['r2_ci95']:.3f} (median {m['r2_median']:.3f}) and the support "
            f"mean {mean['r2']:.3f}; a few very high {run.family.target} values make the "
            "per-episode R² noisy, so read the MSE and its paired differences. The figure's "
            "R² is pooled over its points.")  # fmt: skip


def _notes(run: RegressionRun, quick: bool) -> list[str]:
    f, a = run.family, run.adapted
    k = f.adapt_shots
    notes = [
        *conclusion(run),
        _r2_note(run),
        f"Validation (the best checkpoint) uses {run.split.names(run.data, 'val')} only, never "
        f"{f.test_group}, so the test numbers are unbiased. The test episodes all draw from "
        f"{f.test_group}'s {len(run.test_data)} {f.unit} with a {f.target} value, so their CIs "
        f"reflect which {f.unit} were drawn, not the finite clinic.",
        f"The figure shows one adaptation: the ensemble adapted to {k} seeded {f.unit} of "
        f"{f.test_group}, on its {len(a.query_index)} other {f.unit}; another draw of the "
        f"{k} would move its numbers.",
        f"Latency is one forward pass (prediction and interval of all {f.members} members) on "
        f"preprocessed {f.input_text} inputs on this machine; rerun `medmeta bench edge` "
        "for controlled numbers.",
        *f.caveats,
    ]
    if quick:
        notes.insert(0, "Quick mode: a few training steps and episodes to check the pipeline; "
                        "the numbers are not representative.")  # fmt: skip
    return notes


def _adaptation(run: RegressionRun) -> dict[str, Any]:
    f, a = run.family, run.adapted
    held = a.held_out or {}
    return {"clinic": f.test_group, "support_rows": f.adapt_shots, "queries": len(a.query_index),
            "mse": held.get("mse"), "r2": held.get("r2"), "coverage": held.get("coverage"),
            "interval_width": held.get("width"), "support_mean_mse": held.get("support_mean_mse"),
            "noise_std": float(a.ensemble.noise_std), "members": f.members, "level": f.level,
            "seed": a.extra["seed"]}  # fmt: skip


def _export(run: RegressionRun, checks: dict[str, Any]) -> dict[str, Any]:
    exported = run.exported
    return {
        "path": exported.path.name, "size_mb": exported.path.stat().st_size / 2**20,
        "opset": exported.metadata.get("opset"), "exporter": exported.exporter,
        "export_check_max_abs_diff": exported.max_abs_diff,
        "edge_rows": checks["rows"], "edge_max_abs_diff": checks["max_abs_diff"],
        "edge_relative_diff": checks["relative_diff"], "edge_mse": checks["mse"],
        "edge_coverage": checks["coverage"], "torch_free": checks["torch_free"],
        "files": sorted(p.name for p in run.folder.glob("model*.onnx")),
        "int8": "not exported: a regressor exports as one float32 file",
    }  # fmt: skip


def write_regression_report(
    run: RegressionRun, checks: dict[str, Any], latency: list[dict[str, Any]], *, quick: bool,
    wall: float,
) -> DemoReport:  # fmt: skip
    """Write ``report.html`` / ``report.md`` / ``report.json`` and the plots of ``run``.

    Args:
        run: the finished run (trained, evaluated, adapted, exported).
        checks: :func:`medmeta.cli._demo_edge.regression_edge_check`'s result.
        latency: :func:`medmeta.cli._demo_latency.measure_latency`'s rows.
        quick: a ``--quick`` run (said in the notes).
        wall: ``time.perf_counter()`` at the start of the run.
    """
    from medmeta.report import ReportData, write_report

    f = run.family
    adaptation, export = _adaptation(run), _export(run, checks)
    points = (f"the {len(run.points['true'])} other {f.test_group} {f.unit} after adapting to "
              f"{f.adapt_shots}")  # fmt: skip
    run.stages.stop()
    data = ReportData(
        title=f"medmeta demo: {f.subject}, few-shot regression of {f.target} at a new "
              f"{f.group_noun[:-1]}",
        summary=_summary(run, wall), history=run.trained.fit.history,
        regression={**run.points, "level": f.level, "target": f.target, "points": points,
                    "evaluations": _evaluations(run)},
        adaptation=adaptation, export=export, latency=latency, notes=_notes(run, quick),
        command=run.command, versions=versions(), unit=f.unit, class_noun=f.group_noun,
    )  # fmt: skip
    return DemoReport(write_report(run.folder, data), adaptation, export)
