"""Federated meta-learning across hospitals (issue 15): does a model meta-learned by sites
that keep their data adapt to a new site's 5-shot task better than any site's own model?

Protocols (real embedded data; each site keeps its examples, only weight updates travel):

* **classmix** -- one blood-cell set (``pbc_blood``) split by class mix into three labs
  that see different cell types (A: basophil, eosinophil, erythroblast; B: erythroblast,
  immature granulocyte, lymphocyte; C: basophil, immature granulocyte, lymphocyte). A new
  lab joins with two tasks: its own images of the five cell types the labs cover between
  them (5-way; 20% of those images, held out from every lab; no lab has seen all five), and
  cell types no lab has (monocyte, neutrophil, platelet; 3-way).
* **modalities** -- three hospitals with different imaging: two blood labs (``pbc_blood``
  classes 0-3 and 4-7, microscopy) and a knee clinic (``knee_xray_kl``, X-ray, Kellgren-
  Lawrence grades); the new site is a brain MRI centre (``brain_tumor_mri``), a modality
  no site holds (3-way). Images are converted to 3 x 32 x 32.

Models, all ProtoNet on Conv4 from the same seeded initialisation, all scored on the same
seeded N-way 5-shot episodes of each new-site task (accuracy, 95% CI over episodes):

* ``federated (fedavg)``, ``federated (reptile)`` (``--algorithms``): Flower's simulation
  engine, every site every round, ``--local-steps`` local meta-updates per site per round
  for ``--rounds`` rounds;
* ``federated (fedavg) + DP, sigma S``: the first algorithm with each site's update clipped
  to L2 norm ``--dp-clip`` and Gaussian noise S x C on their sum (site-level DP), one row
  per noise multiplier of ``--dp-noise``, each with epsilon at ``--delta`` from Opacus's
  RDP accountant;
* ``local only: SITE``: each site alone, the same number of local meta-updates
  (rounds x local steps);
* ``pooled (not federated)``: all sites' data in one place (what federation avoids), as
  many meta-updates as all sites together;
* ``initialisation``: the untrained network (what meta-learning adds).

    python -m benchmarks federated [--protocol classmix,modalities] [--episodes 600]
    python -m benchmarks federated --quick --out /tmp/fed      # the harness check
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _harness as H

logger = logging.getLogger(__name__)

PROTOCOL_NAMES = ("classmix", "modalities")


@dataclass(frozen=True)
class Target:
    """A new-site task: ``ways``-way 5-shot episodes of ``data`` (a site spec, or ``None``:
    the examples held out from the sites' classes, see :attr:`Protocol.holdout`)."""

    name: str
    ways: int
    data: str | None = None


@dataclass(frozen=True)
class Protocol:
    """Sites (``NAME=DATA@CLASSES`` specs), the new site's tasks, the image geometry and the
    ways of the sites' training episodes. ``holdout`` is the share of every site class's examples kept from all sites for the
    new site (the target whose ``data`` is ``None``)."""

    name: str
    sites: tuple[str, ...]
    targets: tuple[Target, ...]
    image: tuple[int, int, int]
    holdout: float = 0.0
    ways: int = 3


PROTOCOLS = {
    "classmix": Protocol(
        "classmix", ("A=pbc_blood@0+1+2", "B=pbc_blood@2+3+4", "C=pbc_blood@0+3+4"),
        targets=(Target("the labs' 5 cell types", 5), Target("3 new cell types", 3, "pbc_blood@5-7")),
        image=(3, 28, 28), holdout=0.2,
    ),
    "modalities": Protocol(
        "modalities", ("blood-a=pbc_blood@0-3", "blood-b=pbc_blood@4-7", "knee=knee_xray_kl"),
        targets=(Target("brain MRI, a new modality", 3, "brain_tumor_mri"),), image=(3, 32, 32),
    ),
}  # fmt: skip

QUICK = {"rounds": 2, "local_steps": 2, "width": 8, "episodes": 20, "queries": 5,
         "meta_batch": 1, "algorithms": "fedavg", "dp_noise": "0.5",
         "protocols": ("classmix",)}  # fmt: skip


def _preprocess(raw: Any, image: tuple[int, int, int]) -> Any:
    from medmeta.cli._setup import preprocess_dataset
    from medmeta.edge.preprocess import Preprocessing

    return preprocess_dataset(raw, Preprocessing.for_images(image))


def split(
    protocol: Protocol, seed: int
) -> tuple[list[tuple[str, str, np.ndarray]], dict[str, np.ndarray]]:
    """``([(site name, data name, example indices into the data)], {data name: held-out
    indices})``. ``protocol.holdout`` of every site class's examples is held out for the new
    site; a class several sites hold has the rest of its examples split between them
    (seeded): no two sites hold the same example, and no site a held-out one."""
    from medmeta.cli import _data
    from medmeta.edge.cli.classes import parse_classes
    from medmeta.federated.site import site_from_spec

    sites = [site_from_spec(s) for s in protocol.sites]
    labels = {d: _data.load_dataset(d) for d in dict.fromkeys(s.data for s in sites)}
    held = [set(parse_classes(s.classes, labels[s.data].class_names) or
                range(labels[s.data].num_classes)) for s in sites]  # fmt: skip
    rng = np.random.default_rng(seed)
    keep: list[list[np.ndarray]] = [[] for _ in sites]
    kept_out: dict[str, list[np.ndarray]] = {d: [] for d in labels}
    for data, ds in labels.items():
        for label in range(ds.num_classes):
            holders = [i for i, s in enumerate(sites) if s.data == data and label in held[i]]
            order = rng.permutation(np.flatnonzero(ds.labels == label))
            if holders:
                n_out = round(protocol.holdout * len(order))
                kept_out[data].append(order[:n_out])
                order = order[n_out:]
            for part, i in zip(np.array_split(order, max(len(holders), 1)), holders, strict=False):
                keep[i].append(part)
    sites_out = [
        (s.name, s.data, np.sort(np.concatenate(k))) for s, k in zip(sites, keep, strict=True)
    ]
    return sites_out, {d: np.sort(np.concatenate(v)) for d, v in kept_out.items()}


def site_indices(protocol: Protocol, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``(site name, data name, example indices into the data)`` per site (see :func:`split`)."""
    return split(protocol, seed)[0]


def site_data(protocol: Protocol, seed: int) -> list[tuple[str, str, Any]]:
    """``(site name, data name, raw examples)`` per site (see :func:`site_indices`)."""
    from medmeta.cli import _data

    return [(name, data, _data.load_dataset(data).subset(index))
            for name, data, index in site_indices(protocol, seed)]  # fmt: skip


def _pooled(sites: list[tuple[str, str, Any]], image: tuple[int, int, int]) -> Any:
    """All sites' examples in one dataset (preprocessed to ``image``), a class of one data
    set one class whichever site holds it."""
    from medmeta.data import ArrayDataset

    xs, ys, names = [], [], {}
    for _, data, raw in sites:
        ds = _preprocess(raw, image)
        ids = [names.setdefault(f"{data}:{raw.class_names[c]}", len(names)) for c in raw.labels]
        xs.append(np.asarray(ds.x))
        ys.append(np.asarray(ids))
    return ArrayDataset(np.concatenate(xs), np.concatenate(ys), class_names=list(names))


def _plan(
    protocol: Protocol, names: list[str], args: argparse.Namespace, algorithm: str,
    noise: float | None = None,
) -> Any:  # fmt: skip
    """The federated plan (differentially private with noise multiplier ``noise``)."""
    from medmeta.edge.preprocess import Preprocessing
    from medmeta.federated.planning import make_plan

    backbone = {
        "name": "conv4",
        "input_shape": list(protocol.image),
        "kwargs": {"hidden": args.width},
    }
    return make_plan(
        names, learner="protonet", backbone=backbone, ways=protocol.ways,
        preprocessing=Preprocessing.for_images(protocol.image).to_dict(), shots=args.shots,
        queries=args.queries, meta_batch=args.meta_batch, lr=args.lr, rounds=args.rounds,
        local_steps=args.local_steps, algorithm=algorithm,
        server_lr=args.server_lr if algorithm == "reptile" else 1.0, seed=args.seed,
        dp_clip=args.dp_clip if noise is not None else None, dp_noise=noise or 0.0,
        delta=args.delta,
    )  # fmt: skip


def _federated(
    plan: Any, data: list[tuple[str, str, Any]], work: Path, workers: int
) -> tuple[Any, dict]:
    """Train in Flower's simulation engine (each site holding its examples in memory);
    returns the learner and the card."""
    from medmeta.cli._model import load_model
    from medmeta.federated.simulation import run_simulation
    from medmeta.federated.site import Site

    sites = [Site(name, raw) for name, _, raw in data]
    out = work / ("dp" if plan.private else "federated")
    with warnings.catch_warnings():  # Ray's helper processes leave handles to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        card = run_simulation(plan, sites, out, workers=workers, command="benchmarks.federated")
        gc.collect()
    return load_model(out).learner, card


def _local(plan: Any, data: Any, steps: int, seed: int) -> Any:
    """The plan's initialisation meta-trained on ``data`` alone for ``steps`` steps."""
    from medmeta.federated.server_app import initial_learner
    from medmeta.train import meta_fit

    learner = initial_learner(plan)
    meta_fit(learner, data, None, ways=plan.ways, shots=plan.shots, queries=plan.queries,
             steps=steps, meta_batch=plan.meta_batch, lr=plan.lr, seed=seed, progress=False)  # fmt: skip
    return learner


def _names(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _noises(text: str) -> list[float]:
    """``--dp-noise``: comma-separated noise multipliers ('' or 'none': no DP run)."""
    return [float(t) for t in _names(text) if t.lower() != "none"]


def _targets(protocol: Protocol, seed: int) -> list[tuple[Target, Any]]:
    """Each new-site task with its examples (preprocessed)."""
    from medmeta.cli import _data
    from medmeta.federated.site import site_from_spec

    _, held = split(protocol, seed)
    out = []
    for target in protocol.targets:
        if target.data is not None:
            raw = site_from_spec(target.data).raw()
        else:
            (data, index), *more = [(d, i) for d, i in held.items() if len(i)]
            if more:
                raise ValueError(f"{protocol.name}: held-out examples of several data sets")
            raw = _data.load_dataset(data).subset(index)
        out.append((target, _preprocess(raw, protocol.image)))
    return out


def run_protocol(protocol: Protocol, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every model of one protocol, scored on the same episodes of each new-site task."""
    from medmeta.eval import evaluate
    from medmeta.federated.server_app import initial_learner

    targets = _targets(protocol, args.seed)
    data = site_data(protocol, args.seed)
    names = [name for name, _, _ in data]
    rows: list[dict[str, Any]] = []

    def score(model: str, kind: str, learner: Any, seconds: float, **extra: Any) -> None:
        for target, examples in targets:
            res = evaluate(learner, examples, ways=target.ways, shots=5, queries=args.queries,
                           episodes=args.episodes, seed=args.seed + 1000)  # fmt: skip
            rows.append({"protocol": protocol.name, "model": model, "kind": kind,
                         "target": target.name, "accuracy": res.accuracy, "ci95": res.ci95,
                         "episodes": args.episodes, "ways": target.ways, "shots": 5,
                         "chance": 1 / target.ways, "train_seconds": round(seconds, 1), **extra})  # fmt: skip
            print(f"{protocol.name:10s} {model:34s} {target.name:28s} {100 * res.accuracy:5.1f} "
                  f"± {100 * res.ci95:4.1f}" + (f"  (epsilon {extra['epsilon']:.3g})"
                                                if extra.get("epsilon") else ""), flush=True)  # fmt: skip

    algorithms = _names(args.algorithms)
    plan = _plan(protocol, names, args, algorithms[0])
    score("initialisation", "untrained", initial_learner(plan), 0.0)
    runs = [(a, None) for a in algorithms] + [(algorithms[0], n) for n in _noises(args.dp_noise)]
    for algorithm, noise in runs:
        plan = _plan(protocol, names, args, algorithm, noise)
        start = time.perf_counter()
        learner, card = _federated(plan, data, work / protocol.name, args.workers)
        privacy = card.get("privacy") or {}
        model = f"federated ({algorithm})" + (f" + DP, sigma {noise:g}" if plan.private else "")
        score(model, "federated", learner, time.perf_counter() - start,
              epsilon=privacy.get("epsilon"), delta=privacy.get("delta"),
              dp_clip=privacy.get("clip"), dp_noise=privacy.get("noise_multiplier"))  # fmt: skip
    steps = args.rounds * args.local_steps
    for name, _, raw in data:
        start = time.perf_counter()
        learner = _local(plan, _preprocess(raw, protocol.image), steps, args.seed)
        score(f"local only: {name}", "local", learner, time.perf_counter() - start)
    start = time.perf_counter()
    learner = _local(plan, _pooled(data, protocol.image), steps * len(data), args.seed)
    score("pooled (not federated)", "centralised", learner, time.perf_counter() - start)
    return rows


def _table(protocol: str, rows: list[dict[str, Any]]) -> list[str]:
    """One protocol's rows as a markdown table: a model a row, a new-site task a column."""
    targets = list(dict.fromkeys((r["target"], r["ways"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["target"]): r for r in rows}
    lines = [f"**{protocol}** (new-site accuracy %, mean ± 95% CI)", "",
             "| model | " + " | ".join(f"{t} ({w}-way)" for t, w in targets) + " | ε at δ |",
             "|---|" + "---|" * (len(targets) + 1)]  # fmt: skip
    for model in models:
        first = cell[(model, targets[0][0])]
        eps = f"{first['epsilon']:.3g} at {first['delta']:g}" if first.get("epsilon") else "—"
        accs = [f"{100 * cell[(model, t)]['accuracy']:.1f} ± {100 * cell[(model, t)]['ci95']:.1f}"
                for t, _ in targets]  # fmt: skip
        lines.append(f"| {model} | " + " | ".join(accs) + f" | {eps} |")
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    env, s = report["environment"], report["settings"]
    lines = ["# medmeta federated meta-learning: a new site's 5-shot tasks", ""]
    lines += [*H.provenance_lines(env), ""]
    for protocol in dict.fromkeys(r["protocol"] for r in report["results"]):
        lines += _table(protocol, [r for r in report["results"] if r["protocol"] == protocol])
    lines += [f"5-shot, {s['queries']} queries per class, mean ± 95% CI over {s['episodes']} "
              "seeded episodes of each new-site task (the same for every model). Federated: "
              f"{s['rounds']} rounds x {s['local_steps']} local meta-updates per site "
              f"({s['ways']}-way episodes, meta-batch {s['meta_batch']}, Adam lr {s['lr']:g}); "
              "fedavg: the sites' mean weighted by examples; reptile: a step towards it from "
              f"{s['server_lr']:g} annealed linearly to 0. DP: each site's update clipped to L2 "
              f"norm {s['dp_clip']:g}, Gaussian noise sigma x clip on their sum, site-level "
              "epsilon from Opacus's RDP accountant. Local only: rounds x local steps "
              "meta-updates on one site; pooled: all data in one place (what federation "
              "avoids), as many updates as all sites together; initialisation: untrained. "
              f"ProtoNet, Conv4-{s['width']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--protocol", help=f"comma-separated subset of {', '.join(PROTOCOL_NAMES)} "
                   "(default: all; with --quick: classmix)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--algorithms", default="fedavg,reptile",
                   help="server updates, comma-separated (DP runs with the first)")  # fmt: skip
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--shots", type=int, default=5, help="training episodes' shots")
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--meta-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32, help="Conv4 channels")
    p.add_argument("--dp-clip", type=float, default=0.5)
    p.add_argument("--dp-noise", default="0.05,0.5",
                   help="noise multipliers of the DP runs, comma-separated ('none': no DP)")  # fmt: skip
    p.add_argument("--delta", type=float, default=1e-3, help="with 3 sites, below 1/sites")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="Ray actors (sites trained at once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the harness")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--allow-dirty", action="store_true",
                   help="write into benchmarks/results/ from an uncommitted tree (marked dirty)")  # fmt: skip
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.federated"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    default = QUICK["protocols"] if args.quick else PROTOCOL_NAMES
    names = _names(args.protocol) if args.protocol else list(default)
    if args.quick:
        for key, value in QUICK.items():
            if key != "protocols":
                setattr(args, key, value)
    unknown = sorted(set(names) - set(PROTOCOL_NAMES))
    if unknown:
        print(f"--protocol takes {', '.join(PROTOCOL_NAMES)}; got {unknown}", file=sys.stderr)
        return 2
    out = Path(args.out)
    env = H.protocol_environment(prog, "benchmarks.federated", argv, out, args.allow_dirty,
                                 args.threads)  # fmt: skip
    if env is None:
        return 2
    import flwr
    import opacus

    env.update(flwr=flwr.__version__, opacus=opacus.__version__)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medmeta-federated-") as work:
        rows = [r for n in names for r in run_protocol(PROTOCOLS[n], args, Path(work))]
    env["wall_s"] = round(time.perf_counter() - started, 1)
    settings = {k: getattr(args, k) for k in ("rounds", "local_steps", "algorithms", "server_lr",
                "shots", "queries", "meta_batch", "lr", "width", "dp_clip", "dp_noise", "delta",
                "episodes", "seed", "quick")}  # fmt: skip
    settings.update(protocols=names, ways=PROTOCOLS[names[0]].ways)
    report = {"schema": "medmeta-bench-federated/1", "environment": env, "settings": settings,
              "results": rows}  # fmt: skip
    H.write_results(out, "federated-cpu" + ("-quick" if args.quick else ""), report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
