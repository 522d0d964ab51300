"""Few-shot regression on two real protocols (issue 14): MAML, first-order MAML, Meta-SGD and
Reptile with a squared-error head on an MLP, against the baselines a statistician would fit
on the same support set.

Protocols (:mod:`medmeta.data.regression_protocols`):

* **expression** (pbmc68k_celltypes): a held-out gene's expression in a held-out cell type
  from a 50-gene panel; meta-train on 4 cell types x 60 genes, test on 3 other cell types x
  40 other genes;
* **thyroid**: a thyroid lab value (log TSH, T3, TT4, T4U) of a patient at a held-out clinic
  (referral source) from the other labs, age, sex and clinical flags; meta-train on 3
  clinics, test on the 2 others.

Every method uses the same network (MLP 64-64, no batch norm, one output unit), is
meta-trained once per protocol (``--train-shots`` support and ``--queries`` query rows per
episode) and evaluated on the same ``--episodes`` seeded test episodes for each K in
``--shots``. Baselines on each episode's support set: the support mean, ridge regression
with its penalty chosen by leave-one-out (scikit-learn ``RidgeCV``), Bayesian ridge (whose
predictive s.d. gives an interval) and the same MLP fitted from scratch (``--scratch-steps``
Adam steps). Reported per (protocol, K, method): MSE and R² with 95% CIs over episodes, the
paired MSE difference to ridge and to the support mean with its 95% CI, and for the
meta-learners a 90% interval from a bootstrap ensemble (``--members`` adaptations to
resampled supports, :func:`medmeta.algorithms.regressor.bootstrap_interval`) with its
coverage and width.

Results: ``regression-cpu.json`` and ``.md`` in ``--out`` (default benchmarks/results, only
from a clean tree unless ``--allow-dirty``), with the command, commit and environment.
One thread by default: these small networks run many tiny ops, and OpenMP threads waiting
for each other make them several times slower on a shared 2-core machine.

    python -m benchmarks.protocol_regression [--methods maml,reptile] [--steps 3000] [--episodes 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _harness as H
from medmeta import algorithms
from medmeta.algorithms.regressor import bootstrap_interval
from medmeta.data.episodes import EpisodeBatch
from medmeta.data.regression_protocols import RegressionSplit, expression_tasks, thyroid_lab_tasks
from medmeta.eval import regression as R
from medmeta.eval import regression_baselines as RB
from medmeta.eval.evaluate import iter_episodes
from medmeta.nn import MLP
from medmeta.train import meta_fit

PROTOCOLS: dict[str, Callable[[], RegressionSplit]] = {
    "expression": expression_tasks,
    "thyroid": thyroid_lab_tasks,
}
#: Hyper-parameters per method (inner step size, steps in training / at test time).
METHODS: dict[str, dict[str, Any]] = {
    "maml": {"inner_lr": 0.01, "inner_steps": 5, "eval_steps": 10},
    "fomaml": {"inner_lr": 0.01, "inner_steps": 5, "eval_steps": 10},
    "metasgd": {"alpha_init": 0.01, "inner_steps": 1},
    "reptile": {"inner_lr": 0.01, "inner_steps": 5, "eval_steps": 10},
}
BASELINES = ("support mean", "ridge (LOO)", "Bayesian ridge", "MLP from scratch")
#: Short keys of the baselines in the rows' paired differences (``mse_minus_<key>``).
BASELINE_KEYS = dict(zip(BASELINES, ("mean", "ridge", "bayes", "scratch"), strict=True))
HIDDEN = (64, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--protocols", default="expression,thyroid", help="comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=3000, help="meta-training steps")
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="meta learning rate (Adam)")
    parser.add_argument("--train-shots", type=int, default=10)
    parser.add_argument("--shots", default="5,10,20", help="K of the test episodes")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per K")
    parser.add_argument("--members", type=int, default=10, help="bootstrap ensemble size")
    parser.add_argument("--scratch-steps", type=int, default=300)
    parser.add_argument("--eval-batch", type=int, default=100, help="episodes per predict call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
        "(the run is marked dirty)",
    )


def _names(text: str, known: dict[str, Any], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def _shots(args: argparse.Namespace) -> list[int]:
    return [int(k) for k in str(args.shots).split(",") if k.strip()]


# ---------------------------------------------------------------------------- training


def _train(name: str, split: RegressionSplit, args: argparse.Namespace) -> tuple[Any, dict]:
    """A meta-trained regressor and what its training cost."""
    F = split.train.num_features
    torch.manual_seed(args.seed)
    learner = algorithms.create(name, MLP(F, hidden=HIDDEN, batch_norm=False), ways=1,
                                task="regression", input_shape=(F,), **METHODS[name])  # fmt: skip
    start = time.perf_counter()
    fit = meta_fit(learner, split.train, ways=1, shots=args.train_shots, queries=args.queries,
                   steps=args.steps, meta_batch=args.meta_batch, seed=args.seed, lr=args.lr,
                   log_every=max(1, args.steps // 10), progress=False)  # fmt: skip
    info = {"meta_steps": args.steps, "fit_seconds": round(time.perf_counter() - start, 1),
            "train_loss_last": fit.history[-1]["loss"], "hparams": learner.spec()["hparams"]}  # fmt: skip
    return learner.eval(), info


# -------------------------------------------------------------------------- evaluation


def _episodes(split: RegressionSplit, shots: int, args: argparse.Namespace) -> list[EpisodeBatch]:
    """The seeded test episodes, ``--eval-batch`` at a time (the same for every method)."""
    sampler = split.test.episode_sampler(1, shots, args.queries, generator=args.seed + 1)
    return list(iter_episodes(sampler, args.episodes, args.eval_batch))


def _stack(parts: list[Any]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(torch.as_tensor(p).detach().cpu(), np.float64) for p in parts]
    )


def _baselines(batches: list[EpisodeBatch], args: argparse.Namespace) -> dict[str, dict]:
    """Predictions (and Bayesian ridge's interval) of every baseline, ``[E, Q]`` each."""
    out: dict[str, dict[str, list]] = {name: {"pred": []} for name in BASELINES}
    out["Bayesian ridge"] |= {"lower": [], "upper": []}
    for b in batches:
        sx, sy, qx = b.support_x, b.support_y, b.query_x
        out["support mean"]["pred"].append(RB.support_mean_predict(sy, args.queries))
        out["ridge (LOO)"]["pred"].append(RB.ridge_predict(sx, sy, qx))
        mean, lower, upper = RB.bayesian_ridge_interval(sx, sy, qx, level=0.9)
        for key, value in (("pred", mean), ("lower", lower), ("upper", upper)):
            out["Bayesian ridge"][key].append(value)
        out["MLP from scratch"]["pred"].append(RB.scratch_mlp_predict(
            sx, sy, qx, hidden=HIDDEN, steps=args.scratch_steps, seed=args.seed))  # fmt: skip
    return {name: {k: _stack(v) for k, v in parts.items()} for name, parts in out.items()}


def _meta_predictions(learner: Any, batches: list[EpisodeBatch], args: argparse.Namespace) -> dict:
    """The learner's predictions and its bootstrap ensemble's mean and 90% interval."""
    g = torch.Generator().manual_seed(args.seed + 2)
    parts: dict[str, list] = {"pred": [], "ensemble": [], "lower": [], "upper": []}
    for b in batches:
        parts["pred"].append(learner.predict(b.support_x, b.support_y, b.query_x))
        iv = bootstrap_interval(learner.predict, b.support_x, b.support_y, b.query_x,
                                members=args.members, level=0.9, generator=g)  # fmt: skip
        for key, value in (("ensemble", iv.mean), ("lower", iv.lower), ("upper", iv.upper)):
            parts[key].append(value)
    return {k: _stack(v) for k, v in parts.items()}


def _row(protocol: str, shots: int, method: str, preds: dict, target: np.ndarray,
         references: dict[str, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """Metrics of one (protocol, K, method) with paired differences to the references."""
    row: dict[str, Any] = {"protocol": protocol, "shots": shots, "method": method}
    row |= R.summarize_regression(preds["pred"], target, preds.get("lower"), preds.get("upper"))
    errors = R.mse(preds["pred"], target)
    for name, ref in references.items():
        d, ci = R.paired_difference(errors, ref)
        row[f"mse_minus_{name}"], row[f"mse_minus_{name}_ci95"] = d, ci
    if "ensemble" in preds:
        row["ensemble_mse"] = float(R.mse(preds["ensemble"], target).mean())
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Meta-train and evaluate every method on every protocol; the report (rows, settings,
    protocol descriptions and conclusions)."""
    torch.set_num_threads(args.threads)
    protocols = _names(args.protocols, PROTOCOLS, "protocols")
    methods = _names(args.methods, METHODS, "methods")
    rows, described, training = [], {}, {}
    for protocol in protocols:
        split = PROTOCOLS[protocol]()
        described[protocol] = {**split.info, "train_tasks": len(split.train),
                               "test_tasks": len(split.test)}  # fmt: skip
        learners = {}
        for name in methods:
            learners[name], training[f"{protocol}/{name}"] = _train(name, split, args)
            print(f"{protocol:10s} {name:8s} meta-trained in "
                  f"{training[f'{protocol}/{name}']['fit_seconds']:.0f} s", flush=True)  # fmt: skip
        for shots in _shots(args):
            batches = _episodes(split, shots, args)
            target = _stack([b.query_y for b in batches])
            base = _baselines(batches, args)
            refs = {BASELINE_KEYS[n]: R.mse(p["pred"], target) for n, p in base.items()}
            for name, preds in base.items():
                rows.append(_row(protocol, shots, name, preds, target, refs) | {"kind": "baseline"})
            for name, learner in learners.items():
                start = time.perf_counter()
                preds = _meta_predictions(learner, batches, args)
                row = _row(protocol, shots, name, preds, target, refs) | {"kind": "meta-learner"}
                rows.append(row | {"eval_seconds": round(time.perf_counter() - start, 1)})
            best = min((r for r in rows if r["protocol"] == protocol and r["shots"] == shots),
                       key=lambda r: r["mse"])  # fmt: skip
            print(f"{protocol:10s} K={shots:<3d} best MSE: {best['method']} {best['mse']:.4f}",
                  flush=True)  # fmt: skip
    return {"rows": rows, "protocols": described, "training": training,
            "conclusions": conclusions(rows)}  # fmt: skip


# ------------------------------------------------------------------------------ report


def conclusions(rows: list[dict[str, Any]]) -> list[str]:
    """One honest sentence per (protocol, K): does the best meta-learner beat the best
    baseline (lowest MSE of the four; paired 95% CI of the MSE difference)?"""
    out = []
    keys = dict.fromkeys((r["protocol"], r["shots"]) for r in rows)
    for protocol, shots in keys:
        cell = [r for r in rows if r["protocol"] == protocol and r["shots"] == shots]
        metas = [r for r in cell if r["kind"] == "meta-learner"]
        simple = [r for r in cell if r["kind"] == "baseline"]
        if not metas or not simple:
            continue
        meta = min(metas, key=lambda r: r["mse"])
        base = min(simple, key=lambda r: r["mse"])
        key = BASELINE_KEYS[base["method"]]
        d, ci = meta[f"mse_minus_{key}"], meta[f"mse_minus_{key}_ci95"]
        if d + ci < 0:
            verdict = "meta-learning beats the best baseline"
        elif d - ci > 0:
            verdict = "meta-learning does NOT beat the best baseline (it is worse)"
        else:
            verdict = "meta-learning does NOT beat the best baseline (no significant difference)"
        out.append(
            f"{protocol}, K={shots}: {verdict}: {meta['method']} MSE {meta['mse']:.4g} vs "
            f"{base['method']} {base['mse']:.4g} (paired difference {d:+.4g} ± {ci:.2g})"
        )
    return out


def _fmt(value: float | None, ci: float | None, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}f} ± {ci:.{digits}f}" if ci is not None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table per protocol, conclusions and provenance."""
    env, s = report.get("environment", {}), report.get("settings", {})
    lines = ["# Few-shot regression (issue 14)", ""]
    lines += H.provenance_lines(env) if env else []
    lines += ["", "## Conclusions", ""] + [f"- {c}" for c in report["conclusions"]]
    header = ("| K | method | MSE (95% CI) | R² (95% CI) | ΔMSE vs ridge | ΔMSE vs mean | "
              "90% interval coverage | width |")  # fmt: skip
    for protocol, info in report["protocols"].items():
        lines += ["", f"## {protocol}", "", f"{info['train_tasks']} meta-training tasks, "
                  f"{info['test_tasks']} meta-test tasks ({info['dataset']}).", "", header,
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in (r for r in report["rows"] if r["protocol"] == protocol):
            lines.append(
                f"| {r['shots']} | {r['method']} | {_fmt(r['mse'], r['mse_ci95'], 4)} | "
                f"{_fmt(r['r2'], r['r2_ci95'])} | "
                f"{_fmt(r['mse_minus_ridge'], r['mse_minus_ridge_ci95'], 4)} | "
                f"{_fmt(r['mse_minus_mean'], r['mse_minus_mean_ci95'], 4)} | "
                f"{_fmt(r.get('coverage'), r.get('coverage_ci95'))} | "
                f"{_fmt(r.get('width'), None)} |"
            )
    lines += ["", f"{s.get('episodes', '?')} seeded test episodes per K, {s.get('queries', '?')} "
              f"queries each; meta-training {s.get('steps', '?')} steps of "
              f"{s.get('meta_batch', '?')} episodes (K = {s.get('train_shots', '?')}); "
              f"{s.get('members', '?')}-member bootstrap ensembles; the MLP from scratch: "
              f"{s.get('scratch_steps', '?')} Adam steps. ΔMSE: paired difference over the same "
              "episodes (negative = better than the reference). R² per episode on its queries "
              "(predicting the query mean scores 0)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.protocol_regression"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        _names(args.protocols, PROTOCOLS, "protocols")
        _names(args.methods, METHODS, "methods")
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out = Path(args.out)
    env = H.protocol_environment(
        prog, "benchmarks.protocol_regression", argv, out, args.allow_dirty, args.threads
    )
    if env is None:
        return 2
    started = time.perf_counter()
    report = run(args)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "allow_dirty")}
    report = {"schema": "medmeta-bench-regression/1", "environment": env,
              "settings": settings, **report}  # fmt: skip
    H.write_results(out, "regression-cpu", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
