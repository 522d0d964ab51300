"""The Abd-MRI few-shot segmentation protocol (SSL-ALPNet, Ouyang et al. ECCV 2020) on
CHAOS T2-SPIR, and 1-shot nuclei segmentation on DSB 2018.

``python -m benchmarks segmentation [--runs alpnet:ssl:1,alpnet:labels:1,...] [--folds 5] ...``

Abd-MRI (``/work/shared/data/chaos_mr_t2.npz``, 20 patients; CC BY-NC-SA, used here
for evaluation only): folds split by patient (``--folds`` groups of the sorted patient
ids); each held-out organ group (the kidneys, then liver + spleen) is tested in turn:

* **setting 1**: the test organs' labels are never used in training (with labels: the
  other organs' labels only; self-supervised: superpixels of every training slice);
* **setting 2**: training slices that contain a test organ are removed.

Training modes: ``ssl`` (superpixel self-supervision, SSL-ALPNet; no label at all) and
``labels`` (episodes of the other organs' labels). Evaluation: the 3-D chunk protocol of
:mod:`medmeta.eval.volume_protocol` (1-shot, 3 chunks), every test patient's volume
segmented with each other test patient as support; a query patient's Dice is the mean
over its supports; mean and 95% CI over the query patients of every fold (and seeds).
Baselines: ``finetune`` (the ssl encoder fine-tuned with a 1x1 head on the support
slices, ``benchmarks/_seg_finetune.py``) and the all-foreground mask of the organ range.

DSB nuclei (CC0): trained with labels on 400 images, evaluated on 1-shot episodes of the
other 264 (support and query from different images) with Dice and its 95% CI.

Results: ``benchmarks/results/segmentation-cpu.{json,md}`` with the command, commit and
environment (refused from a dirty tree unless ``--allow-dirty``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _harness as H
from benchmarks._seg_finetune import FineTuneSegmenter
from medmeta import algorithms
from medmeta.data import SegmentationDataset
from medmeta.eval.metrics import mean_ci95
from medmeta.eval.segmentation import evaluate_segmentation
from medmeta.eval.volume_protocol import Volume, volume_dice, volumes_from_slices
from medmeta.nn import SegEncoder
from medmeta.train import meta_fit

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")
NUCLEI = Path("/work/shared/data/dsb2018_nuclei.npz")
ORGAN_GROUPS = {"kidneys": ["left_kidney", "right_kidney"], "liver_spleen": ["liver", "spleen"]}

logger = logging.getLogger("benchmarks.segmentation")


def _subset(ds: SegmentationDataset, rows: np.ndarray, drop: list[int]) -> SegmentationDataset:
    """Slices ``rows`` with the labels of ``drop`` set to background."""
    masks = np.where(np.isin(ds.masks[rows], drop), 0, ds.masks[rows])
    return SegmentationDataset(ds.images[rows], masks, ds.class_names, groups=ds.groups[rows])


def _train_sets(
    ds: SegmentationDataset, train_rows: np.ndarray, test_ids: list[int], setting: int
) -> SegmentationDataset:
    """Training slices of a fold for one held-out organ group (see the module docstring)."""
    if setting == 2:
        has_test = np.isin(ds.masks[train_rows], test_ids).reshape(len(train_rows), -1).any(1)
        train_rows = train_rows[~has_test]
    return _subset(ds, train_rows, test_ids)


def _train(
    name: str, train: SegmentationDataset, mode: str, args: argparse.Namespace, seed: int
) -> algorithms.SegmentationLearner:
    torch.manual_seed(seed)
    learner = algorithms.create(name, SegEncoder(in_channels=1), ways=1)
    meta_fit(
        learner, train, ways=1, shots=1, queries=2, steps=args.steps,
        meta_batch=args.meta_batch, seed=seed, progress=False, lr=args.lr,
        self_supervised=(mode == "ssl"),
    )  # fmt: skip
    return learner.eval()


def _patient_dice(
    segment: Any, volumes: dict[Any, Volume], test: list[Any], organ: int
) -> dict[str, float]:
    """Per query patient: mean 3-D Dice over the other test patients as supports."""
    out = {}
    for q in test:
        scores = [volume_dice(segment, volumes[s], volumes[q], organ) for s in test if s != q]
        out[str(q)] = float(np.mean(scores))
    return out


def _all_foreground(volumes: dict[Any, Volume], test: list[Any], organ: int) -> dict[str, float]:
    """Dice of marking the whole organ slice range as the organ."""
    out = {}
    for q in test:
        z = volumes[q].organ_slices(organ)
        truth = volumes[q].labels[z.min() : z.max() + 1] == organ
        out[str(q)] = float(2 * truth.sum() / (truth.numel() + truth.sum()))
    return out


def run_abd_mri(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (method, mode, setting, organ, fold, seed) with per-patient Dice."""
    z = np.load(CHAOS)
    ds = SegmentationDataset(z["images"], z["masks"], list(z["class_names"]),
                             groups=z["source_ids"])  # fmt: skip
    volumes = volumes_from_slices(z["images"], z["masks"], z["source_ids"], z["slice_index"])
    patients = sorted(volumes)
    folds = np.array_split(np.array(patients), args.folds)
    names = list(ds.class_names)
    partial = Path(args.out) / "segmentation-cpu.partial.json"
    rows = _resumed_rows(partial, args)
    done = {(r["fold"], r["seed"]) for r in rows}
    for fold, test in enumerate(folds[: args.max_folds or None]):
        test = test.tolist()
        train_rows = np.nonzero(~np.isin(ds.groups, test))[0]
        for seed in range(args.seeds):
            if (fold, seed) in done:
                logger.info("fold %d seed %d: rows taken from %s", fold, seed, partial)
                continue
            new = _fold(args, ds, volumes, names, train_rows, test, fold, seed)
            rows += [{**r, "commit": args.commit} for r in new]
            partial.parent.mkdir(parents=True, exist_ok=True)
            H.write_json(partial, {"settings": _settings(args), "rows": rows})
    return rows


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the rows depend on (``--max-folds``, ``--seeds`` and the output folder excluded:
    rows are per fold and seed, so more seeds or folds extend a resumed run)."""
    skip = ("out", "allow_dirty", "max_folds", "seeds", "resume", "skip_nuclei",
            "nuclei_episodes", "commit")  # fmt: skip
    return {k: v for k, v in vars(args).items() if k not in skip}


def _resumed_rows(partial: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """With ``--resume``, the finished (fold, seed) rows of an earlier run with the same
    settings (written after each), so a long run can be continued or given more seeds; each
    row keeps the commit that made it (stated in the Markdown)."""
    if not args.resume or not partial.exists():
        return []
    saved = json.loads(partial.read_text())
    if saved["settings"] != json.loads(json.dumps(_settings(args))):
        raise SystemExit(f"{partial} was written with other settings; drop --resume")
    return [r for r in saved["rows"] if r["dataset"] == "abd_mri"]


def _fold(
    args: argparse.Namespace, ds: SegmentationDataset, volumes: dict[Any, Volume],
    names: list[str], train_rows: np.ndarray, test: list[Any], fold: int, seed: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    shared_ssl: dict[str, Any] = {}  # setting-1 ssl models do not depend on the organ group
    for group, organs in ORGAN_GROUPS.items():
        ids = [names.index(o) for o in organs]
        for name, mode, setting in args.runs:
            started = time.perf_counter()
            learner = shared_ssl.get(name) if (mode, setting) == ("ssl", 1) else None
            if learner is None:
                learner = _train(name, _train_sets(ds, train_rows, ids, setting), mode, args, seed)
                if (mode, setting) == ("ssl", 1):
                    shared_ssl[name] = learner
            fit_s = time.perf_counter() - started
            methods = {name: learner.segment}
            if (name, mode) == args.runs[0][:2] and args.finetune_steps:
                ft = FineTuneSegmenter(learner.backbone, args.finetune_steps, seed=seed)
                methods["finetune"] = ft.segment
            for method, segment in methods.items():
                for organ, cid in zip(organs, ids, strict=True):
                    rows.append({
                        "dataset": "abd_mri", "method": method, "mode": mode,
                        "setting": setting, "organ": organ, "fold": fold, "seed": seed,
                        "fit_s": round(fit_s, 1),
                        "patients": _patient_dice(segment, volumes, test, cid),
                    })  # fmt: skip
            logger.info("fold %d %s: %s %s setting %d done", fold, group, name, mode, setting)
        for organ, cid in zip(organs, ids, strict=True):
            rows.append({
                "dataset": "abd_mri", "method": "all_foreground", "mode": "-", "setting": 0,
                "organ": organ, "fold": fold, "seed": seed,
                "patients": _all_foreground(volumes, test, cid),
            })  # fmt: skip
    return rows


def run_nuclei(args: argparse.Namespace) -> list[dict[str, Any]]:
    """1-shot nuclei Dice on held-out images, per algorithm and seed."""
    z = np.load(NUCLEI)
    names, groups = list(z["class_names"]), z["source_ids"]
    gray = z["images"].astype(np.float32).mean(-1, keepdims=True) / 255
    train = SegmentationDataset(gray[:400], z["masks"][:400], names, groups=groups[:400])
    test = SegmentationDataset(gray[400:], z["masks"][400:], names, groups=groups[400:])
    rows = []
    for name in args.algorithms:
        for seed in range(args.seeds):
            learner = _train(name, train, "labels", args, seed)
            r = evaluate_segmentation(learner, test, episodes=args.nuclei_episodes, seed=100)
            rows.append({"dataset": "dsb_nuclei", "method": name, "mode": "labels",
                         "seed": seed, "dice": r.dice, "dice_ci95": r.dice_ci95,
                         "iou": r.iou, "episodes": r.episodes})  # fmt: skip
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean Dice and 95% CI over query patients (all folds and seeds) per method, mode,
    setting and organ, plus the organ mean."""
    table: dict[tuple, list[float]] = {}
    for r in rows:
        if r["dataset"] != "abd_mri":
            continue
        key = (r["method"], r["mode"], r["setting"], r["organ"])
        table.setdefault(key, []).extend(r["patients"].values())
    out = []
    for (method, mode, setting, organ), values in sorted(table.items(), key=str):
        mean, ci = mean_ci95(np.array(values))
        out.append({"method": method, "mode": mode, "setting": setting, "organ": organ,
                    "dice": mean, "ci95": ci, "n": len(values)})  # fmt: skip
    return out


