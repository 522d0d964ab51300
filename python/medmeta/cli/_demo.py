"""The demo pipeline on the embedded blood-cell images (PBC, Acevedo et al. 2020, CC BY 4.0):

1. meta-train on 5 cell types (validation on held-out images of those types);
2. evaluate 3-way 1-shot and 5-shot episodes on the 3 held-out cell types;
3. adapt to a new 5-shot task on the held-out types, measure it on their other images;
4. export the adapted model to ONNX (classifier, enrolment pair, int8);
5. verify the export with the torch-free edge runtime in a process where torch cannot load;
6. time eager PyTorch against onnxruntime; 7. write the report.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta import __version__
from medmeta.cli import _workflow
from medmeta.cli._model import load_model
from medmeta.cli._torchfree import run_without_torch
from medmeta.data import ArrayDataset, load
from medmeta.edge.cli.errors import CheckFailed

logger = logging.getLogger(__name__)

DATASET = "pbc_blood"
TRAIN_CLASSES = [
    0,
    1,
    2,
    3,
    4,
]  # basophil, eosinophil, erythroblast, immature granulocyte, lymphocyte
NOVEL_CLASSES = [5, 6, 7]  # monocyte, neutrophil, platelet
WAYS, SHOTS = 3, 5
#: Float32 ONNX probabilities must match eager PyTorch this closely (the issue's bound).
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a full and a ``--quick`` run."""

    width: int
    steps: int
    meta_batch: int
    queries: int
    val_every: int
    val_episodes: int
    test_episodes: int
    latency_runs: int

    @classmethod
    def choose(cls, quick: bool, steps: int | None, episodes: int | None) -> DemoSettings:
        base = (
            cls(32, 30, 2, 5, 30, 20, 40, 20) if quick else cls(64, 300, 4, 15, 100, 100, 600, 200)
        )
        return cls(
            base.width, steps or base.steps, base.meta_batch, base.queries,
            min(base.val_every, steps or base.steps), base.val_episodes,
            episodes or base.test_episodes, base.latency_runs,
        )  # fmt: skip


