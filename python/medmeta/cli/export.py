"""``medmeta export``: write a trained or adapted model as ONNX for the edge runtime."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.cli import _data
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta export --model runs/adapted --out model.onnx               # an adapted folder
  medmeta export --model runs/protonet --support new_cases/ --shots 5 --out model.onnx --int8
  medmeta export --model runs/protonet --support pbc_blood --classes 5-7 --shots 5 \\
                 --form both --out model.onnx     # + model.embed.onnx / model.head.onnx
  medmeta export --model runs/cells --out cells.onnx   # segmenter: cells.encoder/head.onnx
  medmeta export --model runs/t4u_stmw --out t4u.onnx  # adapted regressor: one file

Forms: `classifier` (inputs -> calibrated class probabilities, the support set baked in),
`enrolment` (the embedding network plus a prototype head, so a device can enrol new classes
without PyTorch), or `both`. --int8 adds a statically quantized copy (QDQ, per-channel),
calibrated on the support images, with a parity report against the float model.

A regression model (`medmeta train --task regression`) exports once adapted (`medmeta
adapt`): one file whose graph computes, per input, the ensemble's prediction and its
interval (outputs prediction, lower, upper, member_std); run it with
`medmeta predict --model reg.onnx --inputs rows.csv --out preds.csv`.

A segmentation model exports as <stem>.encoder.onnx + <stem>.head.onnx (the support set's
prototypes inside, classes enrolable on the device); run them with
`medmeta predict --model <stem>.encoder.onnx --inputs images/ --out masks/`.
"""


def build_parser(prog: str) -> object:
    p = make_parser(
        prog, "Export a model to ONNX (opset 18, dynamic batch, metadata inside).", EPILOG
    )
    p.add_argument(
        "--model",
        required=True,
        help="an adapted folder (`medmeta adapt`) or a trained one with --support",
    )
    p.add_argument("--support", help="labelled task data to adapt to: " + _data.DATA_HELP)
    p.add_argument("--classes", help="classes of --support; " + _data.CLASSES_HELP)
    p.add_argument(
        "--shots", type=int_at_least(1), help="support examples per class (default: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of support examples")
    p.add_argument("--form", choices=("classifier", "enrolment", "both"), default="classifier")
    p.add_argument("--int8", action="store_true", help="also write an int8 quantized model")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    p.add_argument("--class-names", help="segmentation: names of --support's mask labels")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="segmentation: the ONNX exporter (default auto: dynamo, else "
                   "TorchScript; torchscript is much faster)")  # fmt: skip
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    return p


def main(argv: Sequence[str], prog: str = "medmeta export") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    from medmeta.cli import _workflow
    from medmeta.cli._model import load_model
    from medmeta.export import to_onnx

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out must be an .onnx file, got {args.out}")
    model = load_model(args.model)
    if model.card.get("task_type") == "segmentation":
        return _export_segmentation(args, model)
    if model.card.get("task_type") == "regression":
        return _export_regression(args, model)
    if args.class_names:
        raise UsageError("--class-names applies to segmentation models")
    held_out = None
    if args.support:
        task = _workflow.task_data(model, args.support, args.classes)
        outcome = _workflow.adapt_model(model, task, shots=args.shots, seed=args.seed, out=None)
        adapted, support_x, support_y, names, accuracy = (
            outcome.adapted, outcome.support_x, outcome.support_y, outcome.class_names,
            outcome.accuracy,
        )  # fmt: skip
        if len(outcome.query_y):
            held_out = (outcome.query_x.numpy(), outcome.query_y.numpy())
    elif model.is_adapted:
        support_x, support_y, names = model.support()
        adapted = _workflow.readapt(model, support_x, support_y, names)
        accuracy = model.card.get("task", {}).get("held_out_accuracy")
    else:
        raise UsageError(f"{args.model} is not adapted to a task: give --support (labelled "
                         "examples of the classes to recognise) or run `medmeta adapt` first")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    result = to_onnx(
        adapted, out, support_x=support_x, support_y=support_y,
        preprocessing=model.preprocessing, class_names=names,
        temperature=model.card.get("temperature"),
        temperature_source=model.card.get("calibration"), form=args.form, int8=args.int8,
        opset=args.opset,
    )  # fmt: skip
    files = {k: str(v) for k, v in (("classifier", result.classifier), ("embedder", result.embedder),
                                    ("head", result.head), ("int8", result.int8)) if v is not None}  # fmt: skip
    info = {"files": files, "exporter": result.exporter, "classes": names,
            "held_out_accuracy": accuracy}  # fmt: skip
    if result.parity:
        info["int8_parity"] = _held_out_parity(result, held_out)
    if args.json:
        print(json.dumps(info, indent=2, default=float))
    else:
        for role, path in files.items():
            print(f"{role:<10} {path} ({Path(path).stat().st_size / 2**20:.2f} MB)")
        print(f"classes: {', '.join(names)}; exporter: {result.exporter}")
        if accuracy is not None:
            print(f"adapted model's accuracy on the task's other examples: {100 * accuracy:.1f}%")
        if result.parity:
            print(describe_parity(info["int8_parity"]))
    return 0


