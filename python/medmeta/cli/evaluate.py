"""``medmeta eval``: evaluate a model folder on seeded few-shot episodes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmeta.cli import _data, _regression, _setup
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta eval --model runs/protonet --data pbc_blood --classes 5-7 --episodes 600
  medmeta eval --model runs/protonet --data pbc_blood --classes 5-7 --shots 1 --json > eval.json
  medmeta eval --model runs/protonet --data scans/ --plots runs/protonet/eval
  medmeta eval --model runs/nuclei --data dsb_nuclei --episodes 200 --report runs/nuclei/report
  medmeta eval --model runs/t4u --data thyroid --classes SVHD --drop-missing-targets \\
               --shots 10 --episodes 200         # a regression model: MSE, R², interval, ridge

Reports the mean accuracy with its 95% confidence interval over the episodes, balanced
accuracy, macro-F1, one-vs-rest AUROC, per-class sensitivity and specificity, and
calibration (ECE, NLL, Brier), with the temperature fitted at training time unless
--temperature says otherwise.

A segmentation model (`medmeta train --task segmentation`) reports the mean foreground Dice
and IoU with their 95% CIs over seeded N-way K-shot episodes (default 1-way 1-shot, 2
queries, 100 episodes), per class; --report DIR writes an HTML page with query images and
their predicted and true outlines, per-class Dice with CIs and a failure gallery.

A regression model (`medmeta train --task regression`) is evaluated on seeded episodes of
the --classes groups (--shots K support rows, default the model's; --queries Q; 600
episodes): MSE and R² with 95% CIs of the mean of a bootstrap ensemble (--members, --level:
default the model's) adapted to each support set, its interval's coverage and width, and
ridge regression (penalty by leave-one-out) and the support mean on the same episodes with
the paired MSE difference. The target and group column come from the model.
"""