def markdown(report: dict[str, Any]) -> str:
    """The README tables: Dice (%) per organ with 95% CIs, and the nuclei results."""
    organs = ["left_kidney", "right_kidney", "spleen", "liver"]
    cells: dict[tuple, dict[str, str]] = {}
    for s in report["summary"]:
        row = cells.setdefault((s["method"], s["mode"], s["setting"]), {})
        row[s["organ"]] = f"{100 * s['dice']:.1f} ± {100 * s['ci95']:.1f}"
    lines = [*H.provenance_lines(report["environment"]), *_resumed_lines(report), ""]
    header = ["method", "training", "setting", "LK", "RK", "spleen", "liver", "mean"]
    body = []
    for (method, mode, setting), row in sorted(cells.items(), key=str):
        means = [
            s["dice"] for s in report["summary"]
            if (s["method"], s["mode"], s["setting"]) == (method, mode, setting)
        ]  # fmt: skip
        body.append([method, mode, setting or "-", *(row.get(o, "") for o in organs),
                     f"{100 * np.mean(means):.1f}"])  # fmt: skip
    lines.append(H.markdown_table(header, body))
    nuclei = [r for r in report["rows"] if r["dataset"] == "dsb_nuclei"]
    if nuclei:
        lines += ["", H.markdown_table(
            ["method", "seed", "Dice (1-shot)", "IoU", "episodes"],
            [[r["method"], r["seed"], f"{100 * r['dice']:.1f} ± {100 * r['dice_ci95']:.1f}",
              f"{100 * r['iou']:.1f}", r["episodes"]] for r in nuclei],
        )]  # fmt: skip
    return "\n".join(lines) + "\n"


