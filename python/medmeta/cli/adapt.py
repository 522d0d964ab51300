"""``medmeta adapt``: adapt a trained model to a new labelled support set."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from medmeta.cli import _data, _regression, _setup
from medmeta.edge.cli.config import int_at_least, make_parser, output_folder, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta adapt --model runs/protonet --support pbc_blood --classes 5-7 --shots 5 --out runs/adapted
  medmeta adapt --model runs/maml --support new_site/ --out runs/new_site   # every image is support
  medmeta adapt --model runs/nuclei --support my_cells/ --class-names nucleus --out runs/cells
  medmeta adapt --model runs/organs --support scans/ --classes liver --shots 3 --out runs/liver
  medmeta adapt --model runs/t4u --support thyroid --classes STMW --shots 10 \\
                --drop-missing-targets --out runs/t4u_stmw     # regression: one clinic

With --shots K, K seeded examples of each class form the support set and the remaining
examples measure the adapted classifier's accuracy. The output folder stands alone:
`medmeta export --model runs/adapted --out model.onnx` ships it.

A segmentation model adapts to images with masks: a folder ROOT/images/* with ROOT/masks/*
(or <name>_mask.png beside <name>.png; PNG masks hold 0 = background and 1..N, or 0/255 for
one class), NIfTI volumes with label maps, an .npz or an embedded segmentation set. Class
names come from --class-names (names or a text file, one per line), a classes.txt in the
folder, or the data itself; --classes picks some of them (they become labels 1..N). With
--shots K, K images per class form the support and the others measure the Dice.
"""


def build_parser(prog: str) -> object:
    p = make_parser(
        prog, "Adapt a trained model to a new task from a few labelled examples.", EPILOG
    )
    p.add_argument("--model", required=True, help="model folder from `medmeta train`")
    p.add_argument("--support", required=True, help="the labelled task data: " + _data.DATA_HELP)
    p.add_argument("--classes", help="the task's classes; " + _data.CLASSES_HELP)
    p.add_argument(
        "--shots",
        type=int_at_least(1),
        help="support examples per class (default: all examples); regression: support "
        "rows of the task",
    )
    p.add_argument("--class-names", help="segmentation: names of the mask labels 1..N, "
                   "comma-separated or a text file (default: the folder's classes.txt)")  # fmt: skip
    _regression.add_model_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of support examples")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", required=True, help="adapted model folder to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: Sequence[str], prog: str = "medmeta adapt") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    output_folder(args.out)
    from medmeta.cli import _workflow
    from medmeta.cli._model import load_model

    device = _setup.resolve_device(args.device)
    model = load_model(args.model, device)
    if model.card.get("task_type") == "regression":
        return _adapt_regression(args, model, device)
    _regression.reject_flags(args, "regression models (`medmeta train --task regression`)")
    if model.card.get("task_type") == "segmentation":
        return _adapt_segmentation(args, model, device)
    if args.class_names:
        raise UsageError("--class-names applies to segmentation models")
    task = _workflow.task_data(model, args.support, args.classes, announce=True)
    outcome = _workflow.adapt_model(model, task, shots=args.shots, seed=args.seed,
                                    out=args.out, device=device)  # fmt: skip
    info = {"model": str(outcome.folder), **outcome.extra}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"adapted {model.card['algorithm']} to {len(outcome.class_names)} classes "
              f"({', '.join(outcome.class_names)}), {info['shots']} shots each -> {outcome.folder}")  # fmt: skip
        if outcome.accuracy is not None:
            print(f"  accuracy on the {info['held_out_examples']} other examples: "
                  f"{100 * outcome.accuracy:.1f}%")  # fmt: skip
    return 0


def _adapt_regression(args: Any, model: Any, device: str) -> int:
    """Adapt a regression model's bootstrap ensemble to one task and save it."""
    from medmeta.cli._reg_workflow import adapt_regressor

    if args.class_names:
        raise UsageError("--class-names applies to segmentation models")
    data = _regression.model_data(model.card, args.support, target=args.target,
                                  group_by=args.group_by, drop_missing=args.drop_missing_targets,
                                  single_task=True)  # fmt: skip
    ids = _regression.select_groups(data, args.classes, "--classes")
    data = _regression.with_groups(data, ids)
    outcome = adapt_regressor(
        model, data, shots=args.shots, seed=args.seed,
        members=args.members or model.card["interval"]["members"],
        level=args.level or model.card["interval"]["level"], out=args.out, device=device,
    )  # fmt: skip
    info = {"model": str(outcome.folder), "target": model.card["target"]["name"], **outcome.extra}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"adapted {model.card['algorithm']} to {info['group']} ({info['target']}): "
          f"{info['shots']} support rows, {info['members']}-member ensemble, "
          f"{100 * info['level']:.0f}% intervals (noise s.d. {info['noise_std']:.4g}) "
          f"-> {outcome.folder}")  # fmt: skip
    held = outcome.held_out
    if held is not None:
        r2 = "n/a" if held["r2"] is None else f"{held['r2']:.3f}"
        print(f"  on the {held['rows']} other rows: MSE {held['mse']:.4g} (the support mean's "
              f"{held['support_mean_mse']:.4g}), R² {r2}, interval coverage "
              f"{held['coverage']:.3f} (mean width {held['width']:.4g})")  # fmt: skip
    return 0


def _adapt_segmentation(args: Any, model: Any, device: str) -> int:
    from medmeta.cli._seg_adapt import adapt_segmenter, load_support
    from medmeta.cli._segdata import data_line

    data = load_support(args.support, args.classes, args.class_names)
    print(data_line(args.support, data, model.preprocessing), file=sys.stderr)
    outcome = adapt_segmenter(model, data, shots=args.shots, seed=args.seed, out=args.out,
                              device=device)  # fmt: skip
    info = {"model": str(outcome.folder), **outcome.extra, "held_out": outcome.held_out}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    names = outcome.class_names
    print(f"adapted {model.card['algorithm']} to {len(names)} class(es) ({', '.join(names)}) "
          f"from {len(outcome.support_ids)} support image(s) -> {outcome.folder}")  # fmt: skip
    if outcome.held_out is not None:
        print(f"  Dice on the {outcome.held_out['images']} other images: "
              f"{100 * outcome.held_out['dice']:.1f}% (IoU {100 * outcome.held_out['iou']:.1f}%)")  # fmt: skip
    return 0
