"""A real quick run for the report tests, trained once per process: Prototypical Networks
on a small Conv4 meta-trained on 5 blood-cell types, evaluated on the 3 held-out types, and
the embeddings of a new 5-shot task."""

from __future__ import annotations

import functools
import sys

import numpy as np
import torch

from medmeta import algorithms
from medmeta.data import EpisodeSampler, load, split_classes
from medmeta.eval import evaluate
from medmeta.nn import Conv4
from medmeta.report import ReportData
from medmeta.report.figures import PLOT_NAMES
from medmeta.train import meta_fit

WAYS, SHOTS, QUERIES = 3, 5, 10
#: The figures of :func:`make_report_data`'s report: all but those of other data families.
FULL_PLOTS = tuple(n for n in PLOT_NAMES
                   if n not in ("signal_traces", "feature_values", "regression_intervals"))  # fmt: skip


@functools.cache
def quick_run() -> dict:
    torch.manual_seed(0)  # Conv4's initial weights
    blood = load("pbc_blood")
    train, test = split_classes(blood, classes=[[0, 1, 2, 3, 4], [5, 6, 7]])
    learner = algorithms.create("protonet", Conv4(3, hidden=16), ways=WAYS)
    fit = meta_fit(learner, train, test, ways=WAYS, shots=SHOTS, queries=5, steps=30,
                   meta_batch=2, seed=0, val_every=15, val_episodes=20, log_every=5,
                   progress=False)  # fmt: skip
    r1 = evaluate(learner, test, ways=WAYS, shots=1, queries=5, episodes=20, seed=2)
    r5 = evaluate(learner, test, ways=WAYS, shots=SHOTS, queries=5, episodes=20, seed=2)
    task = EpisodeSampler(test, WAYS, SHOTS, QUERIES, batch_size=1, generator=7).sample()
    adapted = learner.adapt(task.support_x[0], task.support_y[0])
    with torch.no_grad():
        z = adapted.embed(task.query_x[0])  # [N*Q, D]
        pred = adapted(task.query_x[0]).argmax(-1)
    y = task.query_y[0]
    names = [test.class_names[int(c)] for c in task.classes[0]]
    return {
        "fit": fit,
        "evaluations": [("3-way 1-shot", r1), ("3-way 5-shot", r5)],
        "embeddings": z.numpy(),
        "labels": y.numpy(),
        "predictions": pred.numpy(),
        "prototypes": adapted.prototypes.numpy(),
        "class_names": names,
        "adapt_accuracy": float((pred == y).float().mean()),
        "support_x": task.support_x[0].numpy(),  # [N*K, 3, 28, 28] in [0, 1]
        "support_y": task.support_y[0].numpy(),
    }


def make_report_data(run: dict, **overrides) -> ReportData:
    """A full ReportData from the quick run, with plausible export and latency parts."""
    r5 = run["evaluations"][-1][1]
    data = ReportData(
        title="medmeta demo: blood cells, 3-way 5-shot",
        summary=[
            ("dataset", "pbc_blood (8 blood-cell types, CC BY 4.0)"),
            ("Algorithm", "protonet (Snell et al. 2017)"),
            ("Backbone", "Conv4, 16 channels"),
            ("Meta-training", "30 steps x 2 episodes, 3-way 5-shot"),
            ("Device", "cpu"),
            ("Wall time", "9.1 s"),
        ],
        history=run["fit"].history,
        evaluations=run["evaluations"],
        embeddings=run["embeddings"],
        embedding_labels=run["labels"],
        prototypes=run["prototypes"],
        class_names=run["class_names"],
        embedding_predictions=run["predictions"],
        examples=run["support_x"],
        example_labels=run["support_y"],
        example_kind="image",
        adaptation={
            "classes": run["class_names"],
            "shots": SHOTS,
            "accuracy": run["adapt_accuracy"],
            "queries": len(run["labels"]),
        },
        export={
            "path": "medmeta-demo/model.onnx",
            "size_mb": 0.118,
            "opset": 18,
            "parity_max_abs_diff": 2.4e-6,
            "edge_agreement": 1.0,
            "exporter": "dynamo",
            "files": ["model.onnx", "model.embed.onnx", "model.head.onnx", "model.int8.onnx"],
            "int8_size_mb": 0.041,
            "int8_agreement": 0.9667,
            "enrolment_max_abs_diff": 1.1e-6,
        },
        latency=[
            {"runtime": "eager PyTorch", "batch": 1, "p50_ms": 0.82, "p99_ms": 1.31},
            {"runtime": "ORT float32", "batch": 1, "p50_ms": 0.21, "p99_ms": 0.35},
            {"runtime": "ORT int8", "batch": 1, "p50_ms": 0.17, "p99_ms": 0.30},
            {"runtime": "eager PyTorch", "batch": 64, "p50_ms": 9.6, "p99_ms": 12.2},
            {"runtime": "ORT float32", "batch": 64, "p50_ms": 4.1, "p99_ms": 5.0},
            {"runtime": "ORT int8", "batch": 64, "p50_ms": 3.3, "p99_ms": 4.4},
        ],
        notes=[
            "Short CPU run (30 meta-steps): numbers show the pipeline works, not the best "
            "attainable accuracy.",
            f"Only {r5.episodes} test episodes: the confidence intervals are wide.",
        ],
        command="medmeta demo --steps 30",
        versions={
            "medmeta": "0.1.0",
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
    )
    for k, v in overrides.items():
        setattr(data, k, v)
    return data
