"""Few-shot protocols beyond images (issue 14): gene expression, physiological signals and
clinical tables, meta-learners against the baselines a statistician fits on the same
support set.

* **expression** -- ``pbmc68k_celltypes`` (765 genes): meta-train on 5 T/NK cell types,
  test 3-way episodes on 4 held-out types (monocytes, B cells, CD34+ progenitors, dendritic
  cells; the 8 naive CD4+ T cells are too few for an episode); MLP backbone; ProtoNet, MAML,
  ANIL, Meta-SGD and Reptile.
* **signals** -- ``pig_cvp`` (52 animals x 6 central venous pressure recordings of 2000
  samples): meta-train on pigs 1-40, test 5-way episodes on pigs 41-52; the central 1000
  samples of each recording, standardised on their own; the 1-D CNN; ProtoNet and ANIL
  (full MAML through the CNN is too slow for a CPU run).
* **tables** -- ``thyroid`` (clinical table, 23 columns): meta-train on 5 diagnosis groups,
  test 3-way episodes on the other 3 (hyperthyroid, replacement therapy, antithyroid
  treatment); the encoding (categories, scaling, missing-value indicators) of the
  meta-learners fitted on the training rows; MLP; ProtoNet, MAML.

Every test episode (the same seeded episodes for every method) also gets, fitted on its
support set only: logistic regression, k-nearest neighbours and a random forest
(scikit-learn, :mod:`medmeta.eval.support_baselines`). For signals they read the log
amplitude spectrum (phase-invariant: raw time points of unaligned recordings put them at or
below chance). Features for them are standardised with the support's mean and standard
deviation (tables: encoded by a :class:`~medmeta.edge.table.TableSpec` fitted on the
support rows): nothing of the queries leaks. Results are mean accuracy ± 95% CI over the
episodes, JSON + Markdown in ``--out`` (``families-cpu.*``).

    python -m benchmarks protocols --family expression|signals|tables [--episodes 600]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _harness as H
from medmeta import algorithms
from medmeta.data import ArrayDataset, EpisodeSampler, load
from medmeta.edge.preprocess import Preprocessing, standardize_records
from medmeta.edge.table import TableSpec
from medmeta.eval.metrics import mean_ci95
from medmeta.eval.support_baselines import baseline_scores
from medmeta.nn import embedding_dim, make_backbone
from medmeta.train import meta_fit

logger = logging.getLogger(__name__)

FAMILIES = ("expression", "signals", "tables")
BASELINES = ("logistic", "knn", "random_forest")


@dataclass(frozen=True)
class Protocol:
    """One data set's protocol: class split, episode size, backbone and methods."""

    family: str
    data: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    ways: int
    shots: tuple[int, ...]
    queries: int
    backbone: str
    backbone_kwargs: dict[str, Any]
    algorithms: tuple[str, ...]


PROTOCOLS = {
    "expression": Protocol(
        "expression", "pbmc68k_celltypes",
        train=("CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD8+ Cytotoxic T",
               "CD8+/CD45RA+ Naive Cytotoxic", "CD56+ NK"),
        test=("CD14+ Monocyte", "CD19+ B", "CD34+", "Dendritic"),
        ways=3, shots=(1, 5), queries=5, backbone="mlp", backbone_kwargs={"hidden": [256, 128]},
        algorithms=("protonet", "maml", "anil", "metasgd", "reptile"),
    ),
    "signals": Protocol(
        "signals", "pig_cvp", train=tuple(f"pig_{i}" for i in range(1, 41)),
        test=tuple(f"pig_{i}" for i in range(41, 53)), ways=5, shots=(1, 5), queries=1,
        backbone="conv1d", backbone_kwargs={"channels": [32, 64, 64, 64]},
        algorithms=("protonet", "anil"),
    ),
    "tables": Protocol(
        "tables", "thyroid",
        train=("negative", "hypothyroid", "non_thyroidal_illness", "binding_protein",
               "miscellaneous"),
        test=("hyperthyroid", "replacement_therapy", "antithyroid_treatment"),
        ways=3, shots=(1, 5), queries=10, backbone="mlp", backbone_kwargs={"hidden": [64, 32]},
        algorithms=("protonet", "maml"),
    ),
}  # fmt: skip

SIGNAL_WINDOW = 1000  # samples of pig_cvp's 2000 (the CLI's --signal-length 1000)
SPECTRUM_BINS = 200  # low-frequency amplitude-spectrum bins the signal baselines read
# The MAML family adapts in an inner loop: half the meta-steps (as the image protocols).
STEP_SHARE = {"maml": 0.5, "anil": 0.5, "metasgd": 0.5}


# ------------------------------------------------------------------------- data


