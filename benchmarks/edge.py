"""Edge deployment benchmark: an adapted few-shot classifier in eager PyTorch, ONNX Runtime
float32 and ONNX Runtime int8, and a distilled student beside its teacher.

    python -m benchmarks edge [--quick] [--threads 2] [--out benchmarks/results]
    python -m benchmarks.edge ...                      (same)

On real data (protocol (a) of ``benchmarks/protocols.py``: PBC blood cells, meta-train on 5
cell types, deploy 3-way 5-shot on the 3 held-out types), Conv4-64 ProtoNet and MAML are
meta-trained, adapted to one seeded support set and exported with
:func:`medmeta.export.to_onnx`; the int8 twin comes from
:func:`medmeta.export.quantize.quantize_onnx` calibrated on that support set. Students
(ProtoNet on Conv4 with fewer channels) are distilled from the teachers with
:func:`medmeta.export.distill.distill`. Measured, for every model:

* latency p50/p99 at batch 1 and 32 on ``--threads`` threads (torch ``set_num_threads``; ORT
  ``intra_op_num_threads``, ``inter_op_num_threads=1``), single calls timed round-robin across
  runtimes: eager PyTorch (``inference_mode``, eval), ``torch.jit`` (trace+freeze+
  ``optimize_for_inference``) and ``torch.compile`` (the best pure-PyTorch formulation is
  the fastest that agrees), ORT float32, ORT int8, and :class:`medmeta.edge.EdgeModel`;
* model size (ONNX files; PyTorch state dict), peak memory (RSS high-water mark over the
  model load and inference in a fresh subprocess per runtime, from just after the imports);
* int8 parity on seeded test episodes (:func:`medmeta.export.quantize.episode_parity`) and
  accuracy of every model (600 episodes, 95% CI) with :func:`medmeta.eval.evaluate`;
* ``import medmeta.edge`` time in fresh subprocesses (median of several), and per-operator
  ONNX Runtime profiles (where the int8 and float time goes).

Writes ``edge-cpu[-TAG].json`` (environment, every measurement), ``.md`` (tables, targets met
or missed and by how much) and ``.png``. ``--quick``: a smoke test (< 1 minute on two
cores, tiny training, few samples, asserts nothing about speed).

torch and the harness are imported inside functions: ``--memory-child`` runs of this module
measure onnxruntime's memory without torch loaded.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TRAIN_CLASSES = [0, 1, 2, 3, 4]
TEST_CLASSES = [5, 6, 7]
WAYS, SHOTS, QUERIES = 3, 5, 15
IMAGE_SHAPE = (3, 28, 28)
BATCHES = (1, 32)

# latency formulations ("kind" as in the harness: torch formulations compete for best torch)
EAGER, JIT, COMPILE = "eager", "torch.jit", "torch.compile"
ORT_FP32, ORT_INT8, EDGE_FP32 = "ORT float32", "ORT int8", "EdgeModel float32"
KIND = {EAGER: "torch", JIT: "torch", COMPILE: "torch", ORT_FP32: "onnxruntime",
        ORT_INT8: "onnxruntime", EDGE_FP32: "edge"}  # fmt: skip
# medmeta's own deployment paths: a disagreement with the float64 reference fails the run
# (the torch runtimes are baselines: dropped and reported; int8 has its parity report)
MEDMETA_FORMS = (ORT_FP32, EDGE_FP32)
# Largest |probability - float64 reference| allowed to a float32 runtime (probabilities are
# at most 1, so this is relative to the reference's scale too); measured float32 errors
# are ~1e-6 (see benchmarks/README.md).
PROB_TOL = 1e-4


class MedmetaCheckFailed(RuntimeError):
    """A medmeta runtime's probabilities disagree with the float64 reference."""


TARGETS = {
    "ort_fp32_vs_eager_b1": 4.0,  # ORT float32 at least 4x eager PyTorch at batch 1
    "int8_vs_ort_fp32": 1.3,  # int8 at least 1.3x ORT float32...
    "int8_accuracy_drop_points": 1.0,  # ...with at most 1 point accuracy drop
    "edge_import_s": 0.3,  # import medmeta.edge under 0.3 s
}


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What a run does (``--quick`` shrinks everything)."""

    threads: int
    protonet_steps: int
    maml_steps: int
    distill_steps: int
    student_hidden: tuple[int, ...]
    teachers: tuple[str, ...]
    meta_batch: int
    episodes: int
    parity_episodes: int
    parity_queries: int | None
    samples_b1: int
    samples_b32: int
    rounds: int  # contiguous latency segments per formulation
    compile: bool
    detail_models: str  # "all" or "first": the models that get parity, memory and profiles
    import_runs: int
    seed: int = 0


def settings_from(args: argparse.Namespace) -> Settings:
    q = args.quick
    pick = lambda full, quick, given: given if given is not None else (quick if q else full)  # noqa: E731
    return Settings(
        threads=args.threads,
        protonet_steps=pick(400, 10, args.steps),
        maml_steps=pick(100, 1, args.maml_steps),
        distill_steps=pick(400, 10, args.distill_steps),
        student_hidden=tuple(int(h) for h in pick("16,32", "16", args.student_hidden).split(",")),
        teachers=tuple(pick("protonet", "protonet", args.teachers).split(",")),
        meta_batch=2 if q else 4,
        episodes=pick(600, 20, args.episodes),
        parity_episodes=pick(10, 1, args.parity_episodes),
        parity_queries=None if not q else 30,
        samples_b1=pick(1000, 60, args.samples),
        samples_b32=pick(200, 12, None if args.samples is None else max(10, args.samples // 5)),
        rounds=2 if q else 5,
        compile=(not q) if args.compile is None else args.compile,
        detail_models="first" if q else "all",
        import_runs=3 if q else 9,
    )


# ---------------------------------------------------------------------------- the models


@dataclass
class Deployed:
    """One model, adapted to the deployment support set and exported."""

    name: str  # "protonet", "maml", "student-h16", ...
    algorithm: str
    hidden: int
    learner: Any  # the MetaLearner
    adapted: Any  # its Adapted classifier
    float_path: Path
    int8_path: Path
    parameters: int
    role: str  # "teacher" / "student" / "model"
    fit_seconds: float
    steps: int
    accuracy: float | None = None
    ci95: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _data() -> tuple[Any, Any]:
    from medmeta.data import load, split_classes

    return tuple(split_classes(load("pbc_blood"), classes=[TRAIN_CLASSES, TEST_CLASSES]))


def _support(test: Any, seed: int) -> tuple[Any, Any, Any, Any]:
    """A seeded 5-shot support set of the held-out classes and every other image
    (preprocessed: float32 [n, 3, 28, 28] in [0, 1])."""
    import torch

    from medmeta.data import as_features

    x = as_features(test.x)
    y = np.asarray(test.labels)
    rng = np.random.default_rng(seed)
    support, query, query_y = [], [], []
    for n, c in enumerate(TEST_CLASSES):
        members = rng.permutation(np.flatnonzero(y == c))
        support.append(members[:SHOTS])
        query.append(members[SHOTS:])
        query_y.append(np.full(len(members) - SHOTS, n))
    sx = x[np.concatenate(support)]
    sy = torch.arange(WAYS).repeat_interleave(SHOTS)
    return sx, sy, x[np.concatenate(query)], np.concatenate(query_y)


def _train(name: str, hidden: int, train: Any, steps: int, s: Settings) -> tuple[Any, float]:
    import torch

    from medmeta import algorithms
    from medmeta.nn import Conv4
    from medmeta.train import meta_fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        extra = {"input_shape": IMAGE_SHAPE} if name == "maml" else {}
        learner = algorithms.create(name, Conv4(3, hidden=hidden), ways=WAYS, **extra)
    start = time.perf_counter()
    meta_fit(learner, train, ways=WAYS, shots=SHOTS, queries=QUERIES, steps=steps,
             meta_batch=s.meta_batch, seed=s.seed, lr=1e-3, progress=False)  # fmt: skip
    return learner.eval(), time.perf_counter() - start


def _export(model: Deployed, sx: Any, sy: Any, evaluation: Any, folder: Path) -> None:
    from medmeta.export import to_onnx
    from medmeta.export.quantize import quantize_onnx

    names = [f"class_{c}" for c in TEST_CLASSES]
    result = to_onnx(model.adapted, folder / f"{model.name}.onnx", support_x=sx, support_y=sy,
                     class_names=names, evaluation=evaluation, form="classifier")  # fmt: skip
    model.float_path = result.classifier
    model.int8_path = quantize_onnx(
        result.classifier, folder / f"{model.name}.int8.onnx", sx.numpy()
    )
    model.info["export_check_max_abs"] = result.checks.get("classifier")
    model.info["exporter"] = result.exporter


def build_models(
    s: Settings, folder: Path, log: Callable[[str], None]
) -> tuple[list[Deployed], Any, Any]:
    """Meta-train the teachers, distill the students, evaluate, adapt and export them all.
    Returns the models, the deployment task's query images ``[M, 3, 28, 28]`` and the
    held-out test set."""
    import torch

    from medmeta.eval import evaluate
    from medmeta.export.distill import distill, parameter_count
    from medmeta.nn import Conv4

    train, test = _data()
    sx, sy, qx, qy = _support(test, s.seed)
    models: list[Deployed] = []
    teachers = {}
    for name, steps in (("protonet", s.protonet_steps), ("maml", s.maml_steps)):
        learner, seconds = _train(name, 64, train, steps, s)
        teachers[name] = learner
        role = "teacher" if name in s.teachers else "model"
        models.append(Deployed(name, name, 64, learner, None, Path(), Path(),
                               parameter_count(learner), role, seconds, steps))  # fmt: skip
        log(f"trained {name} ({steps} steps, {seconds:.0f} s)")
    for hidden in s.student_hidden:
        result = distill([teachers[t] for t in s.teachers], train,
                         lambda h=hidden: Conv4(3, hidden=h), ways=WAYS, shots=SHOTS,
                         queries=QUERIES, steps=s.distill_steps, meta_batch=s.meta_batch,
                         seed=s.seed, progress=False)  # fmt: skip
        student = result.student.eval()
        models.append(Deployed(f"student-h{hidden}", "protonet", hidden, student, None, Path(),
                               Path(), result.student_parameters, "student", result.seconds,
                               s.distill_steps,
                               info={"distilled_from": list(s.teachers),
                                     "distill_history_last": result.history[-1]}))  # fmt: skip
        log(f"distilled student-h{hidden} ({s.distill_steps} steps, {result.seconds:.0f} s)")
    for m in models:
        ev = evaluate(m.learner, test, ways=WAYS, shots=SHOTS, queries=QUERIES,
                      episodes=s.episodes, seed=1)  # fmt: skip
        m.accuracy, m.ci95 = ev.accuracy, ev.ci95
        m.adapted = m.learner.adapt(sx, sy).eval()
        _export(m, sx, sy, ev, folder)
        with torch.inference_mode():
            m.info["deployed_task_accuracy"] = float(
                (m.adapted(qx).argmax(-1).numpy() == qy).mean()
            )
        log(f"{m.name}: accuracy {100 * ev.accuracy:.1f} ± {100 * ev.ci95:.1f} "
            f"({s.episodes} episodes); exported")  # fmt: skip
    return models, qx, test


# ------------------------------------------------------------------------------- latency


def _ort_session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def reference_probabilities(adapted: Any, x: Any) -> np.ndarray:
    """softmax(adapted(x)) computed in float64 on a float64 copy of the model: the
    reference every runtime's float32 probabilities are checked against."""
    import copy

    import torch

    twin = copy.deepcopy(adapted).double().eval()
    with torch.inference_mode():
        return torch.softmax(twin(x.double()), -1).numpy()


def formulations(
    model: Deployed, x: Any, s: Settings
) -> tuple[dict[str, Callable[[], Any]], dict[str, str], dict[str, Any]]:
    """The callables of one (model, batch) point: each returns probabilities ``[n, N]``.
    Every float32 runtime is checked against :func:`reference_probabilities` (within
    :data:`PROB_TOL`): a torch runtime that disagrees is dropped (its status says by how
    much), a medmeta one (:data:`MEDMETA_FORMS`) raises :class:`MedmetaCheckFailed`.
    Returns (callables, status of those that could not run or disagree, outputs of a
    first call, with ``"float64 reference"`` and the errors under ``"ref_errors"``)."""
    import torch

    from medmeta.edge import EdgeModel

    adapted = model.adapted
    xn = x.numpy()
    temperature = 1.0  # exported with the default temperature

    def eager() -> Any:
        with torch.inference_mode():
            return torch.softmax(adapted(x) / temperature, -1)

    fns: dict[str, Callable[[], Any]] = {EAGER: eager}
    status: dict[str, str] = {}
    try:
        with torch.inference_mode():
            traced = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(adapted, x, check_trace=False))
            )

        def jit() -> Any:
            with torch.inference_mode():
                return torch.softmax(traced(x) / temperature, -1)

        fns[JIT] = jit
    except Exception as e:  # report, do not fail the run
        status[JIT] = f"error: {type(e).__name__}: {str(e)[:200]}"
    if s.compile:
        try:
            compiled = torch.compile(adapted, dynamic=False)

            def comp() -> Any:
                with torch.inference_mode():
                    return torch.softmax(compiled(x) / temperature, -1)

            fns[COMPILE] = comp
        except Exception as e:
            status[COMPILE] = f"error: {type(e).__name__}: {str(e)[:200]}"
    else:
        status[COMPILE] = "skipped (--no-compile / --quick)"
    fp32 = _ort_session(model.float_path, s.threads)
    int8 = _ort_session(model.int8_path, s.threads)
    feed = fp32.get_inputs()[0].name
    fns[ORT_FP32] = lambda: fp32.run(["probabilities"], {feed: xn})[0]
    fns[ORT_INT8] = lambda: int8.run(["probabilities"], {feed: xn})[0]
    edge = EdgeModel(model.float_path, threads=s.threads)
    fns[EDGE_FP32] = lambda: edge.predict_proba(xn, preprocessed=True)
    outputs: dict[str, Any] = {}
    for name, fn in list(fns.items()):
        try:
            out = fn()
            outputs[name] = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        except Exception as e:
            status[name] = f"error: {type(e).__name__}: {str(e)[:200]}"
            del fns[name]
    reference = reference_probabilities(adapted, x)
    outputs["ref_errors"] = check_runtimes(
        outputs, reference, f"model {model.name}, batch {len(xn)}"
    )
    for name in [n for n in fns if n in outputs["ref_errors"]]:
        err = outputs["ref_errors"][name]
        if not err <= PROB_TOL:
            status[name] = (
                f"disagrees with the float64 reference: max |p - p64| {err:.3g} > {PROB_TOL:g}"
            )
            del fns[name]
    outputs["float64 reference"] = reference
    return fns, status, outputs


def check_runtimes(outputs: dict[str, Any], reference: np.ndarray, where: str) -> dict[str, float]:
    """Largest |p - p64| of every runtime's probabilities (int8 excepted: the parity report
    compares it) against the float64 ``reference``; raises :class:`MedmetaCheckFailed` when
    one of medmeta's runtimes (:data:`MEDMETA_FORMS`) is beyond :data:`PROB_TOL`."""
    errors: dict[str, float] = {}
    for name, out in outputs.items():
        if name == ORT_INT8:
            continue
        got = np.asarray(out, dtype=np.float64)
        diff = np.abs(got - reference) if got.shape == reference.shape else np.array(np.inf)
        errors[name] = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        if name in MEDMETA_FORMS and not errors[name] <= PROB_TOL:
            raise MedmetaCheckFailed(
                f"{name} disagrees with the float64 reference: {where}: max |p - p64| "
                f"{errors[name]:.3g} > {PROB_TOL:g}"
            )
    return errors


def sample_latencies(
    fns: dict[str, Callable[[], Any]],
    samples: int,
    rounds: int,
    warmup_s: float = 0.05,
    pause_s: float = 0.1,
) -> dict[str, list[float]]:
    """Per-call seconds of each function: ``samples`` single calls each, taken in ``rounds``
    contiguous segments per function (the order rotating each round, so background load and
    drift hit all alike), gc off.

    Each segment starts after a pause and ``warmup_s`` of discarded calls: two runtimes in
    one process have two thread pools, and calls right after a switch wait for the other
    pool's spinning threads (measured: interleaving eager PyTorch and ONNX Runtime call by
    call moved ORT's batch-1 p50 from 0.12 to 0.21 ms and its p99 from 0.16 to 4.3 ms; with
    segments, both match the runtime measured alone).
    """
    from benchmarks import _harness as H

    clock = H.Clock(__import__("torch").device("cpu"))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = fns[name]
                time.sleep(pause_s)
                spent, calls = 0.0, 0
                while spent < warmup_s or calls < 3:
                    spent += clock.time_block(fn, 1)
                    calls += 1
                share = samples * (r + 1) // rounds - samples * r // rounds
                times[name].extend(clock.time_block(fn, 1) for _ in range(share))
    finally:
        if was_enabled:
            gc.enable()
    return times


def latency_stats(ts: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ts)
    return {
        "p50_s": float(np.percentile(a, 50)),
        "p99_s": float(np.percentile(a, 99)),
        "mean_s": float(a.mean()),
        "q1_s": float(np.percentile(a, 25)),
        "q3_s": float(np.percentile(a, 75)),
        "min_s": float(a.min()),
        "samples": len(a),
    }


def measure_latency(
    models: list[Deployed], qx: Any, s: Settings, quiet: Any, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One record per (model, batch, formulation)."""
    from benchmarks import _harness as H

    records = []
    for m in models:
        for batch in BATCHES:
            x = qx[:batch].contiguous()
            start = time.perf_counter()
            fns, status, outputs = formulations(m, x, s)
            quiet.wait()
            contention = H.Contention().start()
            samples = s.samples_b1 if batch == 1 else s.samples_b32
            times = sample_latencies(fns, samples, rounds=s.rounds)
            others = contention.stop()
            for name in [*fns, *status]:
                rec: dict[str, Any] = {"model": m.name, "batch": batch, "formulation": name,
                                       "kind": KIND[name], "status": status.get(name, "ok"),
                                       "others_cpu": others,
                                       "ref_error": outputs["ref_errors"].get(name),
                                       "ref_tol": PROB_TOL}  # fmt: skip
                if name in times:
                    rec.update(latency_stats(times[name]))
                records.append(rec)
            line = "  ".join(
                f"{r['formulation']} {1e3 * r['p50_s']:.3f}/{1e3 * r['p99_s']:.3f}"
                for r in records[-len(fns) - len(status) :]
                if "p50_s" in r
            )
            log(f"[{time.perf_counter() - start:4.1f}s others {others or 0:.2f} CPU] {m.name} "
                f"b={batch} p50/p99 ms: {line}")  # fmt: skip
    return records


def ratios(records: list[dict[str, Any]], models: list[Deployed]) -> list[dict[str, Any]]:
    """Per (model, batch): fastest torch runtime / ORT float32 (the headline), eager / ORT
    float32, ORT float32 / int8, fastest torch / int8 (p50 ratios; > 1: the second is
    faster), and which torch runtime was fastest."""
    out = []
    for m in models:
        for batch in BATCHES:
            rs = {r["formulation"]: r for r in records if r["model"] == m.name and
                  r["batch"] == batch and "p50_s" in r}  # fmt: skip
            torch_ok = [r for r in rs.values() if r["kind"] == "torch"]
            best = min(torch_ok, key=lambda r: r["p50_s"]) if torch_ok else None
            fp32, int8, eager = rs.get(ORT_FP32), rs.get(ORT_INT8), rs.get(EAGER)
            row: dict[str, Any] = {"model": m.name, "batch": batch,
                                   "best_torch": best["formulation"] if best else None}  # fmt: skip
            if fp32 and eager:
                row["ort_fp32_vs_eager"] = eager["p50_s"] / fp32["p50_s"]
                row["ort_fp32_vs_eager_p99"] = eager["p99_s"] / fp32["p99_s"]
            if fp32 and best:
                row["ort_fp32_vs_best_torch"] = best["p50_s"] / fp32["p50_s"]
            if fp32 and int8:
                row["int8_vs_ort_fp32"] = fp32["p50_s"] / int8["p50_s"]
                row["int8_vs_ort_fp32_p99"] = fp32["p99_s"] / int8["p99_s"]
            if int8 and eager:
                row["int8_vs_eager"] = eager["p50_s"] / int8["p50_s"]
            if int8 and best:
                row["int8_vs_best_torch"] = best["p50_s"] / int8["p50_s"]
            if fp32 and rs.get(EDGE_FP32):
                row["edge_overhead"] = rs[EDGE_FP32]["p50_s"] / fp32["p50_s"]
            out.append(row)
    return out


# -------------------------------------------------------------------------------- memory


def _status_kb() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(spec_path: str) -> int:
    """Run in a fresh process: import one runtime, load one model, run the benchmark
    inputs, print the RSS figures as JSON. Imports only what that runtime needs."""
    spec = json.loads(Path(spec_path).read_text())
    runtime, threads = spec["runtime"], spec["threads"]
    if runtime == "eager":
        import torch

        torch.set_num_threads(threads)
        from medmeta import algorithms
    else:
        import onnxruntime as ort
    data = np.load(spec["inputs"])
    x1, x32, expected = data["x1"], data["x32"], data["expected32"]
    base = _status_kb()
    reset = _reset_peak()
    if runtime == "eager":
        run = _eager_from_state(spec, torch, algorithms)
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(spec["model"], opts, providers=["CPUExecutionProvider"])
        run = lambda x: session.run(["probabilities"], {"x": x})[0]  # noqa: E731
    loaded = _status_kb()
    for _ in range(spec["repeats"]):
        run(x1)
        out = run(x32)
    end = _status_kb()
    print(json.dumps({
        "rss_after_import_kb": base["VmRSS"], "rss_after_load_kb": loaded["VmRSS"],
        "peak_rss_kb": end["VmHWM"] if reset else None, "rss_end_kb": end["VmRSS"],
        "peak_delta_kb": end["VmHWM"] - base["VmRSS"] if reset else None,
        "load_delta_kb": loaded["VmRSS"] - base["VmRSS"], "hwm_reset": reset,
        "max_abs_diff_vs_parent": float(np.abs(np.asarray(out) - expected).max()),
    }))  # fmt: skip
    return 0


def _eager_from_state(spec: dict[str, Any], torch: Any, algorithms: Any) -> Callable[..., Any]:
    """The adapted classifier rebuilt from its state dict (weights_only load): a skeleton
    of the same architecture, without running the adaptation in this process."""
    from collections import OrderedDict

    from torch import nn

    from medmeta.algorithms.base import Adapted
    from medmeta.algorithms.protonet import PrototypeHead
    from medmeta.nn import Conv4

    state = torch.load(spec["state"], weights_only=True)
    hidden = spec["hidden"]
    if spec["algorithm"] == "maml":
        learner = algorithms.create("maml", Conv4(3, hidden=hidden), ways=WAYS,
                                    input_shape=IMAGE_SHAPE)  # fmt: skip
        net = nn.Sequential(OrderedDict(backbone=learner.backbone, head=learner.head))
        model = Adapted(net, WAYS)
    else:
        embed = Conv4(3, hidden=hidden)
        protos = torch.zeros(WAYS, spec["embedding_dim"])
        head = PrototypeHead(protos, spec["metric"], spec["temperature"])
        model = Adapted(nn.Sequential(embed, head), WAYS, embed=embed, prototypes=protos,
                        metric=spec["metric"])  # fmt: skip
    model.load_state_dict(state, strict=True)
    model.eval()
    del state
    gc.collect()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x)), -1).numpy()

    return run


def measure_memory(
    models: list[Deployed], qx: Any, s: Settings, folder: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Peak RSS over load + inference, one fresh subprocess per (model, runtime)."""
    import torch

    chosen = models if s.detail_models == "all" else models[:1]
    out = []
    for m in chosen:
        x1, x32 = qx[:1].numpy(), qx[:32].numpy()
        with torch.inference_mode():
            expected = torch.softmax(m.adapted(qx[:32]), -1).numpy()
        inputs = folder / f"{m.name}.inputs.npz"
        np.savez(inputs, x1=x1, x32=x32, expected32=expected)
        state = folder / f"{m.name}.state.pt"
        torch.save(m.adapted.state_dict(), state)
        head = getattr(m.adapted.classify[1], "metric", None)
        for runtime, model_file in (("eager", None), ("ORT float32", m.float_path),
                                    ("ORT int8", m.int8_path)):  # fmt: skip
            spec = {"runtime": "eager" if runtime == "eager" else "ort", "threads": s.threads,
                    "inputs": str(inputs), "model": str(model_file) if model_file else None,
                    "state": str(state), "algorithm": m.algorithm, "hidden": m.hidden,
                    "metric": head, "temperature": getattr(m.adapted.classify[1],
                                                           "temperature", 1.0),
                    "embedding_dim": int(m.adapted.prototypes.shape[1])
                    if m.adapted.prototypes is not None else None,
                    "repeats": 20}  # fmt: skip
            spec_path = folder / f"{m.name}.{spec['runtime']}.{len(out)}.json"
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.edge", "--memory-child", str(spec_path)],
                cwd=REPO, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            rec: dict[str, Any] = {"model": m.name, "runtime": runtime}
            if proc.returncode == 0:
                rec.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                rec["status"] = "ok"
            else:
                rec["status"] = f"error: {proc.stderr.strip()[-300:]}"
            out.append(rec)
            if rec["status"] == "ok":
                log(f"memory {m.name} {runtime}: peak +{rec['peak_delta_kb'] / 1024:.1f} MiB "
                    f"over {rec['rss_after_import_kb'] / 1024:.0f} MiB after imports")  # fmt: skip
            else:
                log(f"memory {m.name} {runtime}: {rec['status']}")
    return out


# --------------------------------------------------------------------------- import time

_IMPORT_PROBE = """
import json, sys, time
t = time.perf_counter()
import {module}
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "torch_loaded": "torch" in sys.modules,
                  "onnxruntime_loaded": "onnxruntime" in sys.modules,
                  "numpy_loaded": "numpy" in sys.modules}}))
"""


def measure_imports(s: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """``import X`` wall time in fresh interpreters (median of ``import_runs``), and the
    largest cumulative imports of ``medmeta.edge`` from ``-X importtime``."""
    out: dict[str, Any] = {}
    for module in ("medmeta.edge", "onnxruntime", "numpy"):
        runs = []
        for _ in range(s.import_runs):
            proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(module=module)],
                                  cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
            if proc.returncode != 0:
                out[module] = {"status": f"error: {proc.stderr.strip()[-300:]}"}
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            seconds = [r["seconds"] for r in runs]
            out[module] = {"status": "ok", "median_s": statistics.median(seconds),
                           "min_s": min(seconds), "max_s": max(seconds), "runs": seconds,
                           **{k: runs[0][k] for k in runs[0] if k.endswith("_loaded")}}  # fmt: skip
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import medmeta.edge"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    top = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            top.append({"module": m.group(4), "cumulative_us": int(m.group(2)),
                        "depth": len(m.group(3)) // 2})  # fmt: skip
    top = [t for t in top if t["depth"] <= 2]
    out["medmeta.edge_importtime_top"] = sorted(top, key=lambda t: -t["cumulative_us"])[:10]
    edge = out.get("medmeta.edge", {})
    if edge.get("status") == "ok":
        log(f"import medmeta.edge: median {edge['median_s']:.3f} s "
            f"(torch loaded: {edge['torch_loaded']})")  # fmt: skip
    return out


# ------------------------------------------------------------------------------- profile


def profile_ort(model: Deployed, qx: Any, s: Settings, folder: Path) -> dict[str, Any]:
    """Per-operator time of the float and int8 sessions (ORT's profiler) and the operators
    of the int8 graph after ORT's optimizations (does QDQ fuse into integer kernels?)."""
    import onnxruntime as ort

    out: dict[str, Any] = {"model": model.name}
    for label, path in (("float32", model.float_path), ("int8", model.int8_path)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = s.threads, 1
        opts.optimized_model_filepath = str(folder / f"{model.name}.{label}.optimized.onnx")
        opts.log_severity_level = 3  # no warning that the dump is machine-specific
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        import onnx

        optimized = onnx.load(opts.optimized_model_filepath)
        counts: dict[str, int] = {}
        for n in optimized.graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        out[f"{label}_optimized_ops"] = dict(sorted(counts.items()))
        for batch in BATCHES:
            session = _ort_session(path, s.threads, str(folder / f"prof-{label}-{batch}"))
            x = qx[:batch].numpy()
            for _ in range(200 if batch == 1 else 40):
                session.run(["probabilities"], {"x": x})
            trace = json.loads(Path(session.end_profiling()).read_text())
            per_op: dict[str, float] = {}
            runs = 0
            for ev in trace:
                if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                    op = ev.get("args", {}).get("op_name", "?")
                    per_op[op] = per_op.get(op, 0.0) + ev["dur"]
                elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
                    runs += 1
            total = sum(per_op.values()) or 1.0
            out[f"{label}_b{batch}"] = {
                "runs": runs,
                "kernel_us_per_run": total / max(runs, 1),
                "share": {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            }
    return out


# ------------------------------------------------------------------------------- targets


def _target(name: str, model: str | None, value: float, limit: float, unit: str,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A target row; ``margin`` > 0 means met by that much (ratio / limit for speed-ups;
    limit - value for points and seconds)."""
    if unit == "ratio":
        met, margin = value >= limit, value / limit
    else:
        met, margin = value <= limit if unit == "points" else value < limit, limit - value
    return {"target": name, "model": model, "value": value, "limit": limit, "unit": unit,
            "met": bool(met), "margin": margin, **extra}  # fmt: skip


def evaluate_targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, per model where they apply."""
    out = []
    for r in payload["ratios"]:
        if r["batch"] == 1 and "ort_fp32_vs_eager" in r:
            out.append(_target("ORT float32 >= 4x eager PyTorch (batch 1)", r["model"],
                               r["ort_fp32_vs_eager"], TARGETS["ort_fp32_vs_eager_b1"], "ratio"))  # fmt: skip
        if "int8_vs_ort_fp32" in r:
            out.append(_target(f"int8 >= 1.3x ORT float32 (batch {r['batch']})", r["model"],
                               r["int8_vs_ort_fp32"], TARGETS["int8_vs_ort_fp32"], "ratio"))  # fmt: skip
    for name, p in payload["parity"].items():
        out.append(_target("int8 accuracy drop <= 1 point", name, -100 * p["accuracy_change"],
                           TARGETS["int8_accuracy_drop_points"], "points",
                           ci95=100 * p["accuracy_change_ci95"]))  # fmt: skip
    edge = payload["imports"].get("medmeta.edge", {})
    if edge.get("status") == "ok":
        out.append(_target("import medmeta.edge < 0.3 s", None, edge["median_s"],
                           TARGETS["edge_import_s"], "seconds"))  # fmt: skip
    return out


# ------------------------------------------------------------------------------ reporting


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{1e3 * v:.3f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def headline(payload: dict[str, Any]) -> list[str]:
    """ORT float32 against the fastest torch runtime measured at each (model, batch), with
    eager PyTorch beside it: the comparison a README may quote."""
    rows = []
    for r in payload["ratios"]:
        if "ort_fp32_vs_best_torch" not in r:
            continue
        best = _lat(payload["latency"], r["model"], r["batch"], r["best_torch"])
        fp32 = _lat(payload["latency"], r["model"], r["batch"], ORT_FP32)
        eager = _lat(payload["latency"], r["model"], r["batch"], EAGER)
        rows.append([r["model"], r["batch"], f"**{r['ort_fp32_vs_best_torch']:.2f}×**",
                     f"{r['best_torch']} {_ms(best.get('p50_s'))} ms",
                     f"{_ms(fp32.get('p50_s'))} ms", _x(r.get("ort_fp32_vs_eager")),
                     f"{_ms(eager.get('p50_s'))} ms"])  # fmt: skip
    if not rows:
        return ["No torch runtime and ONNX Runtime float32 pair was measured."]
    from benchmarks import _harness as H

    table = H.markdown_table(["model", "batch", "ORT fp32 vs fastest torch",
                              "fastest torch (p50)", "ORT fp32 (p50)", "ORT fp32 vs eager",
                              "eager (p50)"], rows)  # fmt: skip
    return [table, "", "The fastest torch runtime is the fastest of eager, torch.jit (trace + "
            "freeze + optimize_for_inference) and torch.compile measured at that point (those "
            "not run are listed in the latency table); eager is shown beside it."]  # fmt: skip


def _reference_note(records: list[dict[str, Any]]) -> str:
    """The float64 check of the latency records, in one sentence."""
    errs = [r["ref_error"] for r in records if r.get("ref_error") is not None]
    if not errs:  # results written before the float64 check
        return ("This run predates the float64 check: runtimes were compared with eager "
                "PyTorch in float32 (max |dp| 1e-4) before timing.")  # fmt: skip
    dropped = [r for r in records if r["status"].startswith("disagrees with the float64")]
    text = ("Before timing, every float32 runtime's probabilities were checked against the "
            "adapted model run in float64 (int8: the parity report below)")  # fmt: skip
    tol = next(r["ref_tol"] for r in records if r.get("ref_tol") is not None)
    text += f": largest |p - p64| {max(errs):.1e} (tolerance {tol:g})"
    if dropped:
        text += "; dropped for disagreeing: " + ", ".join(
            f"{r['formulation']} ({r['model']}, batch {r['batch']}: {r['status']})"
            for r in dropped)  # fmt: skip
    return text + "."


def _lat(records: list[dict[str, Any]], model: str, batch: int, form: str) -> dict[str, Any]:
    return next((r for r in records if r["model"] == model and r["batch"] == batch
                 and r["formulation"] == form), {})  # fmt: skip


_QDQ_OVERHEAD = ("QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput",
                 "ReorderOutput")  # fmt: skip


def explain_misses(payload: dict[str, Any]) -> list[str]:
    """One measured sentence per missed target: kernel-time profiles for the speed targets,
    the largest imports for the import time, the parity for accuracy."""
    out = []
    profiles = payload.get("profile") or {}
    for t in payload["targets"]:
        if t["met"]:
            continue
        prof = profiles.get(t["model"] or "")
        if t["target"].startswith("int8") and "batch" in t["target"] and prof:
            b = 1 if "batch 1)" in t["target"] else 32
            f32, i8 = prof[f"float32_b{b}"], prof[f"int8_b{b}"]
            qdq = sum(v for k, v in i8["share"].items() if k in _QDQ_OVERHEAD)
            conv_f = f32["share"].get("Conv", 0.0) * f32["kernel_us_per_run"]
            conv_i = i8["share"].get("QLinearConv", 0.0) * i8["kernel_us_per_run"]
            conv = ("ORT's int8 convolution is itself slower than its float one at this width"
                    if conv_i > conv_f else
                    f"the int8 convolutions gain only {conv_f / max(conv_i, 1e-9):.2f}× at "
                    "this width, too little to pay for the conversions")  # fmt: skip
            out.append(
                f"{t['model']}, batch {b}: int8 kernels take {i8['kernel_us_per_run']:.0f} µs per "
                f"run against {f32['kernel_us_per_run']:.0f} µs in float32 (profiled); "
                f"convolutions {conv_i:.0f} µs (QLinearConv) vs {conv_f:.0f} µs (Conv), and "
                f"quantize/dequantize/layout operators (Q, DQ, Transpose, Reorder) take "
                f"{100 * qdq:.0f}% of the int8 time: {conv}."
            )  # fmt: skip
        elif t["target"].startswith("ORT float32") and prof:
            f32 = prof["float32_b1"]
            top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(f32["share"].items())[:3])
            out.append(f"{t['model']}: ORT float32 kernels take {f32['kernel_us_per_run']:.0f} "
                       f"µs per run at batch 1 ({top}); the rest of the call is session "
                       "overhead.")  # fmt: skip
        elif t["target"].startswith("import"):
            top = payload["imports"].get("medmeta.edge_importtime_top", [])[:5]
            out.append("import medmeta.edge: the largest imports are " + ", ".join(
                f"{x['module']} {x['cumulative_us'] / 1e3:.0f} ms" for x in top))  # fmt: skip
        elif t["target"].startswith("int8 accuracy"):
            p = payload["parity"][t["model"]]
            out.append(f"{t['model']}: int8 {100 * p['int8_accuracy']:.2f}% vs float "
                       f"{100 * p['float_accuracy']:.2f}% (top-1 agreement "
                       f"{p['top1_agreement']:.4f}, max |dp| {p['max_abs_prob_diff']:.3f}).")  # fmt: skip
    return out


def markdown_report(payload: dict[str, Any]) -> str:
    from benchmarks import _harness as H

    env, recs = payload["environment"], payload["latency"]
    models = payload["models"]
    lines = [f"# Edge benchmark ({env['cpu_model']}, {env['threads']} threads)", ""]
    lines += H.provenance_lines(env)
    lines.append(
        f"- torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}, load average {env['load_average_start'][0]:.2f} at start, "
        f"{env['load_average_end'][0]:.2f} at end (1 min). MALLOC: "
        f"{', '.join(f'{k}={v}' for k, v in env['env'].items() if k.startswith('MALLOC_')) or 'default'}."
    )
    if env.get("quick"):
        lines += ["", "**Quick run** (smoke test: tiny training, few samples): the numbers "
                  "below are not a reference."]  # fmt: skip
    lines += ["", "## Headline: ONNX Runtime against the fastest torch runtime", "",
              *headline(payload)]  # fmt: skip
    lines += ["", "## Targets", ""]
    rows = []
    for t in payload["targets"]:
        if t["unit"] == "ratio":
            value, margin = f"{t['value']:.2f}×", f"{t['margin']:.2f}× the target"
        elif t["unit"] == "seconds":
            value, margin = f"{t['value']:.3f} s", f"{t['margin']:+.3f} s"
        else:
            ci = t.get("ci95")
            value = f"{t['value']:+.2f} points" + (f" (± {ci:.2f})" if ci == ci else "")
            margin = f"{t['margin']:+.2f} points"
        rows.append([t["target"], t["model"] or "—", value, "met" if t["met"] else "**missed**",
                     margin])  # fmt: skip
    lines.append(H.markdown_table(["target", "model", "measured", "", "margin"], rows))
    lines += ["", "## Latency (ms, p50 / p99 per call)", ""]
    forms = [EAGER, JIT, COMPILE, ORT_FP32, ORT_INT8, EDGE_FP32]
    rows = []
    for m in models:
        for b in BATCHES:
            cells = []
            for f in forms:
                r = _lat(recs, m["name"], b, f)
                cells.append(f"{_ms(r.get('p50_s'))} / {_ms(r.get('p99_s'))}" if "p50_s" in r
                             else ("—" if not r else r["status"][:40]))  # fmt: skip
            others = _lat(recs, m["name"], b, EAGER).get("others_cpu")
            rows.append([m["name"], b, *cells, "—" if others is None else f"{others:.2f}"])
    lines.append(H.markdown_table(["model", "batch", *forms, "others' CPUs"], rows))
    lines += ["", "Ratios of p50 (> 1: the second runtime is faster; the fastest torch runtime "
              "is the fastest of eager, torch.jit and torch.compile at that point):", ""]  # fmt: skip
    rows = [[r["model"], r["batch"],
             f"{_x(r.get('ort_fp32_vs_best_torch'))} ({r['best_torch']})",
             _x(r.get("ort_fp32_vs_eager")), _x(r.get("int8_vs_ort_fp32")),
             _x(r.get("int8_vs_best_torch")), _x(r.get("int8_vs_eager")),
             _x(r.get("edge_overhead"))] for r in payload["ratios"]]  # fmt: skip
    lines.append(H.markdown_table(["model", "batch", "fastest torch / ORT fp32",
                                   "eager / ORT fp32", "ORT fp32 / int8", "fastest torch / int8",
                                   "eager / int8", "EdgeModel / ORT fp32 (overhead)"],
                                  rows))  # fmt: skip
    lines += ["", _reference_note(recs)]
    lines += ["", "## Accuracy, size and memory", ""]
    mem = {(r["model"], r["runtime"]): r for r in payload["memory"] if r["status"] == "ok"}

    def peak(name: str, runtime: str) -> str:
        r = mem.get((name, runtime))
        return (
            "—" if r is None or r["peak_delta_kb"] is None else f"{r['peak_delta_kb'] / 1024:.1f}"
        )

    rows = []
    for m in models:
        par = payload["parity"].get(m["name"], {})
        rows.append([
            m["name"], m["role"], f"{m['parameters']:,}",
            f"{100 * m['accuracy']:.1f} ± {100 * m['ci95']:.1f}",
            f"{100 * par['int8_accuracy']:.1f} vs {100 * par['float_accuracy']:.1f} "
            f"({100 * par['accuracy_change']:+.2f} ± {100 * par['accuracy_change_ci95']:.2f})"
            if par else "—",
            f"{par['top1_agreement']:.4f} / {par['max_abs_prob_diff']:.3f}" if par else "—",
            f"{m['state_dict_bytes'] / 1024:.0f}", f"{m['float_bytes'] / 1024:.0f}",
            f"{m['int8_bytes'] / 1024:.0f}", peak(m["name"], "eager"), peak(m["name"], "ORT float32"), peak(m["name"], "ORT int8"),
        ])  # fmt: skip
    lines.append(H.markdown_table(
        ["model", "role", "parameters", "accuracy % (float, 95% CI)",
         "int8 vs float % on parity episodes (change ± CI)", "top-1 agreement / max |dp|",
         "state dict KiB", "ONNX fp32 KiB", "ONNX int8 KiB", "peak MiB eager",
         "peak MiB ORT fp32", "peak MiB ORT int8"], rows))  # fmt: skip
    s = payload["settings"]
    lines += ["", (f"Accuracy: 3-way 5-shot, {s['episodes']} test episodes of the held-out cell "
                   f"types, 15 queries per class (`medmeta.eval.evaluate`, seed 1). Parity: "
                   f"{s['parity_episodes']} seeded episodes (`episode_parity`), each adapted, "
                   f"exported, quantized (calibrated on its 15 support images) and compared on "
                   f"every other image of its classes; the change is paired per episode. Peak "
                   f"memory: RSS high-water mark over loading the model and 20 × (batch 1 + "
                   f"batch 32) inferences in a fresh process, minus the RSS after the runtime's "
                   f"imports (includes ORT's arena and the weights; eager: the module rebuilt "
                   f"from its state dict)."), ""]  # fmt: skip
    students = [m for m in models if m["role"] == "student"]
    if students:
        lines += ["## Distilled students beside their teachers", ""]
        rows = []
        for m in [*[x for x in models if x["role"] == "teacher"], *students]:
            r1 = _lat(recs, m["name"], 1, ORT_FP32)
            r8 = _lat(recs, m["name"], 1, ORT_INT8)
            r32 = _lat(recs, m["name"], 32, ORT_FP32)
            rows.append([m["name"], m["role"], f"{m['parameters']:,}",
                         f"{100 * m['accuracy']:.1f} ± {100 * m['ci95']:.1f}",
                         _ms(r1.get("p50_s")), _ms(r8.get("p50_s")), _ms(r32.get("p50_s")),
                         f"{m['float_bytes'] / 1024:.0f}"])  # fmt: skip
        lines.append(H.markdown_table(["model", "role", "parameters", "accuracy % (95% CI)",
                                       "ORT fp32 b1 p50 ms", "ORT int8 b1 p50 ms",
                                       "ORT fp32 b32 p50 ms", "ONNX KiB"], rows))  # fmt: skip
        lines += ["", f"Students: ProtoNet on Conv4 with fewer channels, distilled "
                  f"({s['distill_steps']} steps, T=4, alpha=0.5) from "
                  f"{' + '.join(s['teachers'])}.", ""]  # fmt: skip
    imp = payload["imports"]
    lines += ["## Import time", ""]
    rows = [[k, f"{v['median_s']:.3f}", f"{v['min_s']:.3f}–{v['max_s']:.3f}",
             v.get("torch_loaded"), v.get("onnxruntime_loaded")]
            for k, v in imp.items() if isinstance(v, dict) and v.get("status") == "ok"]  # fmt: skip
    lines.append(H.markdown_table(["import", "median s", "range s", "torch loaded",
                                   "onnxruntime loaded"], rows))  # fmt: skip
    top = imp.get("medmeta.edge_importtime_top", [])[:6]
    if top:
        lines += ["", "Largest imports under `import medmeta.edge` (`-X importtime`, cumulative): "
                  + ", ".join(f"{t['module']} {t['cumulative_us'] / 1e3:.0f} ms" for t in top)]  # fmt: skip
    profiles = payload.get("profile") or {}
    if profiles:
        lines += ["", "## Where ORT spends the time (per-operator kernel time, ORT profiler)", ""]
        rows = []
        for name, prof in profiles.items():
            for key in ("float32_b1", "int8_b1", "float32_b32", "int8_b32"):
                p = prof[key]
                share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(p["share"].items())[:5])
                rows.append([name, key, f"{p['kernel_us_per_run']:.0f}", share])
        lines.append(H.markdown_table(["model", "session", "profiled kernel µs / run",
                                       "top operators"],
                                      rows))  # fmt: skip
        first = next(iter(profiles.values()))
        lines += ["", f"int8 graph of {first['model']} after ORT's optimizations: " + ", ".join(
            f"{k} ×{v}" for k, v in first["int8_optimized_ops"].items())]  # fmt: skip
    why = explain_misses(payload)
    if why:
        lines += ["", "## Why targets are missed (measured)", "", *[f"* {w}" for w in why]]
    rounds = payload["settings"].get("rounds", 5)
    notes = [
        "Eager PyTorch runs softmax(adapted(x)); the ONNX classifier also returns the "
        "distances to the class centres and the embeddings.",
        f"Latency: single calls timed with perf_counter, in contiguous segments per runtime "
        f"({rounds} rounds, rotating order), each after a 0.1 s pause and 50 ms of discarded "
        "warm-up calls, so that one runtime's spinning thread pool does not slow the next "
        "(see sample_latencies); 'others' CPUs' is the CPU time other processes used "
        "meanwhile (/proc/stat): 1 or more means the two cores were shared.",
        "Profiles: ORT's profiler adds per-node overhead, so its kernel times exceed the "
        "latencies above; the operator shares are what they show.",
        *payload.get("notes", []),
    ]
    lines += ["", "## Notes", "", *[f"* {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs, models = payload["latency"], payload["models"]
    names = [m["name"] for m in models]
    forms = [EAGER, JIT, COMPILE, ORT_FP32, ORT_INT8]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, batch in zip(axes[0], BATCHES, strict=True):
        width = 0.8 / len(forms)
        for i, f in enumerate(forms):
            p50 = [1e3 * _lat(recs, n, batch, f).get("p50_s", np.nan) for n in names]
            p99 = [1e3 * _lat(recs, n, batch, f).get("p99_s", np.nan) for n in names]
            xs = np.arange(len(names)) + (i - (len(forms) - 1) / 2) * width
            ax.bar(xs, p50, width, label=f)
            ax.scatter(xs, p99, marker="_", color="black", s=60, zorder=3)
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (bar: p50, dash: p99)")
        ax.set_title(f"latency, batch {batch}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[1][0]
    keys = [("ort_fp32_vs_best_torch", "fastest torch / ORT fp32", None),
            ("ort_fp32_vs_eager", "eager / ORT fp32", 4.0),
            ("int8_vs_ort_fp32", "ORT fp32 / int8", 1.3)]  # fmt: skip
    bars = len(keys) * len(BATCHES)
    width = 0.8 / bars
    for i, (key, label, target) in enumerate(keys):
        for j, batch in enumerate(BATCHES):
            vals = [next((r.get(key, np.nan) for r in payload["ratios"]
                          if r["model"] == n and r["batch"] == batch), np.nan) for n in names]  # fmt: skip
            k = len(BATCHES) * i + j
            xs = np.arange(len(names)) + (k - (bars - 1) / 2) * width
            ax.bar(xs, vals, width, label=f"{label}, batch {batch}", color=f"C{k}")
        if target is not None:
            ax.axhline(target, linestyle="--", color=f"C{len(BATCHES) * i}", linewidth=1)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    finite = [
        v for r in payload["ratios"] for k, _, _ in keys if np.isfinite(v := r.get(k, np.nan))
    ]
    if finite:  # head room for the legend
        ax.set_ylim(min(finite) / 1.5, max(finite) * 6)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("speed-up (×, log); dashed: targets 4× and 1.3×")
    ax.set_title("speed-ups (p50)")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax = axes[1][1]
    for i, m in enumerate(models):
        for f, marker in ((ORT_FP32, "o"), (ORT_INT8, "s")):
            r = _lat(recs, m["name"], 1, f)
            # int8: the float accuracy moved by the paired change measured on parity episodes
            change = payload["parity"].get(m["name"], {}).get("accuracy_change", 0.0)
            shift = change if f == ORT_INT8 else 0.0
            if "p50_s" in r:
                ax.errorbar(1e3 * r["p50_s"], 100 * (m["accuracy"] + shift), yerr=100 * m["ci95"],
                            marker=marker, color=f"C{i}", capsize=3,
                            label=f"{m['name']} ({f})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("ms per image, batch 1, p50")
    ax.set_ylabel("3-way 5-shot accuracy % (95% CI)")
    ax.set_title("accuracy vs latency (int8: float + paired parity change)")
    ax.legend(fontsize=6)
    ax.grid(True, alpha=0.3)
    env = payload["environment"]
    fig.suptitle(f"medmeta edge: {env['cpu_model']}, {env['threads']} threads, "
                 f"onnxruntime {env['onnxruntime']}, torch {env['torch']}"
                 + (" (quick run)" if env.get("quick") else ""), fontsize=11)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(payload: dict[str, Any], stem: Path) -> list[Path]:
    from benchmarks import _harness as H

    H.write_json(stem.with_suffix(".json"), payload)
    paths = [stem.with_suffix(".json")]
    try:
        plot(payload, stem.with_suffix(".png"))
        paths.append(stem.with_suffix(".png"))
    except ImportError as e:
        payload.setdefault("notes", []).append(f"no plot: {e}")
    H.write_text(stem.with_suffix(".md"), markdown_report(payload))
    paths.append(stem.with_suffix(".md"))
    return paths


# ------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace, command: list[str]) -> int:
    import onnx
    import onnxruntime
    import torch

    from benchmarks import _harness as H
    from benchmarks.ops import QuietPolicy
    from medmeta.export.quantize import episode_parity

    s = settings_from(args)
    torch.set_num_threads(s.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731  (CLI output)
    env = H.environment(torch.device("cpu"), s.threads, command, {
        "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
        "ort_session": {"intra_op_num_threads": s.threads, "inter_op_num_threads": 1,
                        "execution_mode": "sequential", "graph_optimization": "ORT_ENABLE_ALL"},
        "quick": bool(args.quick),
        "reference_check": f"every float32 runtime's probabilities against the adapted model "
                           f"run in float64, max |p - p64| <= {PROB_TOL:g} (latency records: "
                           f"ref_error); medmeta's (ORT float32 export, EdgeModel) fail the run",
    }, allow_dirty=args.allow_dirty)  # fmt: skip
    quiet = QuietPolicy(threshold=args.quiet_threshold,
                        max_wait_s=0.0 if args.quick else args.max_wait)  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medmeta-edge-bench-") as tmp:
        folder = Path(tmp)
        models, qx, test = build_models(s, folder, log)
        try:
            latency = measure_latency(models, qx, s, quiet, log)
        except MedmetaCheckFailed as e:
            print(f"!! {e}\n!! the run fails: no results written", file=sys.stderr)
            return 1
        parity = {}
        detailed = models if s.detail_models == "all" else models[:1]
        for m in detailed:
            p = episode_parity(m.learner, test, ways=WAYS, shots=SHOTS, episodes=s.parity_episodes,
                               queries=s.parity_queries, seed=2, threads=s.threads)  # fmt: skip
            parity[m.name] = p.to_dict()
            log(f"parity {m.name}: int8 {100 * p.int8_accuracy:.2f} vs float "
                f"{100 * p.float_accuracy:.2f} ({100 * p.accuracy_change:+.2f} ± "
                f"{100 * p.accuracy_change_ci95:.2f} points), agreement {p.top1_agreement:.4f}")  # fmt: skip
        memory = measure_memory(models, qx, s, folder, log)
        imports = measure_imports(s, log)
        profile = {m.name: profile_ort(m, qx, s, folder) for m in detailed}
        model_rows = []
        for m in models:
            buf = io.BytesIO()
            torch.save(m.adapted.state_dict(), buf)
            model_rows.append({
                "name": m.name, "algorithm": m.algorithm, "backbone": f"Conv4(3, hidden={m.hidden})",
                "role": m.role, "parameters": m.parameters, "meta_steps": m.steps,
                "fit_seconds": m.fit_seconds, "accuracy": m.accuracy, "ci95": m.ci95,
                "float_bytes": m.float_path.stat().st_size, "int8_bytes": m.int8_path.stat().st_size,
                "state_dict_bytes": len(buf.getvalue()), **m.info,
            })  # fmt: skip
    env["load_average_end"] = list(os.getloadavg())
    env["seconds"] = time.perf_counter() - started
    env["quiet_waited_s"] = quiet.waited_s
    payload: dict[str, Any] = {
        "environment": env,
        "settings": asdict(s) | {"ways": WAYS, "shots": SHOTS, "queries": QUERIES,
                                 "train_classes": TRAIN_CLASSES, "test_classes": TEST_CLASSES,
                                 "dataset": "pbc_blood", "image_shape": list(IMAGE_SHAPE)},
        "models": model_rows,
        "latency": latency,
        "ratios": ratios(latency, models),
        "parity": parity,
        "memory": memory,
        "imports": imports,
        "profile": profile,
        "notes": [],
    }  # fmt: skip
    payload["targets"] = evaluate_targets(payload)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else None)
    stem = Path(args.out) / ("edge-cpu" + (f"-{tag}" if tag else ""))
    for path in write_outputs(payload, stem):
        log(f"wrote {path}")
    for t in payload["targets"]:
        log(f"target {t['target']} [{t['model'] or '-'}]: {t['value']:.3f} "
            f"{'met' if t['met'] else 'MISSED'}")  # fmt: skip
    return 0


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test (< 1 min), no reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="file-name suffix (default 'quick' with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="ProtoNet meta-steps (400)")
    ap.add_argument("--maml-steps", type=int, default=None, help="MAML meta-steps (100)")
    ap.add_argument("--distill-steps", type=int, default=None, help="distillation steps (400)")
    ap.add_argument("--student-hidden", default=None, help="student widths, e.g. 16,32")
    ap.add_argument(
        "--teachers",
        default=None,
        help="teachers of the students: protonet (default) or an ensemble, e.g. protonet,maml "
        "(each distillation step then runs MAML's test-time adaptation: several times slower)",
    )
    ap.add_argument("--episodes", type=int, default=None, help="accuracy episodes (600)")
    ap.add_argument("--parity-episodes", type=int, default=None, help="int8 parity episodes (10)")
    ap.add_argument("--samples", type=int, default=None, help="latency samples at batch 1")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time torch.compile (default: on unless --quick)")  # fmt: skip
    ap.add_argument("--quiet-threshold", type=float, default=0.3)
    ap.add_argument("--max-wait", type=float, default=20.0,
                    help="seconds to wait per point for other processes to calm down")  # fmt: skip
    ap.add_argument("--no-malloc-env", action="store_true")
    ap.add_argument("--replot", type=Path, default=None, help="rewrite .md/.png of a JSON")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into benchmarks/results/ from a tree with uncommitted or "
                         "untracked files (the results are marked dirty)")  # fmt: skip
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(list(argv))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status."""
    prog = prog or "python -m benchmarks.edge"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    if args.memory_child:
        return memory_child(args.memory_child)
    from benchmarks import _harness as H

    if args.replot is not None:
        return H.replot(args.replot, write_outputs)
    device, command = H.start_run(
        "cpu", prog, "benchmarks.edge", argv, args.no_malloc_env, args.out, args.allow_dirty
    )
    if device is None:
        return 2
    return run(args, command)


if __name__ == "__main__":
    sys.exit(main())
