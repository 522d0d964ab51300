"""Few-shot protocols on the embedded real medical images, for every algorithm.

(a) within a domain: blood cells (PBC), meta-train on 5 cell types, test 3-way 1-shot and
    5-shot episodes on the 3 held-out types;
(b) across domains: meta-train on blood cells and knee X-rays, test 4-way 1-shot and
    5-shot episodes on brain MRI.

Every learner uses the same Conv4 backbone; "supervised" is the non-meta-learning
baseline (supervised pre-training on the training classes, then nearest centroid).
Results (mean accuracy with its 95% CI over the test episodes) go to
``benchmarks/results/protocols-cpu.json`` and ``.md``. A run adds itself to that file:
its rows replace earlier rows of the same algorithms, the other rows stay, and every row
names its run, which records its command, date, git commit and environment (``--fresh``
starts a new file). Results go into benchmarks/results/ only from a clean tree
(``--allow-dirty`` writes them marked dirty).

    python -m benchmarks.protocols [--algorithms protonet,maml] [--steps 400] [--episodes 600]

With ``--family expression|signals|tables|molecules|regression`` it runs the protocols of
that data family instead (``benchmarks/protocol_families.py``, ``protocol_molecules.py``,
``protocol_regression.py``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import _harness as H
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


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": args.steps,
        "meta_batch": args.meta_batch,
        "queries": args.queries,
        "episodes": args.episodes,
        "backbone": "Conv4(3, hidden=64)",
        "image_size": SIZE,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Meta-train and evaluate the chosen algorithms on both protocols; one row per
    (protocol, algorithm, shots)."""
    torch.set_num_threads(args.threads)
    names = _names(args)
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
    return results


def _names(args: argparse.Namespace) -> list[str]:
    return [a.strip() for a in args.algorithms.split(",") if a.strip()] or list(ALGORITHMS)


# ------------------------------------------------------------------------- runs and files


def _legacy_runs(report: dict[str, Any]) -> dict[str, Any]:
    """A file written before runs were recorded (one top-level ``command``: the last
    run's) in the current layout: the rows of the algorithms that command names get its
    run, the others a run whose command was not recorded."""
    command = str(report.get("command", ""))
    words = command.split()
    named = set()
    if "--algorithms" in words and words.index("--algorithms") + 1 < len(words):
        named = set(words[words.index("--algorithms") + 1].split(","))
    common = {
        "legacy": True,
        "date_utc": None,
        "git_commit": None,
        "git_dirty": None,
        "settings": report.get("settings", {}),
        "environment": {k: report.get(k) for k in ("device", "threads", "cpu", "versions")},
    }
    last = {"id": 2, "command": words, **common, "algorithms": sorted(named)}
    last["note"] = "written before each run was recorded: command as the file recorded it"
    first = {"id": 1, "command": None, **common}
    first["note"] = "written before each run was recorded: this run's command was not recorded"
    rows = [dict(r) for r in report.get("results", [])]
    for r in rows:
        r["run"] = 2 if r["algorithm"] in named else 1
    first["algorithms"] = sorted({r["algorithm"] for r in rows if r["run"] == 1})
    runs = [run for run in (first, last) if any(r["run"] == run["id"] for r in rows)]
    return {"runs": runs, "results": rows}


