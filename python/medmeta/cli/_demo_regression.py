"""The demo's few-shot regression pipeline (``medmeta demo --family regression``) on a
:class:`~medmeta.cli._demo_families.RegressionFamily` (by default the thyroid table: a
patient's T3 at a clinic, each clinic one task):

1. meta-train (MAML by default: Finn et al. 2017, sec. 3.1, squared-error inner and outer
   loss) on the training clinics, validating on the validation clinic
   (:func:`~medmeta.cli._reg_workflow.train_regressor`; the rows' encoding is fitted on
   the training clinics' rows only);
2. evaluate seeded K-shot episodes of the test clinic for each K: the bootstrap ensemble's
   MSE, R² and interval coverage, and ridge and the support mean on the same episodes with
   paired differences (:func:`~medmeta.cli._reg_eval.evaluate_regressor`);
3. adapt a bootstrap ensemble (Efron & Tibshirani 1993, ch. 6) to K rows of the test
   clinic; its other rows are the report figure's held-out points;
4. export the ensemble with its interval to ONNX (:func:`medmeta.export.regressor_to_onnx`);
5. check the export with the torch-free :class:`~medmeta.edge.EdgeRegressor` (``medmeta
   predict`` in a process where torch cannot load) on the raw CSV rows with the target;
6. time eager PyTorch against onnxruntime; 7. write the report
   (:mod:`medmeta.cli._demo_reg_report`).

Rows without the target are left out (``--drop-missing-targets``); the report says how many.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta.cli import _regression as R
from medmeta.cli import _setup
from medmeta.cli._demo import DemoOutcome
from medmeta.cli._demo_edge import regression_edge_check
from medmeta.cli._demo_families import DemoSettings, RegressionFamily
from medmeta.cli._demo_latency import measure_latency
from medmeta.cli._demo_stages import Stages
from medmeta.cli._model import load_model
from medmeta.data import DataError

__all__ = ["GroupSplit", "RegressionOutcome", "RegressionRun", "run_regression_demo",
           "split_groups"]  # fmt: skip


@dataclass(frozen=True)
class GroupSplit:
    """The groups (clinics) of a run as ids into ``RegressionData.group_names``:
    ``train`` and ``val`` groups and the one ``test`` group, pairwise disjoint."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: int

    def names(self, data: R.RegressionData, part: str) -> str:
        """The comma-separated names of ``part`` (``"train"``, ``"val"``, ``"test"``)."""
        ids = getattr(self, part)
        return ",".join(data.group_names[g] for g in (ids if part != "test" else (ids,)))


def split_groups(family: RegressionFamily, data: R.RegressionData) -> GroupSplit:
    """The family's training, validation and test groups of ``data`` (rows with a target).

    Training and validation groups need one training episode (``shots + queries`` rows;
    smaller ones are skipped with a warning), the test group the largest evaluation
    episode. A group named twice or missing from the data is a :class:`DataError`."""
    where = f"--family {family.name} ({family.dataset}, {family.group_by})"
    parts = (family.train_groups, family.val_groups, (family.test_group,))
    named = [g for part in parts for g in part]
    if len(set(named)) != len(named):
        raise DataError(f"the training, validation and test groups overlap: {named}", where)
    need = family.adapt_shots + family.eval_queries
    train, val, test = (R.usable_groups(data, R.select_groups(data, ",".join(part), where),
                                        need, where) for part in parts)  # fmt: skip
    if len(test) != 1:
        raise DataError(f"the test group {family.test_group!r} has too few rows", where)
    return GroupSplit(tuple(train), tuple(val), test[0])


@dataclass
class RegressionRun:
    """One regression demo run's choices, and what its stages produce."""

    family: RegressionFamily
    settings: DemoSettings
    folder: Path
    device: str
    algorithm: str
    seed: int
    progress: bool
    command: str | None
    stages: Stages
    data: Any = None  # RegressionData: every row that has the target
    split: GroupSplit | None = None
    trained: Any = None  # _reg_workflow.RegressionTrainOutcome
    model: Any = None  # the trained model folder, loaded
    evaluations: dict[int, Any] = field(default_factory=dict)  # K -> RegressionEvaluation
    adapted: Any = None  # _reg_workflow.RegressionAdaptOutcome
    query_x: np.ndarray | None = None  # [n, F] encoded held-out rows of the test group
    points: dict[str, np.ndarray] = field(default_factory=dict)  # their true, pred, lower, upper
    exported: Any = None  # medmeta.export.RegressorExport

    @property
    def test_data(self) -> R.RegressionData:
        """The rows of the test group."""
        assert self.split is not None
        return R.with_groups(self.data, [self.split.test])