def build_parser(prog: str) -> object:
    p = make_parser(prog, "Evaluate a trained model on few-shot episodes of novel classes.", EPILOG)
    p.add_argument("--model", required=True, help="model folder from `medmeta train` or `adapt`")
    p.add_argument("--data", required=True, help=_data.DATA_HELP)
    p.add_argument("--classes", help="test classes; " + _data.CLASSES_HELP)
    p.add_argument("--ways", type=int_at_least(1), help="N (default: all test classes, at "
                   "most the model's; segmentation: 1)")  # fmt: skip
    p.add_argument("--shots", type=int_at_least(1),
                   help="K support examples per class (default 5; segmentation 1; regression: "
                   "support rows, default the model's)")  # fmt: skip
    p.add_argument("--queries", type=int_at_least(1),
                   help="Q queries per class (default 15; segmentation: per episode, 2; "
                   "regression: query rows, default the model's)")  # fmt: skip
    p.add_argument("--episodes", type=int_at_least(1),
                   help="test episodes (default 600; segmentation 100)")  # fmt: skip
    p.add_argument("--min-foreground", type=int_at_least(1), default=32, help="segmentation: "
                   "pixels of a class an image needs to serve in an episode (default 32)")  # fmt: skip
    p.add_argument("--class-names", help="segmentation: names of the mask labels 1..N "
                   "(comma-separated or a text file), for folders of images and masks")  # fmt: skip
    p.add_argument("--report", metavar="DIR", help="segmentation: write report.html (query "
                   "images with outlines, per-class Dice, failure gallery) to DIR")  # fmt: skip
    _regression.add_model_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seeds the episodes (default 0)")
    p.add_argument(
        "--temperature",
        default="model",
        help="'model' (the one fitted at training, default), 'none', or a number",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads for torch")
    p.add_argument("--plots", metavar="DIR", help="write confusion-matrix, per-class and "
                   "reliability plots to DIR")  # fmt: skip
    p.add_argument("--nproc", type=int_at_least(1), default=1,
                   help="evaluate with N processes (torchrun), the episodes sharded: the same "
                   "result as one process, see docs/distributed.md (classification and "
                   "segmentation models)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _temperature(flag: str, card_value: float | None) -> float | None:
    if flag == "model":
        return card_value
    if flag == "none":
        return None
    try:
        value = float(flag)
    except ValueError:
        raise UsageError(
            f"--temperature must be 'model', 'none' or a number, got {flag!r}"
        ) from None
    if not value > 0:
        raise UsageError(f"--temperature must be > 0, got {flag}")
    return value


def main(argv: Sequence[str], prog: str = "medmeta eval") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    from medmeta.cli import _launch, _workflow
    from medmeta.cli._seg_predict import folder_task

    if args.nproc > 1 and folder_task(args.model) == "regression":
        raise UsageError("--nproc: a regression model is evaluated in one process (its "
                         "bootstrap intervals draw from one generator across the episodes); "
                         f"got --nproc {args.nproc}")  # fmt: skip
    if _launch.should_relaunch(args.nproc):
        return _launch.relaunch_under_torchrun(["eval", *argv], args.nproc)
    from medmeta.cli._model import load_model

    _setup.set_threads(args.threads)
    device = _setup.resolve_device(args.device)
    if args.ways == 1 and folder_task(args.model) not in ("segmentation", "regression"):
        raise UsageError("--ways: must be an integer >= 2 for a classifier, got 1")
    model = load_model(args.model, device)
    if model.card.get("task_type") == "regression":
        return _main_regression(args, model, device)
    _regression.reject_flags(args, "regression models (`medmeta train --task regression`)")
    if model.card.get("task_type") == "segmentation":
        return _main_segmentation(args, model, device, argv)
    for flag, value in (("--report", args.report), ("--class-names", args.class_names)):
        if value:
            raise UsageError(f"{flag} applies to segmentation models (the classification "
                             "report is written by `medmeta demo`)")  # fmt: skip
    test_set = _workflow.task_data(model, args.data, args.classes)
    result = _workflow.evaluate_model(
        model, test_set, ways=args.ways, shots=args.shots or 5, queries=args.queries or 15,
        episodes=args.episodes or 600, seed=args.seed,
        temperature=_temperature(args.temperature, model.card.get("temperature")),
        device=device, progress=not (args.quiet or args.json),
    )  # fmt: skip
    if args.plots:
        write_plots(result, Path(args.plots))
    if args.json:
        print(json.dumps({"model": str(model.folder), **result.to_dict()}, indent=2))
    else:
        print(result.summary())
        for name, row in result.per_class.items():
            sens, spec = row["sensitivity"], row["specificity"]
            print(
                f"  {name:<28} sensitivity {_pct(sens)}  specificity {_pct(spec)}  (n={row['support']})"
            )
    return 0


def _main_regression(args: Any, model: Any, device: str) -> int:
    """MSE, R², interval coverage and the ridge baseline of a regression model."""
    from medmeta.cli import _reg_eval

    for flag, value in (("--ways", args.ways), ("--plots", args.plots), ("--report", args.report),
                        ("--class-names", args.class_names)):  # fmt: skip
        if value:
            raise UsageError(f"{flag} does not apply to a regression model")
    if args.temperature != "model":
        raise UsageError("--temperature does not apply to a regression model")
    card = model.card
    shots = args.shots or card["episodes"]["shots"]
    queries = args.queries or card["episodes"]["queries"]
    data = _regression.model_data(card, args.data, target=args.target, group_by=args.group_by,
                                  drop_missing=args.drop_missing_targets)  # fmt: skip
    tasks = _reg_eval.task_set(model, data, args.classes, shots + queries)
    result = _reg_eval.evaluate_regressor(
        model, tasks, shots=shots, queries=queries, episodes=args.episodes or 600,
        seed=args.seed, members=args.members or card["interval"]["members"],
        level=args.level or card["interval"]["level"], device=device,
        progress=not (args.quiet or args.json),
    )  # fmt: skip
    if args.json:
        print(json.dumps({"model": str(model.folder), **result.to_dict()}, indent=2))
    else:
        print(result.summary())
    return 0


def _main_segmentation(args: Any, model: Any, device: str, argv: Sequence[str]) -> int:
    """Dice and IoU of a segmentation model (and its report with --report)."""
    from medmeta.cli import _seg_eval

    if args.plots:
        raise UsageError(
            "--plots draws classifier plots; use --report DIR for a segmentation model"
        )
    dataset, classes = _seg_eval.segmentation_data(model, args.data, args.classes, args.class_names)
    result = _seg_eval.evaluate_segmenter(
        model, dataset, classes, ways=args.ways or 1, shots=args.shots or 1,
        queries=args.queries or 2, episodes=args.episodes or 100, seed=args.seed,
        min_foreground=args.min_foreground, device=device, progress=not (args.quiet or args.json),
    )  # fmt: skip
    info = {"model": str(model.folder), **_seg_eval.result_dict(result, args.min_foreground)}
    if args.report:
        from medmeta.cli._seg_report import write_report

        info["report"] = str(write_report(
            args.report, model, dataset, classes, result, data=args.data,
            min_foreground=args.min_foreground, device=device,
            command=" ".join(["medmeta eval", *argv]),
        ))  # fmt: skip
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(result.summary())
    for name, row in result.per_class.items():
        print(f"  {name:<28} Dice {100 * row['dice']:5.1f} ± {100 * row['dice_ci95']:.1f}%  "
              f"IoU {100 * row['iou']:5.1f} ± {100 * row['iou_ci95']:.1f}%  "
              f"({row['episodes']} episodes)")  # fmt: skip
    if args.report:
        print(f"report: {info['report']}")
    return 0


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def write_plots(result: object, folder: Path) -> list[Path]:
    """Confusion matrix, per-class sensitivity/specificity and reliability diagram PNGs."""
    from medmeta.eval import plots

    folder.mkdir(parents=True, exist_ok=True)
    return [
        plots.plot_confusion_matrix(result, folder / "confusion_matrix.png"),  # type: ignore[arg-type]
        plots.plot_per_class(result, folder / "per_class.png"),  # type: ignore[arg-type]
        plots.plot_reliability_diagram(result, folder / "reliability.png"),  # type: ignore[arg-type]
    ]