@dataclass
class DemoOutcome:
    """What the demo measured, for the terminal summary and the tests."""

    report_html: Path
    report_md: Path
    onnx: Path
    evaluations: dict[str, Any]
    adaptation: dict[str, Any]
    export: dict[str, Any]
    latency: list[dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = []
        for name, r in self.evaluations.items():
            lines.append(f"  {name:<13} accuracy {100 * r.accuracy:5.1f} ± {100 * r.ci95:.1f}%  "
                         f"AUROC {r.auroc:.3f}  ECE {r.ece:.3f}  ({r.episodes} episodes)")  # fmt: skip
        a = self.adaptation
        lines.append(f"  new {a['shots']}-shot task ({', '.join(a['classes'])}): "
                     f"{100 * a['accuracy']:.1f}% on {a['queries']} other images")  # fmt: skip
        e = self.export
        lines.append(f"  ONNX {e['path']} ({e['size_mb']:.2f} MB): torch-free edge runtime agrees "
                     f"on {100 * e['edge_agreement']:.1f}% of labels, max |Δp| {e['parity_max_abs_diff']:.1e}")  # fmt: skip
        fast = {(r["runtime"], r["batch"]): r["p50_ms"] for r in self.latency}
        if ("eager PyTorch", 1) in fast and ("ORT float32", 1) in fast:
            lines.append(f"  batch-1 latency: eager PyTorch {fast['eager PyTorch', 1]:.2f} ms, "
                         f"ORT float32 {fast['ORT float32', 1]:.2f} ms"
                         + (f", ORT int8 {fast['ORT int8', 1]:.2f} ms" if ("ORT int8", 1) in fast else ""))  # fmt: skip
        return lines


class _Stages:
    """Times the stages and logs their progress on one line each."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.seconds = say, {}
        self._name: str | None = None
        self._start = 0.0

    def start(self, name: str, text: str) -> None:
        self.stop()
        self._name, self._start = name, time.perf_counter()
        self.say(f"[{len(self.seconds) + 1}/7] {text}")

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._start, 2)
            self._name = None


def _splits(seed: int) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """Training images of the 5 training types, 15% of them held out for validation, and
    the 3 novel types."""
    data = load(DATASET)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in TRAIN_CLASSES:
        members = rng.permutation(np.flatnonzero(data.labels == c))
        cut = round(0.15 * len(members))
        val_idx.append(members[:cut])
        train_idx.append(members[cut:])
    novel = np.flatnonzero(np.isin(data.labels, NOVEL_CLASSES))
    return (data.subset(np.sort(np.concatenate(train_idx))),
            data.subset(np.sort(np.concatenate(val_idx))), data.subset(novel))  # fmt: skip


def _percentiles(times_s: list[float]) -> tuple[float, float]:
    ordered = sorted(times_s)
    p99 = ordered[min(len(ordered) - 1, int(np.ceil(0.99 * len(ordered))) - 1)]
    return 1e3 * statistics.median(ordered), 1e3 * p99


def _time(fn: Callable[[], Any], runs: int, budget_s: float = 2.0) -> tuple[float, float]:
    """p50/p99 in ms of ``runs`` calls after a warm-up, stopping early (after at least 10)
    once ``budget_s`` seconds are spent, so a slow runtime cannot stall the demo."""
    for _ in range(max(3, runs // 10)):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def measure_latency(
    adapted: torch.nn.Module, onnx_files: dict[str, Path], x: np.ndarray, runs: int
) -> list[dict[str, Any]]:
    """p50/p99 of one forward pass at batch 1 and 32: eager PyTorch (inference mode) and
    onnxruntime sessions with the same thread count."""
    from medmeta.edge.runtime import cpu_session

    threads = torch.get_num_threads()
    rows = []
    for batch in (1, 32):
        inputs = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=np.float32)
        tensor = torch.from_numpy(inputs)
        with torch.inference_mode():
            p50, p99 = _time(lambda t=tensor: adapted(t), runs)
        rows.append({"runtime": "eager PyTorch", "batch": batch, "p50_ms": p50, "p99_ms": p99,
                     "threads": threads})  # fmt: skip
        for label, path in onnx_files.items():
            session = cpu_session(path, str(path), threads)
            feed = {session.get_inputs()[0].name: inputs}
            p50, p99 = _time(lambda s=session, f=feed: s.run(None, f), runs)
            rows.append({"runtime": label, "batch": batch, "p50_ms": p50, "p99_ms": p99,
                         "threads": threads})  # fmt: skip
    return rows


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, class_names=np.asarray(names))
    return path


def _edge_check(
    folder: Path, export: Any, raw_support: np.ndarray, support_y: np.ndarray,
    raw_queries: np.ndarray, query_y: np.ndarray, names: list[str],
    expected: np.ndarray, prototypes: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``medmeta predict`` without torch on the classifier (and, with the enrolment
    pair, after enrolling the raw support set on the device) and compare with PyTorch."""
    support = _write_npz(folder / "support.npz", raw_support, support_y, names)
    queries = _write_npz(folder / "queries.npz", raw_queries, query_y, names)
    checks: dict[str, Any] = {}
    runs = [("classifier", export.classifier, [])]
    if export.embedder is not None:
        runs.append(("enrolment", export.embedder, ["--support", str(support)]))
    for label, model, extra in runs:
        out = folder / f"{label}_predictions.npz"
        proc = run_without_torch(["predict", "--model", str(model), "--inputs", str(queries),
                                  *extra, "--out", str(out)])  # fmt: skip
        if proc.returncode != 0:
            raise CheckFailed(f"`medmeta predict` without torch failed on the {label} model: "
                              f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")  # fmt: skip
        got = np.load(out)
        probs = got["probabilities"]
        checks[label] = {
            "max_abs_diff": float(np.abs(probs - expected).max()),
            "agreement": float((probs.argmax(-1) == expected.argmax(-1)).mean()),
            "accuracy": float((probs.argmax(-1) == query_y).mean()),
            "torch_free": True,
        }
        if label == "enrolment" and prototypes is not None and "prototypes" in got:
            checks[label]["prototype_max_abs_diff"] = float(
                np.abs(got["prototypes"] - prototypes).max()
            )
    return checks


def run_demo(
    out: str | Path = "medmeta-demo",
    *,
    quick: bool = False,
    device: str = "cpu",
    algorithm: str = "protonet",
    steps: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    int8: bool = True,
    progress: bool = True,
    say: Callable[[str], None] = print,
    command: str | None = None,
) -> DemoOutcome:
    """The whole demo (see the module docstring); writes everything under ``out``."""
    import matplotlib  # noqa: F401  (fail early, before training, without matplotlib)

    from medmeta.export import to_onnx
    from medmeta.report import ReportData, write_report

    settings = DemoSettings.choose(quick, steps, episodes)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stages = _Stages(say)
    wall = time.perf_counter()

    stages.start("train", f"meta-training {algorithm} on 5 blood-cell types "
                 f"({settings.steps} steps of {settings.meta_batch} episodes, {WAYS}-way {SHOTS}-shot)")  # fmt: skip
    train_raw, val_raw, novel_raw = _splits(seed)
    trained = _workflow.train_model(
        data=train_raw, classes=None, val_classes=None, val_set=val_raw, algorithm=algorithm,
        params={}, ways=WAYS, shots=SHOTS, queries=settings.queries, steps=settings.steps,
        meta_batch=settings.meta_batch, lr=1e-3, backbone="conv4", width=str(settings.width),
        image_size=None, channels=None, val_every=settings.val_every,
        val_episodes=settings.val_episodes, seed=seed, device=device, out=folder / "model",
        resume=False, progress=progress, command=command,
    )  # fmt: skip
    model = load_model(folder / "model", device)
    temperature = model.card.get("temperature")

    stages.start(
        "evaluate",
        f"evaluating on the 3 novel types ({settings.test_episodes} episodes per setting)",
    )
    test_set = _workflow.task_data(model, novel_raw, None)
    evaluations = {}
    for shots in (1, SHOTS):
        evaluations[f"{WAYS}-way {shots}-shot"] = _workflow.evaluate_model(
            model, test_set, ways=WAYS, shots=shots, queries=15, episodes=settings.test_episodes,
            seed=seed + 10, temperature=temperature, device=device, progress=progress,
        )  # fmt: skip

    stages.start("adapt", f"adapting to a new {SHOTS}-shot task on the novel types")
    adapted = _workflow.adapt_model(model, test_set, shots=SHOTS, seed=seed + 20,
                                    out=folder / "adapted", device=device)  # fmt: skip
    net = adapted.adapted.cpu().eval()
    s_idx, rest = adapted.support_index, adapted.query_index

    stages.start("export", "exporting the adapted model to ONNX (classifier, enrolment pair"
                 + (", int8)" if int8 else ")"))  # fmt: skip
    onnx_path = folder / "model.onnx"
    for stale in folder.glob("model*.onnx"):
        stale.unlink()
    exported = to_onnx(
        net, onnx_path, support_x=adapted.support_x, support_y=adapted.support_y,
        preprocessing=model.preprocessing, class_names=adapted.class_names,
        temperature=temperature, evaluation=evaluations[f"{WAYS}-way {SHOTS}-shot"],
        form="both", int8=int8, calibration_x=adapted.support_x.numpy(),
    )  # fmt: skip

    stages.start(
        "verify", "verifying the export with the torch-free edge runtime (subprocess without torch)"
    )
    with torch.inference_mode():
        logits = net(adapted.query_x)
    t = 1.0 if temperature is None else float(temperature)
    expected = torch.softmax(logits.double() / t, -1).numpy()
    prototypes = getattr(net, "prototypes", None)
    checks = _edge_check(
        folder / "edge_check", exported, np.asarray(novel_raw.x)[s_idx], adapted.support_y.numpy(),
        np.asarray(novel_raw.x)[rest], adapted.query_y.numpy(), adapted.class_names, expected,
        None if prototypes is None else prototypes.numpy(),
    )  # fmt: skip
    worst = max(c["max_abs_diff"] for c in checks.values())
    if worst > PARITY_TOLERANCE:
        raise CheckFailed(f"the edge runtime's probabilities differ from PyTorch by {worst:.2e} "
                          f"(> {PARITY_TOLERANCE:g}); see {folder / 'edge_check'}")  # fmt: skip

    stages.start("latency", "timing eager PyTorch and onnxruntime at batch 1 and 32")
    files = {"ORT float32": exported.classifier}
    if exported.int8 is not None:
        files["ORT int8"] = exported.int8
    latency = measure_latency(net, files, adapted.query_x[:32].numpy(), settings.latency_runs)

    stages.start("report", "writing the report")
    with torch.inference_mode():
        shown = _map_subset(adapted.query_y.numpy(), per_class=60, seed=seed)
        qx = adapted.query_x[shown]
        embeddings = net.embed(qx).numpy() if getattr(net, "embed", None) is not None else None
        predictions = logits[shown].argmax(-1).numpy()
    size_mb = exported.classifier.stat().st_size / 2**20
    export_info = {
        "path": exported.classifier.name,
        "size_mb": size_mb,
        "opset": exported.metadata.get("opset"),
        "exporter": exported.exporter,
        "parity_max_abs_diff": checks["classifier"]["max_abs_diff"],
        "edge_agreement": checks["classifier"]["agreement"],
        "edge_accuracy": checks["classifier"]["accuracy"],
        "files": sorted(p.name for p in folder.glob("model*.onnx")),
    }
    if "enrolment" in checks:
        export_info["enrolment_max_abs_diff"] = checks["enrolment"]["max_abs_diff"]
        if "prototype_max_abs_diff" in checks["enrolment"]:
            export_info["enrolment_prototype_max_abs_diff"] = checks["enrolment"][
                "prototype_max_abs_diff"
            ]
    if exported.int8 is not None:
        from medmeta.export.quantize import parity_report

        # on the task's held-out queries, not on the support set it was calibrated on
        parity = parity_report(exported.classifier, exported.int8, adapted.query_x.numpy(),
                               adapted.query_y.numpy(), threads=torch.get_num_threads())  # fmt: skip
        export_info["int8_path"] = exported.int8.name
        export_info["int8_size_mb"] = exported.int8.stat().st_size / 2**20
        for key in ("max_abs_prob_diff", "top1_agreement", "float_accuracy", "int8_accuracy"):
            export_info[f"int8_{key}"] = parity[key]
        export_info["int8_accuracy_change"] = f"{100 * parity['accuracy_change']:+.2f}"
    adaptation = {
        "classes": adapted.class_names,
        "shots": SHOTS,
        "queries": len(adapted.query_y),
        "accuracy": adapted.accuracy,
    }
    stages.stop()
    fit = trained.fit
    summary = [
        ("dataset", f"{DATASET}: blood-cell microscopy (Acevedo et al. 2020, CC BY 4.0), 28x28 RGB"),
        ("meta-training classes", ", ".join(trained.card["training"]["classes"])),
        ("novel (test) classes", ", ".join(adapted.class_names)),
        ("algorithm", f"{algorithm}, Conv4 backbone ({settings.width} channels)"),
        ("meta-training", f"{fit.last_step} steps x {settings.meta_batch} episodes, "
                          f"{WAYS}-way {SHOTS}-shot {settings.queries}-query, Adam 1e-3, seed {seed}"),
        ("validation", f"best step {fit.best_step}: {100 * (fit.best_accuracy or 0):.1f} ± "
                       f"{100 * (fit.best_ci95 or 0):.1f}% on held-out images of the training types"),
        ("calibration", f"temperature {t:.3f} fitted on validation episodes"),
        ("device", f"{device} ({torch.get_num_threads()} threads)"),
        ("wall time", f"{time.perf_counter() - wall:.0f} s"),
    ]  # fmt: skip
    notes = [
        "Validation (best checkpoint, temperature) uses held-out images of the training cell "
        "types, never the novel types, so the test numbers are unbiased.",
        "Latency is one forward pass on preprocessed 28x28 inputs on this machine; rerun "
        "`medmeta bench edge` for controlled numbers.",
    ]
    if quick:
        notes.insert(0, "Quick mode: a few training steps and episodes to check the pipeline; "
                        "the numbers are not representative.")  # fmt: skip
    data = ReportData(
        title=f"medmeta demo: blood cells, {WAYS}-way few-shot on novel cell types",
        summary=summary, history=fit.history, evaluations=list(evaluations.items()),
        embeddings=embeddings, embedding_labels=adapted.query_y.numpy()[shown],
        prototypes=None if prototypes is None else prototypes.numpy(),
        class_names=adapted.class_names, adaptation=adaptation, export=export_info,
        latency=latency, notes=notes, command=command, versions=_versions(),
        embedding_predictions=predictions,
    )  # fmt: skip
    paths = write_report(folder, data)
    stages.seconds["total"] = round(time.perf_counter() - wall, 2)
    (folder / "timings.json").write_text(json.dumps(stages.seconds, indent=2) + "\n")
    return DemoOutcome(paths.html, paths.markdown, exported.classifier, evaluations, adaptation,
                       export_info, latency, stages.seconds)  # fmt: skip


def _map_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` seeded indices of each label, for a readable embedding map."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _versions() -> dict[str, str]:
    versions = {"medmeta": __version__, "torch": torch.__version__.split("+")[0],
                "python": platform.python_version()}  # fmt: skip
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions
