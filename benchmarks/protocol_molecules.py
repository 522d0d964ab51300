"""Few-shot drug screening on ToxCast and Tox21: meta-learners against baselines fitted on
the same support sets.

Molecules are Morgan fingerprints (radius 2, 2048 bits, RDKit). ToxCast's assays without
its ``TOX21_*`` end-points (which repeat Tox21's) are split by assay provider
(``task_groups``) into meta-training and held-out groups (``--test-fraction`` of the assays,
seeded). ProtoNet and MAML with one MLP backbone are meta-trained on 2-way
``--train-shots``-shot episodes of the training assays (balanced queries), then tested on

* the held-out ToxCast provider groups, and
* Tox21 (12 assays; its 8 unparsable SMILES are reported and left out),

at K = 8, 16 and 32 actives + K inactives, beside a random forest and a logistic regression
fitted on each episode's support set alone. The query of a test episode is the rest of the
assay's molecules (a stratified sample of at most ``--max-query``, the active rate kept).
Every method scores the *same* episodes. Metrics per episode: ROC-AUC and ΔAUPRC (AUPRC
minus the query's active fraction; FS-Mol, Stanley et al. 2021), reported as mean ± 95% CI
over episodes and over assays (per-assay means), with paired differences between each
meta-learner and each baseline and a plain-words conclusion.

Output: ``--out DIR`` (default ``benchmarks/results``) gets ``molecules-cpu.json`` and
``molecules-cpu.md`` with the command, date, git commit and environment; results go into
``benchmarks/results/`` only from a clean tree (``--allow-dirty`` writes them marked dirty).

    python -m benchmarks.protocol_molecules [--steps 1000] [--episodes 600] [--out DIR]
    python -m benchmarks.protocol_molecules --steps 5 --episodes 4 --out /tmp/mol   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _harness as H
from medmeta import algorithms
from medmeta.data import load
from medmeta.data.assay_tasks import AssayEpisodeSampler, AssayTaskSet, tox21_holdout
from medmeta.data.molecules import morgan_fingerprints
from medmeta.eval.metrics import mean_ci95
from medmeta.eval.ranking_metrics import delta_auprc, roc_auc
from medmeta.eval.support_baselines import baseline_scores
from medmeta.nn import MLP
from medmeta.train import meta_fit

SCHEMA = "medmeta-bench-molecules/1"
META_LEARNERS = ("protonet", "maml")
BASELINES = {"random_forest": "random forest", "logistic": "logistic regression"}
LABELS = {"protonet": "ProtoNet", "maml": "MAML", **BASELINES}
#: Share of ``--steps`` for each meta-learner: MAML's steps adapt in an inner loop (costlier).
STEP_SHARE = {"protonet": 1.0, "maml": 0.5}
METRICS = ("roc_auc", "delta_auprc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The protocol's options (see the module docstring)."""
    a = parser.add_argument
    a("--shots", default="8,16,32", help="test K (actives = inactives), comma-separated")
    a("--train-shots", type=int, default=16, help="K of the meta-training episodes")
    a("--train-queries", type=int, default=16, help="queries per class in meta-training")
    a("--steps", type=int, default=1000, help="meta-training steps (MAML: half)")
    a("--meta-batch", type=int, default=8)
    a("--lr", type=float, default=1e-3)
    a("--hidden", default="256,128", help="MLP widths (Linear-BatchNorm-ReLU per layer)")
    a("--maml-inner-lr", type=float, default=0.1)
    a("--episodes", type=int, default=600, help="test episodes per (test set, K)")
    a("--min-query", type=int, default=3, help="at least this many query molecules per class")
    a("--max-query", type=int, default=512, help="query molecules per test episode, at most")
    a("--test-fraction", type=float, default=0.2, help="share of ToxCast assays held out")
    a("--seed", type=int, default=0)
    a("--algorithms", default="protonet,maml,random_forest,logistic")
    a("--threads", type=int, default=1)
    a("--out", default="benchmarks/results", help="folder for molecules-cpu.{json,md}")
    a("--allow-dirty", action="store_true",
      help="write into benchmarks/results/ from a tree with uncommitted or untracked files "
      "(the run is marked dirty)")  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _methods(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown algorithms {unknown}; known: {', '.join(LABELS)}")
    return names


def _data(args: argparse.Namespace) -> tuple[dict[str, AssayTaskSet], AssayTaskSet, dict]:
    """Test task sets by name, the training task set, and what the data looked like."""
    toxcast, tox21 = load("toxcast"), load("tox21")
    fp_cast, fp_21 = morgan_fingerprints(toxcast.smiles), morgan_fingerprints(tox21.smiles)
    train, test = tox21_holdout(toxcast).split_assays(
        (1 - args.test_fraction, args.test_fraction), seed=args.seed
    )
    info = {
        "fingerprints": "Morgan radius 2, 2048 bits (RDKit)",
        "toxcast_unparsed_smiles": fp_cast.n_unparsed,
        "tox21_unparsed_smiles": fp_21.n_unparsed,
        "tox21_unparsed_indices": fp_21.unparsed.tolist(),
        "train_groups": train.meta["groups"],
        "train_assays": train.n_assays,
        "toxcast_test_groups": test.meta["groups"],
        "toxcast_test_assays": test.n_assays,
        "tox21_assays": tox21.n_assays,
        "excluded": "ToxCast's 100 TOX21_* assays (tox21_holdout): neither trained nor tested",
    }
    x_cast = torch.from_numpy(fp_cast.features.astype(np.float32))  # shared by both parts
    tests = {
        "ToxCast held-out groups": test.task_set(x_cast, fp_cast.parsed),
        "Tox21": tox21.task_set(fp_21.features, fp_21.parsed),
    }
    return tests, train.task_set(x_cast, fp_cast.parsed), info


def _learner(name: str, args: argparse.Namespace, n_features: int) -> algorithms.MetaLearner:
    torch.manual_seed(args.seed)
    backbone = MLP(n_features, hidden=tuple(_ints(args.hidden)))
    if name == "maml":
        return algorithms.create("maml", backbone, 2, input_shape=(n_features,),
                                 inner_lr=args.maml_inner_lr)  # fmt: skip
    return algorithms.create(name, backbone, 2)


def _fit(names: list[str], train: AssayTaskSet, args: argparse.Namespace) -> dict[str, Any]:
    """Meta-train each meta-learner on the training assays; ``{name: (learner, info)}``."""
    fitted: dict[str, Any] = {}
    for name in (n for n in names if n in META_LEARNERS):
        learner = _learner(name, args, train.features.shape[1])
        steps = max(1, int(args.steps * STEP_SHARE[name]))
        start = time.perf_counter()
        meta_fit(learner, train, ways=2, shots=args.train_shots, queries=args.train_queries,
                 steps=steps, meta_batch=args.meta_batch, seed=args.seed, lr=args.lr,
                 progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        fitted[name] = (learner, {"meta_steps": steps, "fit_seconds": round(seconds, 1)})
        print(f"meta-trained {LABELS[name]}: {steps} steps in {seconds:.0f} s", flush=True)
    return fitted


def _scores(name: str, fitted: dict[str, Any], batch: Any, seed: int) -> np.ndarray:
    """``[M]`` active scores of the episode's queries by method ``name``."""
    if name in fitted:
        learner = fitted[name][0]
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)[0].detach()
        return (logits[:, 1] - logits[:, 0]).double().numpy()  # log-odds of "active"
    probs = baseline_scores(name, batch.support_x[0], batch.support_y[0], batch.query_x[0],
                            seed=seed)  # fmt: skip
    return probs[:, 1]


def _evaluate(
    names: list[str], fitted: dict[str, Any], tasks: AssayTaskSet, shots: int,
    seed: int, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """Per-episode metrics of every method on the same ``args.episodes`` episodes."""
    sampler = tasks.episode_sampler(2, shots, args.min_query, generator=seed, query="rest",
                                    max_query=args.max_query)  # fmt: skip
    per = {n: {m: [] for m in METRICS} for n in names}
    assays, active_rate, n_query = [], [], []
    for learner, _ in fitted.values():
        learner.eval()
    for e in range(args.episodes):
        batch = sampler.sample()
        y = batch.query_y[0].numpy()
        assays.append(int(AssayEpisodeSampler.assays(batch)[0]))
        active_rate.append(float(y.mean()))
        n_query.append(len(y))
        for name in names:
            s = _scores(name, fitted, batch, seed=seed * 100_003 + e)
            per[name]["roc_auc"].append(float(roc_auc(s, y)))
            per[name]["delta_auprc"].append(float(delta_auprc(s, y)))
    return {
        "assays": assays,
        "active_rate": active_rate,
        "n_query": n_query,
        "eligible_assays": len(sampler.eligible),
        "per_episode": per,
    }


def _summary(values: list[float], assays: list[int]) -> dict[str, float]:
    """Mean ± 95% CI over episodes, and over assays (each assay's mean counted once)."""
    v, a = np.asarray(values), np.asarray(assays)
    mean, ci = mean_ci95(v)
    per_assay = np.array([v[a == u].mean() for u in np.unique(a)])
    t_mean, t_ci = mean_ci95(per_assay)
    return {"mean": mean, "ci95": ci, "task_mean": t_mean, "task_ci95": t_ci,
            "n_tasks": int(per_assay.size)}  # fmt: skip


METRIC_LABELS = {"roc_auc": "ROC-AUC", "delta_auprc": "ΔAUPRC"}


def _verdict(comp: dict[str, Any], learner: str, baseline: str) -> dict[str, str]:
    """Per metric: which method is better by the paired 95% CI, or neither."""
    out = {}
    for m in METRICS:
        lo, hi = comp[m]["mean"] - comp[m]["ci95"], comp[m]["mean"] + comp[m]["ci95"]
        out[m] = learner if lo > 0 else baseline if hi < 0 else "no clear difference"
    return out


def _verdict_text(verdict: dict[str, str]) -> str:
    return "; ".join(f"{METRIC_LABELS[m]}: {LABELS.get(w, w)}" + (" better" if w in LABELS else "")
                     for m, w in verdict.items())  # fmt: skip


def _rows(
    names: list[str], set_name: str, shots: int, ev: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows (one per method) and paired comparisons (meta-learner vs baseline)."""
    rows, comparisons = [], []
    for name in names:
        row = {"test_set": set_name, "shots": shots, "method": name,
               "episodes": len(ev["assays"]), "eligible_assays": ev["eligible_assays"]}  # fmt: skip
        for m in METRICS:
            row[m] = _summary(ev["per_episode"][name][m], ev["assays"])
        rows.append(row)
    for learner in (n for n in names if n in META_LEARNERS):
        for base in (n for n in names if n in BASELINES):
            comp = {"test_set": set_name, "shots": shots, "learner": learner, "baseline": base}
            for m in METRICS:
                d = np.subtract(ev["per_episode"][learner][m], ev["per_episode"][base][m])
                mean, ci = mean_ci95(d)
                comp[m] = {"mean": mean, "ci95": ci}
            comp["verdict"] = _verdict(comp, learner, base)
            comparisons.append(comp)
    return rows, comparisons


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Meta-train, evaluate every method on the same seeded episodes; the report's data
    (``settings``, ``data``, ``training``, ``results``, ``comparisons``)."""
    torch.set_num_threads(args.threads)
    names = _methods(args)
    tests, train, info = _data(args)
    print(f"train {info['train_assays']} assays {info['train_groups']}; ToxCast test "
          f"{info['toxcast_test_assays']} assays {info['toxcast_test_groups']}; Tox21 "
          f"{info['tox21_assays']} assays ({info['tox21_unparsed_smiles']} unparsable SMILES "
          "skipped)", flush=True)  # fmt: skip
    fitted = _fit(names, train, args)
    rows, comparisons = [], []
    for t, (set_name, tasks) in enumerate(tests.items()):
        for shots in _ints(args.shots):
            start = time.perf_counter()
            ev = _evaluate(names, fitted, tasks, shots, args.seed + 1000 * (t + 1) + shots, args)
            r, c = _rows(names, set_name, shots, ev)
            rows += r
            comparisons += c
            line = "  ".join(f"{LABELS[x['method']]} {x['roc_auc']['mean']:.3f}" for x in r)
            print(f"{set_name:24s} K={shots:<3d} ROC-AUC  {line}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return {
        "settings": settings_of(args),
        "data": info,
        "training": {n: f[1] for n, f in fitted.items()},
        "results": rows,
        "comparisons": comparisons,
    }


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("shots", "train_shots", "train_queries", "steps", "meta_batch", "lr", "hidden",
            "maml_inner_lr", "episodes", "min_query", "max_query", "test_fraction", "seed",
            "algorithms", "threads")  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def _cell(s: dict[str, float], task: bool = False) -> str:
    if task:
        return f"{s['task_mean']:.3f} ± {s['task_ci95']:.3f}"
    return f"{s['mean']:.3f} ± {s['ci95']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: provenance, results, paired comparisons, conclusions."""
    env, s, d = report.get("environment", {}), report["settings"], report["data"]
    lines = ["# Few-shot drug screening (ToxCast / Tox21)", ""]
    lines += H.provenance_lines(env) if env else ["- (no environment recorded)"]
    lines += [
        f"- Meta-training: {d['train_assays']} ToxCast assays of groups "
        f"{', '.join(d['train_groups'])}; {s['train_shots']}-shot episodes, "
        f"{s['train_queries']} queries per class, meta-batch {s['meta_batch']}, "
        f"{s['steps']} steps (MAML {int(s['steps'] * STEP_SHARE['maml'])}), MLP {s['hidden']}.",
        f"- Tests: {d['toxcast_test_assays']} held-out ToxCast assays "
        f"({', '.join(d['toxcast_test_groups'])}) and Tox21 ({d['tox21_assays']} assays); "
        f"{d['excluded']}. Unparsable SMILES skipped: ToxCast {d['toxcast_unparsed_smiles']}, "
        f"Tox21 {d['tox21_unparsed_smiles']}.",
        f"- {s['episodes']} episodes per row (the same episodes for every method), queries: "
        f"the rest of the assay, at most {s['max_query']} (stratified), at least "
        f'{s["min_query"]} per class. Mean ± 95% CI over episodes; "per assay": over the '
        "assays' mean values.",
        "",
        "| test set | K | method | ROC-AUC | ΔAUPRC | ROC-AUC per assay | ΔAUPRC per assay | assays |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['test_set']} | {r['shots']} | {LABELS[r['method']]} | {_cell(r['roc_auc'])} "
            f"| {_cell(r['delta_auprc'])} | {_cell(r['roc_auc'], True)} "
            f"| {_cell(r['delta_auprc'], True)} | {r['roc_auc']['n_tasks']} |"
        )
    if report["comparisons"]:
        lines += ["", "Paired differences on the same episodes (meta-learner − baseline):", "",
                  "| test set | K | comparison | Δ ROC-AUC | Δ ΔAUPRC | conclusion |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for c in report["comparisons"]:
            lines.append(
                f"| {c['test_set']} | {c['shots']} | {LABELS[c['learner']]} − "
                f"{LABELS[c['baseline']]} | {_cell(c['roc_auc'])} | {_cell(c['delta_auprc'])} "
                f"| {_verdict_text(c['verdict'])} |"
            )
    title = 'Conclusion (paired 95% CIs; "better" = the CI of the difference excludes 0):'
    lines += ["", title, "", *_conclusions(report)]
    return "\n".join(lines) + "\n"


def _conclusions(report: dict[str, Any]) -> list[str]:
    """One line per meta-learner: in how many (test set, K) cells it beats every baseline
    on both metrics, and where a baseline is better (on either metric)."""
    out = []
    comps = report["comparisons"]
    for learner in dict.fromkeys(c["learner"] for c in comps):
        mine = [c for c in comps if c["learner"] == learner]
        cells = list(dict.fromkeys((c["test_set"], c["shots"]) for c in mine))
        wins = [k for k in cells
                if all(set(c["verdict"].values()) == {learner}
                       for c in mine if (c["test_set"], c["shots"]) == k)]  # fmt: skip
        worse = [f"{c['test_set']} K={c['shots']} ({LABELS[c['baseline']]}, "
                 f"{', '.join(METRIC_LABELS[m] for m, w in c['verdict'].items() if w == c['baseline'])})"
                 for c in mine if c["baseline"] in c["verdict"].values()]  # fmt: skip
        line = (f"- {LABELS[learner]} beats every baseline on both metrics in {len(wins)} of "
                f"{len(cells)} (test set, K) cells")  # fmt: skip
        line += (f"; a baseline is better in: {'; '.join(worse)}." if worse
                 else "; no baseline is clearly better anywhere.")  # fmt: skip
        out.append(line)
    return out or ["- no meta-learner was run."]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.protocol_molecules"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        _methods(args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out = Path(args.out)
    env = H.protocol_environment(
        prog, "benchmarks.protocol_molecules", argv, out, args.allow_dirty, args.threads
    )
    if env is None:
        return 2
    started = time.perf_counter()
    report = {"schema": SCHEMA, **run(args)}
    env["wall_s"] = round(time.perf_counter() - started, 1)
    report["environment"] = env
    report["git_commit"], report["git_dirty"] = env["git_commit"], env["git_dirty"]
    H.write_results(out, "molecules-cpu", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