@dataclass
class FamilyData:
    """A protocol's data: model inputs of every example, labels, class names, and what the
    baselines read (``raw`` per example; ``support_features(raw_support, raw_query)``)."""

    model_x: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    raw: Any
    baseline_features: Callable[[Any, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    series: bool = False


def _class_ids(names: list[str], chosen: tuple[str, ...]) -> list[int]:
    missing = [c for c in chosen if c not in names]
    if missing:
        raise ValueError(f"classes {missing} not in the data; classes are {names}")
    return [names.index(c) for c in chosen]


def _standardised(raw: Any, s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors standardised with the support's mean and standard deviation only."""
    xs, xq = np.asarray(raw[s], np.float64), np.asarray(raw[q], np.float64)
    xs, xq = xs.reshape(len(s), -1), xq.reshape(len(q), -1)
    mean, std = xs.mean(0), xs.std(0)
    std[std < 1e-8] = 1.0
    return (xs - mean) / std, (xq - mean) / std


def _spectrum_features(raw: Any, s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signals as their log amplitude spectrum (``log1p |rFFT|`` of bins 1..SPECTRUM_BINS per
    channel: invariant to the phase of the waveform, which differs between recordings),
    standardised with the support's statistics only."""
    spectra = np.log1p(np.abs(np.fft.rfft(np.asarray(raw, np.float64), axis=-1)))
    return _standardised(spectra[..., 1 : SPECTRUM_BINS + 1], s, q)


def _table_features(raw: Any, s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table rows encoded by a spec fitted on the support rows only."""
    spec = TableSpec.fit(raw.take(s))
    return spec.encode(raw.take(s)), spec.encode(raw.take(q))


def load_family(protocol: Protocol) -> FamilyData:
    """Model inputs and baseline inputs of a protocol's data set."""
    if protocol.family == "tables":
        ds = load(protocol.data, rows=True)
        train = np.flatnonzero(np.isin(ds.labels, _class_ids(list(ds.class_names), protocol.train)))
        pre = Preprocessing.for_table(TableSpec.fit(ds.x.take(train)))
        return FamilyData(pre(ds.x), ds.labels, list(ds.class_names), ds.x, _table_features)
    ds = load(protocol.data)
    x = np.asarray(ds.x, np.float32)
    if protocol.family == "signals":  # the central window, each record standardised
        start = (x.shape[-1] - SIGNAL_WINDOW) // 2
        x = standardize_records(x[..., start : start + SIGNAL_WINDOW])
        return FamilyData(x, ds.labels, list(ds.class_names), x, _spectrum_features, series=True)
    return FamilyData(x, ds.labels, list(ds.class_names), x, _standardised)


def _subset(data: FamilyData, classes: list[int]) -> ArrayDataset:
    keep = np.isin(data.labels, classes)
    meta = {"format": "timeseries"} if data.series else {}
    return ArrayDataset(data.model_x[keep], data.labels[keep], data.class_names, meta=meta)


# ------------------------------------------------------------------------- methods


def _learner(name: str, protocol: Protocol, input_shape: tuple[int, ...], n_train: int) -> Any:
    torch.manual_seed(0)
    backbone = make_backbone(protocol.backbone, input_shape, **protocol.backbone_kwargs)
    dim = embedding_dim(backbone, input_shape)
    shape_args = {"num_classes": n_train, "embedding_dim": dim, "feature_dim": dim}
    accepted = inspect.signature(algorithms.base._REGISTRY[name]).parameters
    kwargs = {k: v for k, v in shape_args.items() if k in accepted}
    return algorithms.create(name, backbone, protocol.ways, **kwargs)


def _episodes(labels: np.ndarray, classes: list[int], protocol: Protocol, shots: int,
              episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Support and query example indices ``[E, N*K]``, ``[E, N*Q]`` of seeded episodes (the
    sampler draws from the labels only, so indices stand in for the inputs)."""
    keep = np.flatnonzero(np.isin(labels, classes))
    index = ArrayDataset(keep[:, None].astype(np.float32), labels[keep], None)
    sampler = EpisodeSampler(index, protocol.ways, shots, protocol.queries, batch_size=1,
                             generator=seed)  # fmt: skip
    s, q = [], []
    for _ in range(episodes):
        b = sampler.sample()
        s.append(b.support_x[0, :, 0].long().numpy())
        q.append(b.query_x[0, :, 0].long().numpy())
    return np.stack(s), np.stack(q)


def _episode_labels(protocol: Protocol, shots: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.repeat(np.arange(protocol.ways), shots)
    yq = np.repeat(np.arange(protocol.ways), protocol.queries)
    return ys, yq


def _meta_accuracy(learner: Any, data: FamilyData, support: np.ndarray, query: np.ndarray,
                   protocol: Protocol, shots: int) -> np.ndarray:  # fmt: skip
    """Per-episode accuracy ``[E]`` of a meta-learner on the given episodes."""
    ys, yq = _episode_labels(protocol, shots)
    x = torch.as_tensor(data.model_x)
    acc = []
    learner.eval()
    for start in range(0, len(support), 16):
        s, q = support[start : start + 16], query[start : start + 16]
        sy = torch.as_tensor(ys).expand(len(s), -1)
        with torch.no_grad():
            logits = learner.predict(x[torch.as_tensor(s)], sy, x[torch.as_tensor(q)])
        acc.append((logits.argmax(-1).numpy() == yq).mean(-1))
    return np.concatenate(acc)


def _baseline_accuracy(name: str, data: FamilyData, support: np.ndarray, query: np.ndarray,
                       protocol: Protocol, shots: int) -> np.ndarray:  # fmt: skip
    ys, yq = _episode_labels(protocol, shots)
    acc = []
    for e, (s, q) in enumerate(zip(support, query, strict=True)):
        xs, xq = data.baseline_features(data.raw, s, q)
        scores = baseline_scores(name, xs, ys, xq, seed=e)
        acc.append(float((scores.argmax(-1) == yq).mean()))
    return np.asarray(acc)


# ------------------------------------------------------------------------- runs


def run_family(protocol: Protocol, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every method and baseline on one protocol; a row per (method, shots)."""
    data = load_family(protocol)
    train_ids = _class_ids(data.class_names, protocol.train)
    test_ids = _class_ids(data.class_names, protocol.test)
    train = _subset(data, train_ids)
    rows: list[dict[str, Any]] = []

    def add(method: str, kind: str, shots: int, acc: np.ndarray, **extra: Any) -> None:
        mean, ci = mean_ci95(acc)
        rows.append({"family": protocol.family, "data": protocol.data, "method": method,
                     "kind": kind, "ways": protocol.ways, "shots": shots, "accuracy": mean,
                     "ci95": ci, "episodes": len(acc), "chance": 1 / protocol.ways, **extra})  # fmt: skip
        print(f"{protocol.family:10s} {method:20s} {protocol.ways}-way {shots}-shot "
              f"{100 * mean:5.1f} ± {100 * ci:4.1f}", flush=True)  # fmt: skip

    episodes = {k: _episodes(data.labels, test_ids, protocol, k, args.episodes, seed=1)
                for k in protocol.shots}  # fmt: skip
    for name in protocol.algorithms:
        if args.algorithms and name not in args.algorithms:
            continue
        learner = _learner(name, protocol, data.model_x.shape[1:], len(data.class_names))
        steps = max(1, int(args.steps * STEP_SHARE.get(name, 1.0)))
        start = time.perf_counter()
        meta_fit(learner, train, ways=protocol.ways, shots=max(protocol.shots),
                 queries=protocol.queries, steps=steps, meta_batch=args.meta_batch, seed=0,
                 progress=False)  # fmt: skip
        fit_s = time.perf_counter() - start
        for k, (s, q) in episodes.items():
            acc = _meta_accuracy(learner, data, s, q, protocol, k)
            add(name, "meta-learner", k, acc, meta_steps=steps, fit_seconds=round(fit_s, 1))
    for name in BASELINES:
        for k, (s, q) in episodes.items():
            add(name, "baseline (support only)", k,
                _baseline_accuracy(name, data, s, q, protocol, k))  # fmt: skip
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# medmeta few-shot protocols beyond images", ""]
    lines += H.provenance_lines(env)
    lines += ["", "| family | data | method | kind | N-way | 1-shot | 5-shot |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in report["results"]:
        cells.setdefault((r["family"], r["method"]), {})[r["shots"]] = r
    for (family, method), by in cells.items():
        first = next(iter(by.values()))
        acc = [f"{100 * by[k]['accuracy']:.1f} ± {100 * by[k]['ci95']:.1f}" if k in by else "—"
               for k in (1, 5)]  # fmt: skip
        lines.append(f"| {family} | {first['data']} | {method} | {first['kind']} | "
                     f"{first['ways']} | {acc[0]} | {acc[1]} |")  # fmt: skip
    s = report["settings"]
    lines += ["", f"Accuracy (%) ± 95% CI over {s['episodes']} seeded test episodes of held-out "
              f"classes (the same episodes for every method); {s['steps']} meta-steps (MAML, "
              "ANIL, Meta-SGD: half), meta-batch "
              f"{s['meta_batch']}. Baselines are fitted on each episode's support set only."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.protocol_families"
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--family", default=",".join(FAMILIES),
                   help=f"comma-separated subset of {', '.join(FAMILIES)}")  # fmt: skip
    p.add_argument("--algorithms", default="", help="comma-separated subset (default: all)")
    p.add_argument("--steps", type=int, default=400, help="meta-steps (MAML family: half)")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write into benchmarks/results/ from an uncommitted tree (marked dirty)")  # fmt: skip
    args = p.parse_args(argv)
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        print(f"unknown families {unknown}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    args.algorithms = {a.strip() for a in args.algorithms.split(",") if a.strip()}
    out = Path(args.out)
    env = H.protocol_environment(
        prog, "benchmarks.protocol_families", argv, out, args.allow_dirty, args.threads
    )
    if env is None:
        return 2
    started = time.perf_counter()
    rows = [r for f in families for r in run_family(PROTOCOLS[f], args)]
    env["wall_s"] = round(time.perf_counter() - started, 1)
    settings = {"steps": args.steps, "meta_batch": args.meta_batch, "episodes": args.episodes,
                "families": families, "threads": args.threads}  # fmt: skip
    report = {"schema": "medmeta-bench-families/1", "environment": env, "settings": settings,
              "results": rows}  # fmt: skip
    stem = "families-cpu" + ("" if set(families) == set(FAMILIES) else "-" + "-".join(families))
    H.write_results(out, stem, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
