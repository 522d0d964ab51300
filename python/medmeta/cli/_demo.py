"""The demo pipeline on an embedded real data set of one family (images by default: the
blood-cell images PBC, Acevedo et al. 2020, CC BY 4.0; see :mod:`medmeta.cli._demo_families`
for signals, tables and gene expression):

1. meta-train on the training classes (validation on held-out examples of them, or on
   validation classes);
2. evaluate N-way 1-shot and K-shot episodes on the novel classes;
3. adapt to a new K-shot task on novel classes, measure it on their other examples;
4. export the adapted model to ONNX (classifier, enrolment pair, int8 where it applies);
5. verify the export with the torch-free edge runtime in a process where torch cannot load;
6. time eager PyTorch against onnxruntime; 7. write the report.

``--family regression`` runs the same stages for few-shot regression
(:mod:`medmeta.cli._demo_regression`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medmeta.cli import _data, _workflow
from medmeta.cli._demo_edge import PARITY_TOLERANCE, edge_check, raw_examples
from medmeta.cli._demo_families import (
    DemoFamily,
    DemoSettings,
    RegressionFamily,
    get_family,
    split_family,
)
from medmeta.cli._demo_latency import measure_latency
from medmeta.cli._demo_stages import Stages
from medmeta.cli._model import load_model

if TYPE_CHECKING:
    from medmeta.cli._demo_regression import RegressionOutcome

__all__ = ["PARITY_TOLERANCE", "DemoOutcome", "DemoSettings", "measure_latency", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass
class DemoOutcome:
    """What the demo measured, for the terminal summary and the tests."""

    report_html: Path
    report_md: Path
    onnx: Path
    evaluations: dict[Any, Any]  # by evaluation name (by shots in the regression demo)
    adaptation: dict[str, Any]
    export: dict[str, Any]
    latency: list[dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    family: str = "images"
    unit: str = "images"

    def summary_lines(self) -> list[str]:
        lines = []
        for name, r in self.evaluations.items():
            lines.append(f"  {name:<13} accuracy {100 * r.accuracy:5.1f} ± {100 * r.ci95:.1f}%  "
                         f"AUROC {r.auroc:.3f}  ECE {r.ece:.3f}  ({r.episodes} episodes)")  # fmt: skip
        a = self.adaptation
        lines.append(f"  new {a['shots']}-shot task ({', '.join(a['classes'])}): "
                     f"{100 * a['accuracy']:.1f}% on {a['queries']} other {self.unit}")  # fmt: skip
        e = self.export
        lines.append(f"  ONNX {e['path']} ({e['size_mb']:.2f} MB): torch-free edge runtime agrees "
                     f"on {100 * e['edge_agreement']:.1f}% of labels, max |Δp| {e['parity_max_abs_diff']:.1e}")  # fmt: skip
        fast = {(r["runtime"], r["batch"]): r["p50_ms"] for r in self.latency}
        if ("eager PyTorch", 1) in fast and ("ORT float32", 1) in fast:
            lines.append(f"  batch-1 latency: eager PyTorch {fast['eager PyTorch', 1]:.2f} ms, "
                         f"ORT float32 {fast['ORT float32', 1]:.2f} ms"
                         + (f", ORT int8 {fast['ORT int8', 1]:.2f} ms" if ("ORT int8", 1) in fast else ""))  # fmt: skip
        return lines


@dataclass
class DemoRun:
    """One demo run's choices, and what its stages produce (filled in stage by stage)."""

    family: DemoFamily
    settings: DemoSettings
    folder: Path
    device: str
    algorithm: str
    seed: int
    int8: bool
    progress: bool
    command: str | None
    stages: Stages
    trained: Any = None  # _workflow.TrainOutcome
    model: Any = None  # the trained model folder, loaded
    novel_raw: Any = None  # raw examples of the novel classes
    task_raw: Any = None  # raw examples of the adapted task's classes
    evaluations: dict[str, Any] = field(default_factory=dict)
    adapted: Any = None  # _workflow.AdaptOutcome
    exported: Any = None  # medmeta.export.ExportResult

    @property
    def temperature(self) -> float | None:
        return self.model.card.get("temperature")

    @property
    def last_evaluation(self) -> str:
        return f"{self.family.ways}-way {self.family.shots}-shot"


def _train(run: DemoRun) -> None:
    f, s = run.family, run.settings
    run.stages.start("train", f"meta-training {run.algorithm} on {len(f.train_classes)} "
                     f"{f.class_noun} ({s.steps} steps of {s.meta_batch} episodes, "
                     f"{f.ways}-way {f.shots}-shot)")  # fmt: skip
    data = _data.load_dataset(f.dataset)
    train_raw, val_raw, run.novel_raw = split_family(f, data, run.seed, f.shots + s.queries)
    run.trained = _workflow.train_model(
        data=train_raw, classes=None, val_classes=None, val_set=val_raw, algorithm=run.algorithm,
        params={}, ways=f.ways, shots=f.shots, queries=s.queries, steps=s.steps,
        meta_batch=s.meta_batch, lr=1e-3, backbone=f.backbone, width=s.width, image_size=None,
        channels=None, val_every=s.val_every, val_episodes=s.val_episodes, seed=run.seed,
        device=run.device, out=run.folder / "model", resume=False, progress=run.progress,
        command=run.command, signal_length=f.signal_length,
    )  # fmt: skip
    run.model = load_model(run.folder / "model", run.device)


