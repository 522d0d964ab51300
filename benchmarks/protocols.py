"""Few-shot protocols on the embedded real medical images, for every algorithm.

(a) within a domain: blood cells (PBC), meta-train on 5 cell types, test 3-way 1-shot and
    5-shot episodes on the 3 held-out types;
(b) across domains: meta-train on blood cells and knee X-rays, test 4-way 1-shot and
    5-shot episodes on brain MRI.

Every learner uses the same Conv4 backbone; "supervised" is the non-meta-learning
baseline (supervised pre-training on the training classes, then nearest centroid).
Results (mean accuracy with its 95% CI over the test episodes) go to
``benchmarks/results/protocols-<device>.json`` and ``.md``.

    python -m benchmarks.protocols [--algorithms protonet,maml] [--steps 400] [--episodes 600]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import medmeta
from medmeta import algorithms
from medmeta.data import ArrayDataset, as_features, load
from medmeta.eval import evaluate
from medmeta.nn import Conv4, embedding_dim
from medmeta.train import meta_fit

SIZE = 28  # all images at 28x28x3: the blood cells' native size, cheap on a CPU

# Algorithm -> (hyper-parameters, share of the step budget): the optimisation-based
# methods adapt in an inner loop, so they get fewer (costlier) meta-steps.
ALGORITHMS: dict[str, tuple[dict[str, Any], float]] = {
    "supervised": ({}, 1.0),
    "protonet": ({}, 1.0),
    "matching": ({}, 1.0),
    "relation": ({}, 1.0),
    "siamese": ({}, 1.0),
    "snail": ({}, 1.0),
    "maml": ({}, 0.5),
    "fomaml": ({}, 0.5),
    "reptile": ({}, 1.0),
    "metasgd": ({}, 0.5),
    "anil": ({}, 0.5),
    "mamlpp": ({}, 0.5),
}


def _images(name: str) -> tuple[torch.Tensor, list[str], Any]:
    data = load(name)
    x = as_features(data.x)  # [N, C, H, W] in [0, 1]
    if x.shape[-1] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="area")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(), list(data.class_names), data.labels


def _dataset(parts: list[tuple[str, list[int] | None]]) -> ArrayDataset:
    """Concatenate the chosen classes of several embedded image sets into one dataset."""
    xs, ys, names = [], [], []
    for name, keep in parts:
        x, classes, labels = _images(name)
        keep = list(range(len(classes))) if keep is None else keep
        mask = torch.isin(torch.as_tensor(labels), torch.as_tensor(keep))
        remap = {c: len(names) + i for i, c in enumerate(keep)}
        xs.append(x[mask])
        ys.append(torch.as_tensor([remap[int(c)] for c in torch.as_tensor(labels)[mask]]))
        names += [f"{name}:{classes[c]}" for c in keep]
    return ArrayDataset(torch.cat(xs), torch.cat(ys).numpy(), names)


PROTOCOLS = {
    "within-domain (blood cells)": {
        "train": [("pbc_blood", [0, 1, 2, 3, 4])],
        "test": [("pbc_blood", [5, 6, 7])],
        "ways": 3,
    },
    "cross-domain (blood + knee -> brain MRI)": {
        "train": [("pbc_blood", None), ("knee_xray_kl", None)],
        "test": [("brain_tumor_mri", None)],
        "ways": 4,
    },
}


def _learner(
    name: str, ways: int, train: ArrayDataset, hparams: dict[str, Any]
) -> algorithms.MetaLearner:
    """The learner with its backbone; shape arguments go to the learners that take them."""
    torch.manual_seed(0)
    backbone = Conv4(3, hidden=64)
    shape_args = {
        "num_classes": train.num_classes,
        "embedding_dim": embedding_dim(backbone, (3, SIZE, SIZE)),
        "feature_shape": (64, SIZE // 16, SIZE // 16),
        "feature_dim": embedding_dim(backbone, (3, SIZE, SIZE)),
    }
    accepted = inspect.signature(algorithms.base._REGISTRY[name]).parameters
    kwargs = {k: v for k, v in shape_args.items() if k in accepted} | dict(hparams)
    return algorithms.create(name, backbone, ways, **kwargs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    names = args.algorithms.split(",") if args.algorithms else list(ALGORITHMS)
    results: list[dict[str, Any]] = []
    for protocol, spec in PROTOCOLS.items():
        train, test = _dataset(spec["train"]), _dataset(spec["test"])
        ways = spec["ways"]
        for name in names:
            hparams, share = ALGORITHMS[name]
            steps = max(1, int(args.steps * share))
            learner = _learner(name, ways, train, hparams)
            start = time.perf_counter()
            meta_fit(learner, train, ways=ways, shots=5, queries=args.queries, steps=steps,
                     meta_batch=args.meta_batch, seed=0, lr=1e-3, progress=False)  # fmt: skip
            fit_s = time.perf_counter() - start
            for shots in (1, 5):
                start = time.perf_counter()
                ev = evaluate(learner, test, ways=ways, shots=shots, queries=args.queries,
                              episodes=args.episodes, seed=1)  # fmt: skip
                row = {
                    "protocol": protocol, "algorithm": name, "ways": ways, "shots": shots,
                    "accuracy": ev.accuracy, "ci95": ev.ci95, "auroc": ev.auroc, "ece": ev.ece,
                    "chance": 1 / ways, "meta_steps": steps, "fit_seconds": fit_s,
                    "eval_seconds": time.perf_counter() - start,
                }  # fmt: skip
                results.append(row)
                print(f"{protocol:42s} {name:10s} {ways}-way {shots}-shot  "
                      f"acc {100 * ev.accuracy:5.1f} ± {100 * ev.ci95:4.1f}  ({steps} steps, {fit_s:.0f} s)",
                      flush=True)  # fmt: skip
    return {
        "command": " ".join(["python -m benchmarks.protocols", *sys.argv[1:]]),
        "device": "cpu",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "versions": {
            "torch": torch.__version__,
            "medmeta": medmeta.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "steps": args.steps,
            "meta_batch": args.meta_batch,
            "queries": args.queries,
            "episodes": args.episodes,
            "backbone": "Conv4(3, hidden=64)",
            "image_size": SIZE,
        },
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| protocol | algorithm | 1-shot accuracy (95% CI) | 5-shot accuracy (95% CI) | meta-steps |",
        "|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in report["results"]:
        rows.setdefault((r["protocol"], r["algorithm"]), {})[r["shots"]] = r
    for (protocol, name), by_shot in rows.items():
        cells = [f"{100 * by_shot[k]['accuracy']:.1f} ± {100 * by_shot[k]['ci95']:.1f}" if k in by_shot else "—"
                 for k in (1, 5)]  # fmt: skip
        steps = next(iter(by_shot.values()))["meta_steps"]
        lines.append(f"| {protocol} | {name} | {cells[0]} | {cells[1]} | {steps} |")
    s = report["settings"]
    lines.append("")
    lines.append(
        f"{s['episodes']} test episodes per cell, {s['queries']} queries per class, backbone {s['backbone']}, "
        f"{s['image_size']}x{s['image_size']} images; chance is 33.3% (3-way) and 25.0% (4-way). "
        f"Command: `{report['command']}` on {report['cpu']} with {report['threads']} threads, "
        f"torch {report['versions']['torch']}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algorithms", default="", help="comma-separated subset (default: all)")
    parser.add_argument(
        "--steps", type=int, default=400, help="meta-training steps (MAML family: half)"
    )
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "protocols-cpu.json"
    if previous.exists():  # keep earlier runs of the algorithms not run now
        ran = {r["algorithm"] for r in report["results"]}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["algorithm"] not in ran]
        report["results"] = kept + report["results"]
    (out / "protocols-cpu.json").write_text(json.dumps(report, indent=2))
    (out / "protocols-cpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
