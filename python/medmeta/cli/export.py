"""``medmeta export``: write a trained or adapted model as ONNX for the edge runtime."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medmeta.cli import _data
from medmeta.edge.cli.config import int_at_least, make_parser, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta export --model runs/adapted --out model.onnx               # an adapted folder
  medmeta export --model runs/protonet --support new_cases/ --shots 5 --out model.onnx --int8
  medmeta export --model runs/protonet --support pbc_blood --classes 5-7 --shots 5 \\
                 --form both --out model.onnx     # + model.embed.onnx / model.head.onnx

Forms: `classifier` (inputs -> calibrated class probabilities, the support set baked in),
`enrolment` (the embedding network plus a prototype head, so a device can enrol new classes
without PyTorch), or `both`. --int8 adds a statically quantized copy (QDQ, per-channel),
calibrated on the support images, with a parity report against the float model.
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
    if args.support:
        task = _workflow.task_data(model, args.support, args.classes)
        outcome = _workflow.adapt_model(model, task, shots=args.shots, seed=args.seed, out=None)
        adapted, support_x, support_y, names, accuracy = (
            outcome.adapted, outcome.support_x, outcome.support_y, outcome.class_names,
            outcome.accuracy,
        )  # fmt: skip
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
        info["int8_parity"] = result.parity
    if args.json:
        print(json.dumps(info, indent=2, default=float))
    else:
        for role, path in files.items():
            print(f"{role:<10} {path} ({Path(path).stat().st_size / 2**20:.2f} MB)")
        print(f"classes: {', '.join(names)}; exporter: {result.exporter}")
        if accuracy is not None:
            print(f"adapted model's accuracy on the task's other examples: {100 * accuracy:.1f}%")
        if result.parity:
            print("int8 parity: " + ", ".join(f"{k} {v:.4g}" for k, v in result.parity.items()
                                              if isinstance(v, (int, float))))  # fmt: skip
    return 0