def combine(
    previous: dict[str, Any] | None, run: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The report with ``run`` added: its rows replace the earlier rows of the same
    algorithms, earlier rows of other algorithms stay with the run that made them (each
    row names its run by ``run``, each run records its command, date, commit and
    environment). ``previous``: the report so far (None: a new file).

    At the top, ``git_commit`` and ``environment`` are those of ``run``, the run that wrote
    the file, and ``git_dirty`` is true when any run's tree was not a clean commit."""
    if previous is not None and "runs" not in previous:
        previous = _legacy_runs(previous)
    earlier_runs = previous["runs"] if previous else []
    ran = set(run["algorithms"])
    kept = [r for r in (previous["results"] if previous else []) if r["algorithm"] not in ran]
    run = dict(run, id=max((r["id"] for r in earlier_runs), default=0) + 1)
    used = {r["run"] for r in kept}
    runs = [r for r in earlier_runs if r["id"] in used] + [run]
    results = kept + [dict(r, run=run["id"]) for r in rows]
    return {
        "schema": "medmeta-bench-protocols/2",
        "device": "cpu",
        "runs": runs,
        "git_commit": run.get("git_commit"),
        "git_dirty": any(r.get("git_dirty") is not False for r in runs),
        "environment": run.get("environment"),
        "results": results,
    }


def _run_line(run: dict[str, Any]) -> str:
    command = " ".join(run["command"]) if run.get("command") else "(not recorded)"
    if run.get("legacy"):
        return f"- run {run['id']}: `{command}` ({run.get('note')})"
    env = run.get("environment", {})
    dirty = " **(dirty tree: not a reference result)**" if H.is_dirty(env) else ""
    return (
        f"- run {run['id']}: `{H.command_line(env) if env.get('command') else command}` on "
        f"{run.get('date_utc')}, git `{run.get('git_commit')}`{dirty}; "
        f"{env.get('cpu_model', '?')}, {env.get('threads', '?')} threads, torch "
        f"{env.get('torch', '?')}, medmeta {env.get('medmeta', '?')}"
    )


def markdown(report: dict[str, Any]) -> str:
    if "runs" not in report:
        report = _legacy_runs(report)
    lines = [
        "| protocol | algorithm | 1-shot accuracy (95% CI) | 5-shot accuracy (95% CI) | meta-steps | run |",
        "|---|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in report["results"]:
        rows.setdefault((r["protocol"], r["algorithm"]), {})[r["shots"]] = r
    for (protocol, name), by_shot in rows.items():
        cells = [f"{100 * by_shot[k]['accuracy']:.1f} ± {100 * by_shot[k]['ci95']:.1f}" if k in by_shot else "—"
                 for k in (1, 5)]  # fmt: skip
        first = next(iter(by_shot.values()))
        lines.append(f"| {protocol} | {name} | {cells[0]} | {cells[1]} | {first['meta_steps']} "
                     f"| {first.get('run', '?')} |")  # fmt: skip
    s = report["runs"][-1].get("settings", {})
    lines += ["", "Runs (each row names the run that made it):", ""]
    lines += [_run_line(run) for run in report["runs"]]
    lines.append("")
    lines.append(
        f"{s.get('episodes', '?')} test episodes per cell, {s.get('queries', '?')} queries per "
        f"class, backbone {s.get('backbone', '?')}, {s.get('image_size', '?')}x"
        f"{s.get('image_size', '?')} images (the last run's settings; every run's are in the "
        "JSON); chance is 33.3% (3-way) and 25.0% (4-way)."
    )
    return "\n".join(lines) + "\n"


#: ``--family`` -> the module with its protocols (a ``main(argv, prog)`` entry point).
FAMILY_MODULES = {
    "expression": "benchmarks.protocol_families",
    "signals": "benchmarks.protocol_families",
    "tables": "benchmarks.protocol_families",
    "molecules": "benchmarks.protocol_molecules",
    "regression": "benchmarks.protocol_regression",
}


def _family_main(argv: list[str], prog: str) -> int | None:
    """``--family F[,G]``: run those families' protocols (all in one module) instead of the
    image protocols; None when no ``--family`` is given."""
    words = [a.split("=", 1) for a in argv]
    at = next((i for i, w in enumerate(words) if w[0] == "--family"), None)
    if at is None:
        return None
    value = words[at][1] if len(words[at]) == 2 else (argv[at + 1] if at + 1 < len(argv) else "")
    families = [f.strip() for f in value.split(",") if f.strip()]
    modules = {FAMILY_MODULES.get(f) for f in families}
    if not families or None in modules or len(modules) != 1:
        print(f"{prog}: --family takes one of {', '.join(FAMILY_MODULES)} (expression, "
              "signals and tables together), got " + repr(value), file=sys.stderr)  # fmt: skip
        return 2
    module = importlib.import_module(modules.pop())  # type: ignore[arg-type]
    if module.__name__ != "benchmarks.protocol_families":  # one family per module: no flag
        rest = argv[:at] + argv[at + (1 if len(words[at]) == 2 else 2) :]
        return int(module.main(rest, prog=f"{prog} --family {value}") or 0)
    return int(module.main(argv, prog=prog) or 0)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.protocols"
    argv = list(sys.argv[1:] if argv is None else argv)
    family = _family_main(argv, prog)
    if family is not None:
        return family
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
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start a new protocols-cpu.json (default: add this run to it, replacing the "
        "rows of the algorithms run now)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
        "(the run is marked dirty)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(_names(args)) - set(ALGORITHMS))
    if unknown:
        print(f"unknown algorithms {unknown}; known: {', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    env = H.protocol_environment(
        prog, "benchmarks.protocols", argv, out, args.allow_dirty, args.threads
    )
    if env is None:
        return 2
    started = time.perf_counter()
    rows = run(args)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    this_run = {
        "command": env["command"],
        "date_utc": env["date_utc"],
        "git_commit": env["git_commit"],
        "git_dirty": env["git_dirty"],
        "algorithms": _names(args),
        "settings": settings_of(args),
        "environment": env,
    }
    path = out / "protocols-cpu.json"
    previous = json.loads(path.read_text()) if path.exists() and not args.fresh else None
    report = combine(previous, this_run, rows)
    H.write_results(out, "protocols-cpu", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