@dataclass
class RegressionOutcome(DemoOutcome):
    """What the regression demo measured, for the terminal summary and the tests
    (``evaluations`` by shots; ``target`` the predicted column, ``test_group`` the held-out
    group)."""

    target: str = ""
    test_group: str = ""

    def summary_lines(self) -> list[str]:
        lines = []
        for k, e in self.evaluations.items():
            m, b = e.metrics, e.baselines
            ridge = "" if b.get("ridge") is None else f"ridge {b['ridge']['mse']:.3g}, "
            lines.append(f"  {self.test_group} {k}-shot  MSE {m['mse']:.3g} ± {m['mse_ci95']:.2g} "
                         f"({ridge}support mean {b['support_mean']['mse']:.3g}), R² "
                         f"{m['r2']:.3f} ± {m['r2_ci95']:.3f}, coverage "
                         f"{100 * m['coverage']:.1f}%  ({e.settings['episodes']} episodes)")  # fmt: skip
        a = self.adaptation
        lines.append(f"  new {a['support_rows']}-shot task ({self.test_group}): {self.target} MSE "
                     f"{a['mse']:.3g} (support mean {a['support_mean_mse']:.3g}), coverage "
                     f"{100 * a['coverage']:.1f}% on {a['queries']} other {self.unit}")  # fmt: skip
        e = self.export
        lines.append(f"  ONNX {e['path']} ({e['size_mb']:.2f} MB): the torch-free edge runtime "
                     f"agrees within {e['edge_relative_diff']:.1e} (relative)")  # fmt: skip
        fast = {(r["runtime"], r["batch"]): r["p50_ms"] for r in self.latency}
        if ("eager PyTorch", 1) in fast and ("ORT float32", 1) in fast:
            lines.append(f"  batch-1 latency: eager PyTorch {fast['eager PyTorch', 1]:.2f} ms, "
                         f"ORT float32 {fast['ORT float32', 1]:.2f} ms")  # fmt: skip
        return lines


def _train(run: RegressionRun) -> None:
    from medmeta.cli._reg_workflow import train_regressor

    f, s = run.family, run.settings
    run.stages.start("train", f"meta-training {run.algorithm} to predict {f.target} on "
                     f"{len(f.train_groups)} {f.group_noun} ({s.steps} steps of {s.meta_batch} "
                     f"episodes, {f.adapt_shots}-shot {s.queries}-query)")  # fmt: skip
    run.data = R.load_regression_data(f.dataset, target=f.target, group_by=f.group_by,
                                      drop_missing=True)  # fmt: skip
    run.split = split_groups(f, run.data)
    run.trained = train_regressor(
        data=f.dataset, target=f.target, group_by=f.group_by,
        classes=run.split.names(run.data, "train"), val_classes=run.split.names(run.data, "val"),
        drop_missing=True, algorithm=run.algorithm, params={}, shots=f.adapt_shots,
        queries=s.queries, steps=s.steps, meta_batch=s.meta_batch, lr=1e-3, width=s.width,
        val_every=s.val_every, val_episodes=s.val_episodes, members=f.members, level=f.level,
        seed=run.seed, device=run.device, out=run.folder / "model", resume=False,
        progress=run.progress, command=run.command,
    )  # fmt: skip
    run.model = load_model(run.folder / "model", run.device)


def _evaluate(run: RegressionRun) -> None:
    from medmeta.cli._reg_eval import evaluate_regressor, task_set

    f, s = run.family, run.settings
    run.stages.start("evaluate", f"evaluating on the new {f.group_noun[:-1]} {f.test_group} "
                     f"({s.test_episodes} episodes per K = {', '.join(map(str, f.shots))}, "
                     "against ridge and the support mean)")  # fmt: skip
    tasks = task_set(run.model, run.test_data, None, max(f.shots) + f.eval_queries)
    for shots in f.shots:
        run.evaluations[shots] = evaluate_regressor(
            run.model, tasks, shots=shots, queries=f.eval_queries, episodes=s.test_episodes,
            seed=run.seed + 10, members=f.members, level=f.level, device=run.device,
            progress=run.progress,
        )  # fmt: skip