def _resumed_lines(report: dict[str, Any]) -> list[str]:
    """A line naming the commits of rows taken from an earlier run (``--resume``)."""
    made: dict[str, set[tuple[int, int]]] = {}
    for r in report["rows"]:
        if r["dataset"] == "abd_mri":
            made.setdefault(r.get("commit") or "unknown", set()).add((r["fold"], r["seed"]))
    if set(made) <= {report["environment"].get("git_commit")}:
        return []
    parts = [
        f"`{c[:7]}`: seeds {sorted({s for _, s in fs})} of folds {sorted({f for f, _ in fs})}"
        for c, fs in sorted(made.items())
    ]
    return [f"- Abd-MRI rows by commit (resumed runs): {'; '.join(parts)}"]


def _parse(argv: list[str], prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--runs", default="alpnet:ssl:1,alpnet:ssl:2,alpnet:labels:1,panet:ssl:1",
        help="ALGORITHM:MODE:SETTING triples; the first one's encoder seeds the finetune "
        "baseline",
    )  # fmt: skip
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-folds", type=int, default=0, help="run only the first N folds")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune-steps", type=int, default=50)
    p.add_argument("--nuclei-episodes", type=int, default=200)
    p.add_argument("--skip-nuclei", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--allow-dirty", action="store_true")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the (fold, seed) rows of an earlier run with the same settings "
        "(segmentation-cpu.partial.json); more --seeds or folds extend it",
    )
    args = p.parse_args(argv)
    args.runs = [_run_of(r, p) for r in args.runs.split(",") if r]
    args.algorithms = sorted({name for name, _, _ in args.runs})
    return args