def _export_segmentation(args: Any, model: Any) -> int:
    from medmeta.cli._seg_export import export_segmentation

    info = export_segmentation(args, model)
    if args.json:
        print(json.dumps(info, indent=2, default=float))
        return 0
    for role, path in info["files"].items():
        print(f"{role:<10} {path} ({Path(path).stat().st_size / 2**20:.2f} MB)")
    checks = ", ".join(f"{k} {v:.2g}" for k, v in info["checks"].items())
    print(f"classes: {', '.join(info['classes'])}; exporter: {info['exporter']}; "
          f"checks against PyTorch: {checks}")  # fmt: skip
    print(f"run it without PyTorch: medmeta predict --model {info['files']['encoder']} "
          "--inputs IMAGES --out MASKS")  # fmt: skip
    return 0


def _export_regression(args: Any, model: Any) -> int:
    """An adapted regression folder -> one ONNX regressor (:func:`medmeta.export.
    regressor_to_onnx`) with the ensemble :func:`medmeta.cli._reg_workflow.load_ensemble`
    rebuilds."""
    adapt = (f"`medmeta adapt --model {args.model} --support ROWS --out ADAPTED` (it picks the "
             "support rows and builds the interval's ensemble), then export ADAPTED")  # fmt: skip
    if args.support or not model.is_adapted:
        what = "--support: a regression model adapts" if args.support else (
            f"{args.model} is a trained regression model, not adapted to a task")  # fmt: skip
        raise UsageError(f"{what}; run {adapt}")
    given = [flag for flag, value in (
        ("--classes", args.classes), ("--shots", args.shots), ("--int8", args.int8),
        ("--class-names", args.class_names), ("--form", args.form != "classifier"),
        ("--exporter", args.exporter != "auto"),
    ) if value]  # fmt: skip
    if given:
        raise UsageError(f"{', '.join(given)}: not for a regression model (it exports as one "
                         "float32 file, with the support set of `medmeta adapt`)")  # fmt: skip
    from medmeta.cli._reg_workflow import load_ensemble
    from medmeta.export import regressor_to_onnx

    ensemble = load_ensemble(model)
    support_x, support_y, _ = model.support()
    task = model.card.get("task") or {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = regressor_to_onnx(
        ensemble, out, preprocessing=model.preprocessing, target=model.card["target"],
        support_x=support_x, support_y=support_y, algorithm=model.card.get("algorithm"),
        held_out=task.get("held_out"), training=_training_summary(model.card), opset=args.opset,
    )  # fmt: skip
    meta = result.metadata
    info = {"files": {"regressor": str(out)}, "exporter": result.exporter,
            "target": meta["target"]["name"], "interval": meta["interval"],
            "max_abs_diff": result.max_abs_diff, "relative_diff": result.relative_diff,
            "held_out": meta["held_out"]}  # fmt: skip
    if args.json:
        print(json.dumps(info, indent=2, default=float))
        return 0
    iv = meta["interval"]
    print(f"regressor  {out} ({out.stat().st_size / 2**20:.2f} MB)")
    print(f"target: {info['target']}; {iv['members']} members, {100 * iv['level']:g}% interval; "
          f"exporter: {result.exporter}; |ONNX - PyTorch| <= {result.max_abs_diff:.2g}")  # fmt: skip
    held = meta["held_out"] or {}
    if held.get("mse") is not None:
        print("adapted model on the task's other rows: " + ", ".join(
            f"{k} {held[k]:.4g}" for k in ("mse", "r2", "coverage") if held.get(k) is not None))  # fmt: skip
    print(f"run it without PyTorch: medmeta predict --model {out} --inputs ROWS.csv "
          "--out predictions.csv")  # fmt: skip
    return 0


def _training_summary(card: dict[str, Any]) -> dict[str, Any] | None:
    """The scalar facts of the card's training block (algorithm and episodes added)."""
    training = card.get("training")
    if not isinstance(training, dict):
        return None
    episodes = card.get("episodes") or {}
    return {"algorithm": card.get("algorithm"), "shots": episodes.get("shots"),
            "queries": episodes.get("queries"), **training}  # fmt: skip


def _held_out_parity(result: Any, held_out: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """The int8 parity on the task's held-out examples (never used to calibrate the int8
    model) when there are any, else on the support set it was calibrated on (said so)."""
    from medmeta.export import quantize

    if held_out is None:
        return {**result.parity, "on": "the support set (calibration data; no held-out examples)"}
    source = result.classifier or result.embedder
    x, y = held_out
    labels = y if source == result.classifier else None
    report = quantize.parity_report(source, result.int8, x, labels)
    report["on"] = "held-out examples of the task (not used to calibrate int8)"
    return report


def describe_parity(p: dict[str, Any]) -> str:
    """The int8 parity report as two readable lines."""
    line = (
        f"int8 parity on {p['examples']} {p['on']}: top-1 agreement "
        f"{100 * p['top1_agreement']:.1f}% ({p['disagreements']} differ), probabilities differ "
        f"by {p['mean_abs_prob_diff']:.3g} on average, {p['max_abs_prob_diff']:.3g} at most"
    )
    if "float_accuracy" in p:
        ci = p.get("accuracy_change_ci95")
        change = f"{100 * p['accuracy_change']:+.1f}" + (
            f" ± {100 * ci:.1f}" if ci is not None else ""
        )
        line += (
            f"\n  accuracy {100 * p['float_accuracy']:.1f}% float -> {100 * p['int8_accuracy']:.1f}% "
            f"int8 (change {change} points, 95% CI)"
        )
    return (
        line
        + f"; int8 file {p['int8_bytes'] / 2**20:.2f} MB (float {p['float_bytes'] / 2**20:.2f} MB)"
    )