def _adapt(run: RegressionRun) -> None:
    """Adapt to K rows of the test group; its other rows become the figure's points."""
    from medmeta.cli._reg_workflow import adapt_regressor

    f = run.family
    run.stages.start("adapt", f"adapting a {f.members}-member bootstrap ensemble to "
                     f"{f.adapt_shots} {f.unit} of {f.test_group}")  # fmt: skip
    test = run.test_data
    run.adapted = a = adapt_regressor(
        run.model, test, shots=f.adapt_shots, seed=run.seed + 20, members=f.members,
        level=f.level, out=run.folder / "adapted", device=run.device,
    )  # fmt: skip
    run.query_x = R.encode_for_model(test, run.model.preprocessing)[a.query_index]
    iv = a.ensemble.interval(torch.from_numpy(run.query_x).to(run.device))
    run.points = {"true": test.y[a.query_index].astype(np.float64)} | {
        key: value.detach().cpu().double().numpy()
        for key, value in (("pred", iv.mean), ("lower", iv.lower), ("upper", iv.upper))
    }  # the same interval adapt_regressor measured its held-out rows with
    a.ensemble.cpu().eval()


def _export(run: RegressionRun) -> None:
    from medmeta.export import regressor_to_onnx

    run.stages.start("export", "exporting the ensemble with its interval to ONNX (float32)")
    for stale in run.folder.glob("model*.onnx"):
        stale.unlink()
    a, t = run.adapted, run.trained
    training = {"algorithm": run.algorithm, "steps": t.fit.last_step, "best_step": t.fit.best_step,
                "val_mse": t.card["training"]["val_mse"], "val_r2": t.card["training"]["val_r2"],
                "groups": run.split.names(run.data, "train"),
                "val_groups": run.split.names(run.data, "val")}  # fmt: skip
    run.exported = regressor_to_onnx(
        a.ensemble, run.folder / "model.onnx", preprocessing=run.model.preprocessing,
        target=run.model.card["target"], support_x=a.support_x, support_y=a.support_y,
        algorithm=run.algorithm, held_out=a.held_out, training=training,
    )  # fmt: skip


def _verify(run: RegressionRun) -> dict[str, Any]:
    """``medmeta predict`` without torch on the held-out rows as raw CSV with the target."""
    run.stages.start("verify", "verifying the export with the torch-free edge runtime "
                     "(subprocess without torch, raw CSV rows)")  # fmt: skip
    test, q = run.test_data, run.adapted.query_index
    iv = run.adapted.ensemble.interval(torch.from_numpy(run.query_x))
    expected = {"prediction": iv.mean, "lower": iv.lower, "upper": iv.upper}
    return regression_edge_check(
        run.folder / "edge_check", run.exported.path, test.inputs.take(q), run.family.target,
        test.y[q], {k: v.double().numpy() for k, v in expected.items()},
    )  # fmt: skip


def run_regression_demo(
    out: str | Path,
    *,
    family: RegressionFamily,
    quick: bool = False,
    device: str = "cpu",
    algorithm: str | None = None,
    steps: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
    command: str | None = None,
) -> RegressionOutcome:
    """The whole regression demo on ``family`` (see the module docstring); writes
    everything under ``out``: ``model/``, ``adapted/``, ``model.onnx``, ``edge_check/``,
    ``report.html`` / ``.md`` / ``.json``, ``plots/`` and ``timings.json``."""
    from medmeta.cli._demo_reg_report import write_regression_report

    _, algorithm = _setup.resolve_task("regression", algorithm or family.algorithm)  # early
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    run = RegressionRun(family, family.settings(quick, steps, episodes), folder, device,
                        algorithm, seed, progress, command, Stages(say))  # fmt: skip
    wall = time.perf_counter()
    _train(run)
    _evaluate(run)
    _adapt(run)
    _export(run)
    checks = _verify(run)
    run.stages.start("latency", "timing eager PyTorch and onnxruntime at batch 1 and 32")
    assert run.query_x is not None
    latency = measure_latency(run.adapted.ensemble.interval, {"ORT float32": run.exported.path},
                              run.query_x[:32], run.settings.latency_runs)  # fmt: skip
    run.stages.start("report", "writing the report")
    report = write_regression_report(run, checks, latency, quick=quick, wall=wall)
    run.stages.finish(folder, wall)
    return RegressionOutcome(report.paths.html, report.paths.markdown, run.exported.path,
                             run.evaluations, report.adaptation, report.export, latency,
                             run.stages.seconds, family.name, family.unit, target=family.target,
                             test_group=family.test_group)  # fmt: skip