def _evaluate(run: DemoRun) -> Any:
    """Evaluations at 1 and K shots on the novel classes; returns their preprocessed data."""
    f = run.family
    run.stages.start("evaluate", f"evaluating on the {len(f.novel_classes)} novel "
                     f"{f.novel_noun} ({run.settings.test_episodes} episodes per setting)")  # fmt: skip
    test_set = _workflow.task_data(run.model, run.novel_raw, None)
    for shots in (1, f.shots):
        run.evaluations[f"{f.ways}-way {shots}-shot"] = _workflow.evaluate_model(
            run.model, test_set, ways=f.ways, shots=shots, queries=f.eval_queries,
            episodes=run.settings.test_episodes, seed=run.seed + 10,
            temperature=run.temperature, device=run.device, progress=run.progress,
        )  # fmt: skip
    return test_set


def _adapt(run: DemoRun, test_set: Any) -> None:
    f = run.family
    run.stages.start("adapt", f"adapting to a new {f.shots}-shot task on the novel {f.novel_noun}")
    task_raw, task_set = run.novel_raw, test_set
    if set(f.task_classes) != set(f.novel_classes):
        task_raw = _data.select_classes(run.novel_raw, ",".join(f.task_classes))
        task_set = _workflow.task_data(run.model, task_raw, None)
    run.task_raw = task_raw
    run.adapted = _workflow.adapt_model(run.model, task_set, shots=f.shots, seed=run.seed + 20,
                                        out=run.folder / "adapted", device=run.device)  # fmt: skip


def _export(run: DemoRun) -> None:
    from medmeta.export import to_onnx

    int8 = run.int8 and run.family.int8
    run.stages.start("export", "exporting the adapted model to ONNX (classifier, enrolment pair"
                     + (", int8)" if int8 else ")"))  # fmt: skip
    onnx_path = run.folder / "model.onnx"
    for stale in run.folder.glob("model*.onnx"):
        stale.unlink()
    a = run.adapted
    run.exported = to_onnx(
        a.adapted.cpu().eval(), onnx_path, support_x=a.support_x, support_y=a.support_y,
        preprocessing=run.model.preprocessing, class_names=a.class_names,
        temperature=run.temperature, evaluation=run.evaluations[run.last_evaluation],
        form="both", int8=int8, calibration_x=a.support_x.numpy(),
    )  # fmt: skip


def _verify(run: DemoRun) -> tuple[dict[str, Any], torch.Tensor]:
    """The torch-free check; returns it and the eager logits ``[n, N]`` of the queries."""
    run.stages.start(
        "verify", "verifying the export with the torch-free edge runtime (subprocess without torch)"
    )
    a = run.adapted
    net = a.adapted.cpu().eval()
    with torch.inference_mode():
        logits = net(a.query_x)
    t = 1.0 if run.temperature is None else float(run.temperature)
    expected = torch.softmax(logits.double() / t, -1).numpy()
    prototypes = getattr(net, "prototypes", None)
    checks = edge_check(
        run.folder / "edge_check", run.exported, raw_examples(run.task_raw, a.support_index),
        a.support_y.numpy(), raw_examples(run.task_raw, a.query_index), a.query_y.numpy(),
        a.class_names, expected, None if prototypes is None else prototypes.numpy(),
    )  # fmt: skip
    return checks, logits


def run_demo(
    out: str | Path = "medmeta-demo",
    *,
    family: str = "images",
    quick: bool = False,
    device: str = "cpu",
    algorithm: str | None = None,
    steps: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    int8: bool = True,
    progress: bool = True,
    say: Callable[[str], None] = print,
    command: str | None = None,
) -> DemoOutcome | RegressionOutcome:
    """The whole demo on ``family``'s data (see the module docstring; a regression family
    runs :func:`medmeta.cli._demo_regression.run_regression_demo`); writes everything under
    ``out``. ``algorithm`` defaults to protonet (regression: maml). An unknown ``family`` is
    a usage error listing the families."""
    import matplotlib  # noqa: F401  (fail early, before training, without matplotlib)

    from medmeta.cli._demo_report import write_demo_report

    fam = get_family(family)
    if isinstance(fam, RegressionFamily):
        from medmeta.cli._demo_regression import run_regression_demo

        return run_regression_demo(
            out, family=fam, quick=quick, device=device, algorithm=algorithm, steps=steps,
            episodes=episodes, seed=seed, progress=progress, say=say, command=command,
        )  # fmt: skip
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    run = DemoRun(fam, fam.settings(quick, steps, episodes), folder, device,
                  algorithm or "protonet", seed, int8, progress, command, Stages(say))  # fmt: skip
    wall = time.perf_counter()
    _train(run)
    test_set = _evaluate(run)
    _adapt(run, test_set)
    _export(run)
    checks, logits = _verify(run)
    run.stages.start("latency", "timing eager PyTorch and onnxruntime at batch 1 and 32")
    files = {"ORT float32": run.exported.classifier}
    if run.exported.int8 is not None:
        files["ORT int8"] = run.exported.int8
    net = run.adapted.adapted.cpu().eval()
    latency = measure_latency(net, files, run.adapted.query_x[:32].numpy(),
                              run.settings.latency_runs)  # fmt: skip
    run.stages.start("report", "writing the report")
    report = write_demo_report(run, checks, logits, latency, quick=quick, wall=wall)
    run.stages.finish(folder, wall)
    return DemoOutcome(report.paths.html, report.paths.markdown, run.exported.classifier,
                       run.evaluations, report.adaptation, report.export, latency,
                       run.stages.seconds, fam.name, fam.unit)  # fmt: skip