def _run_of(text: str, p: argparse.ArgumentParser) -> tuple[str, str, int]:
    """``"alpnet:ssl:1"`` -> ``("alpnet", "ssl", 1)``, checked."""
    parts = text.split(":")
    known = algorithms.available("segmentation")
    if len(parts) != 3 or parts[0] not in known or parts[1] not in ("ssl", "labels") or (
        parts[2] not in ("1", "2")
    ):  # fmt: skip
        p.error(
            f"--runs: expected ALGORITHM:ssl|labels:1|2 with ALGORITHM in {known}, got {text!r}"
        )
    return parts[0], parts[1], int(parts[2])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or "python -m benchmarks.segmentation"
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    refusal = H.dirty_refusal(out, args.allow_dirty)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    if not CHAOS.exists():
        print(f"{CHAOS} is missing: the Abd-MRI protocol needs it", file=sys.stderr)
        return 2
    command = [*H.module_command(prog, "benchmarks.segmentation"), *argv]
    torch.set_num_threads(args.threads)
    env = H.environment(torch.device("cpu"), args.threads, command, {}, args.allow_dirty)
    args.commit = env.get("git_commit")
    started = time.perf_counter()
    rows = run_abd_mri(args)
    if not args.skip_nuclei and NUCLEI.exists():
        rows += run_nuclei(args)
    env["wall_s"] = round(time.perf_counter() - started, 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "allow_dirty", "commit")}
    report = {"environment": env, "settings": settings, "rows": rows,
              "summary": summarize(rows)}  # fmt: skip
    H.write_results(out, "segmentation-cpu", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
