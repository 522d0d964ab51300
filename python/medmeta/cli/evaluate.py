"""``medmeta eval``: evaluate a model folder on seeded few-shot episodes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medmeta.cli import _data, _setup
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta eval --model runs/protonet --data pbc_blood --classes 5-7 --episodes 600
  medmeta eval --model runs/protonet --data pbc_blood --classes 5-7 --shots 1 --json > eval.json
  medmeta eval --model runs/protonet --data scans/ --plots runs/protonet/eval

Reports the mean accuracy with its 95% confidence interval over the episodes, balanced
accuracy, macro-F1, one-vs-rest AUROC, per-class sensitivity and specificity, and
calibration (ECE, NLL, Brier), with the temperature fitted at training time unless
--temperature says otherwise.
"""


def build_parser(prog: str) -> object:
    p = make_parser(prog, "Evaluate a trained model on few-shot episodes of novel classes.", EPILOG)
    p.add_argument("--model", required=True, help="model folder from `medmeta train` or `adapt`")
    p.add_argument("--data", required=True, help=_data.DATA_HELP)
    p.add_argument("--classes", help="test classes; " + _data.CLASSES_HELP)
    p.add_argument(
        "--ways", type=int_at_least(2), help="N (default: all test classes, at most the model's)"
    )
    p.add_argument(
        "--shots", type=int_at_least(1), default=5, help="K support examples per class (default 5)"
    )
    p.add_argument(
        "--queries", type=int_at_least(1), default=15, help="Q queries per class (default 15)"
    )
    p.add_argument(
        "--episodes", type=int_at_least(1), default=600, help="test episodes (default 600)"
    )
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
    from medmeta.cli import _workflow
    from medmeta.cli._model import load_model

    _setup.set_threads(args.threads)
    device = _setup.resolve_device(args.device)
    model = load_model(args.model, device)
    test_set = _workflow.task_data(model, args.data, args.classes)
    result = _workflow.evaluate_model(
        model, test_set, ways=args.ways, shots=args.shots, queries=args.queries,
        episodes=args.episodes, seed=args.seed,
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
