"""``medmeta train``: meta-train a learner and write a model folder."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from medmeta.cli import _data, _regression, _setup
from medmeta.edge.cli.config import int_at_least, make_parser, output_folder, parse_args
from medmeta.edge.cli.errors import UsageError

EPILOG = """examples:
  medmeta train --data pbc_blood --classes 0-4 --val-classes 5 --algorithm protonet \\
                --ways 3 --shots 5 --queries 15 --steps 400 --out runs/protonet
  medmeta train --data my_scans.npz --algorithm maml --ways 2 --shots 5 --steps 200 \\
                --param inner_steps=3 --out runs/maml
  medmeta train --config run.toml        # keys mirror the flags: ways = 3, meta-batch = 4, ...
  medmeta train --task segmentation --data dsb_nuclei --algorithm alpnet --shots 1 \\
                --steps 300 --image-size 64 --out runs/nuclei      # 1-way 1-shot, Dice
  medmeta train --algorithm panet --data scans/ --classes liver,spleen --val-classes \\
                right_kidney --out runs/organs    # NIfTI volumes + label maps
  medmeta train --task segmentation --data unlabelled_scans/ --out runs/ssl
                                         # no masks: self-supervised on superpixels
  medmeta train --task regression --data thyroid --target T4U --group-by referral_source \\
                --classes other,SVI,SVHC --val-classes STMW --drop-missing-targets \\
                --shots 10 --queries 10 --steps 300 --out runs/t4u    # a lab value per clinic
  medmeta train --task regression --data pbmc68k_celltypes --target CD74 --classes 0,3,4,9 \\
                --val-classes 5,6 --out runs/cd74    # a gene's expression per cell type

The folder gets model.json (the model card), best.pt/last.pt (checkpoints, written
atomically; re-running the same command resumes), log.csv, log.json and learning_curves.png.

Segmentation (--task segmentation, or --algorithm alpnet / panet): episodes of N organs
(--ways, default 1) with K support images each (--shots, default 1) and Q query images
(--queries, default 2); the score is the mean foreground Dice. Data: an embedded
segmentation set, an .npz with images/masks/class_names, a folder ROOT/images/* with
ROOT/masks/* (PNG masks 0..N or 0/255), or NIfTI volumes with label maps. Validation:
--val-data, else the --val-classes of the data (held-out organs), else 20% of the images
(by patient / source) held out. --self-supervised trains on superpixels (SSL-ALPNet), the
default for data without masks.

Regression (--task regression; maml, fomaml, metasgd or reptile, default maml): each task
predicts a number from K support rows (--shots, default 10; --queries, default 10; one
target, no --ways). A table: --target COLUMN (numeric) and --group-by COLUMN, whose values
(clinics, sites) are the tasks; --classes / --val-classes pick them (default: every group
but the validation ones; groups with fewer than shots + queries rows are skipped with a
warning). The target, the group column and the class column are not inputs; the other
columns are encoded on the training groups' rows (0/1 flags one-hot). Vectors (.npz,
.h5ad, pbmc68k_celltypes): --target FEATURE (a gene) is predicted from the other features,
standardised on the training rows; the classes are the tasks. Missing targets are refused
unless --drop-missing-targets. Without --val-classes nothing is validated and the last step
is kept. The network is an MLP without batch norm (--width, default 64,64); --members and
--level set the bootstrap interval that `medmeta eval` and `medmeta adapt` report.
"""


def build_parser(prog: str) -> object:
    p = make_parser(prog, "Meta-train a few-shot learner on episodes of a dataset.", EPILOG)
    p.add_argument("--data", required=True, help=_data.DATA_HELP)
    p.add_argument("--classes", help="meta-training classes; " + _data.CLASSES_HELP)
    p.add_argument(
        "--val-classes",
        help="held-out classes for validation, best-checkpoint selection and temperature "
        "scaling (disjoint from --classes)",
    )
    p.add_argument(
        "--task",
        choices=_setup.TASKS,
        help="classification (default), segmentation (default for alpnet, panet) or regression",
    )
    p.add_argument("--target", help=_regression.TARGET_HELP)
    p.add_argument("--group-by", metavar="COLUMN", help=_regression.GROUP_HELP)
    p.add_argument("--drop-missing-targets", action="store_true",
                   help="regression: leave out rows whose target is missing (default: refuse them)")  # fmt: skip
    p.add_argument("--members", type=int_at_least(2),
                   help="regression: bootstrap ensemble size of the interval (default 10)")  # fmt: skip
    p.add_argument("--level", type=_regression.level_arg,
                   help="regression: the interval's nominal coverage (default 0.9)")  # fmt: skip
    p.add_argument(
        "--algorithm", help="a method (default protonet; alpnet for --task segmentation)"
    )
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a hyper-parameter of the method, e.g. inner_steps=3 (repeatable)")  # fmt: skip
    p.add_argument(
        "--ways",
        type=int_at_least(1),
        help="N, classes per episode (default 5; segmentation: organs, default 1; regression: 1)",
    )
    p.add_argument(
        "--shots",
        type=int_at_least(1),
        help="K, support examples per class (default 5; segmentation 1; regression: rows, 10)",
    )
    p.add_argument(
        "--queries",
        type=int_at_least(1),
        help="Q, queries per class (default 15; segmentation: per episode, 2; regression 10)",
    )
    p.add_argument("--steps", type=int_at_least(1), default=400, help="meta-updates (default 400)")
    p.add_argument(
        "--meta-batch", type=int_at_least(1), default=4, help="episodes per meta-update (default 4)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--backbone", choices=_setup.BACKBONES,
                   help="default conv4 for images, conv1d for signals, mlp for vectors and "
                   "tables, segencoder for segmentation")  # fmt: skip
    p.add_argument("--width", help="backbone width(s), e.g. 64 (conv4), 256,128 (mlp) or 16 "
                   "(segencoder: stages 16,32,64,64)")  # fmt: skip
    p.add_argument("--image-size", type=int_at_least(1), help="resize images to this square size")
    p.add_argument("--window", help="intensity window for CT/DICOM/NIfTI values: a preset "
                   "(soft_tissue, lung, bone, brain, liver, ...) or CENTER,WIDTH; part of the "
                   "model's preprocessing, applied again at prediction")  # fmt: skip
    p.add_argument("--channels", type=int, choices=(1, 3), help="image channels for the model")
    p.add_argument("--signal-length", type=int_at_least(2), help="signals: the model's window "
                   "in samples; longer records are cut to their central window (in training "
                   "and at prediction), shorter ones refused (default: the records' length)")  # fmt: skip
    p.add_argument(
        "--val-every", type=int_at_least(1), default=100, help="validate every this many steps"
    )
    p.add_argument("--val-episodes", type=int_at_least(1), default=100, help="validation episodes")
    p.add_argument(
        "--self-supervised",
        action="store_true",
        help="segmentation: train on "
        "superpixels of the images, no mask used (SSL-ALPNet; the default without masks)",
    )
    p.add_argument("--val-data", help="segmentation: labelled data to validate on (Dice)")
    p.add_argument(
        "--class-names",
        help="segmentation: names of the mask labels 1..N, comma-"
        "separated or a text file with one per line (default: the data's classes.txt)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds episodes and initialisation")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads for torch")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--fresh", action="store_true", help="do not resume from --out/last.pt")
    p.add_argument("--nproc", type=int_at_least(1), default=1,
                   help="train with N processes (torchrun; gloo on CPU, one GPU each with NCCL): "
                   "the same model as one process, see docs/distributed.md")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: Sequence[str], prog: str = "medmeta train") -> int:
    args = parse_args(build_parser(prog), argv)  # type: ignore[arg-type]
    output_folder(args.out)
    from medmeta.cli import _launch

    if _launch.should_relaunch(args.nproc):
        return _launch.relaunch_under_torchrun(["train", *argv], args.nproc)

    _setup.set_threads(args.threads)
    task, algorithm = _setup.resolve_task(args.task, args.algorithm)
    start = time.perf_counter()
    if task != "regression":
        _regression.reject_flags(args, "--task regression")
    if task == "segmentation":
        outcome = _train_segmentation(args, algorithm, argv)
    elif task == "regression":
        outcome = _train_regression(args, algorithm, argv)
    else:
        outcome = _train_classifier(args, algorithm, argv)
    summary = outcome.summary(time.perf_counter() - start)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(outcome.describe(), file=sys.stdout)
    return 0


def _train_classifier(args: Any, algorithm: str, argv: Sequence[str]) -> Any:
    from medmeta.cli._workflow import train_model

    for flag, value in (("--self-supervised", args.self_supervised),
                        ("--val-data", args.val_data), ("--class-names", args.class_names)):  # fmt: skip
        if value:
            raise UsageError(f"{flag} applies to --task segmentation")
    if args.ways == 1:
        raise UsageError(
            "--ways: must be an integer >= 2, got 1 (1-way episodes: --task segmentation)"
        )
    return train_model(
        data=args.data, classes=args.classes, val_classes=args.val_classes,
        algorithm=algorithm, params=_setup.parse_params(args.param), ways=args.ways or 5,
        shots=args.shots or 5, queries=args.queries or 15, steps=args.steps, meta_batch=args.meta_batch,
        lr=args.lr, backbone=args.backbone, width=args.width, image_size=args.image_size,
        channels=args.channels, val_every=args.val_every, val_episodes=args.val_episodes,
        seed=args.seed, device=_setup.resolve_device(args.device), out=args.out,
        resume=not args.fresh, window=_window(args.window), progress=not args.quiet, command=" ".join(["medmeta train", *argv]),
        signal_length=args.signal_length,
    )  # fmt: skip


def _train_segmentation(args: Any, algorithm: str, argv: Sequence[str]) -> Any:
    from medmeta.cli._seg_train import train_segmenter

    return train_segmenter(
        data=args.data, classes=args.classes, val_classes=args.val_classes,
        val_data=args.val_data, class_names=args.class_names, algorithm=algorithm,
        params=_setup.parse_params(args.param), ways=args.ways or 1, shots=args.shots or 1,
        queries=args.queries or 2, steps=args.steps, meta_batch=args.meta_batch, lr=args.lr,
        backbone=args.backbone, width=args.width, image_size=args.image_size,
        channels=args.channels, val_every=args.val_every, val_episodes=args.val_episodes,
        seed=args.seed, device=_setup.resolve_device(args.device), out=args.out,
        resume=not args.fresh, progress=not args.quiet, window=_window(args.window),
        command=" ".join(["medmeta train", *argv]), self_supervised=args.self_supervised,
    )  # fmt: skip


def _train_regression(args: Any, algorithm: str, argv: Sequence[str]) -> Any:
    from medmeta.cli._reg_workflow import train_regressor

    for flag, value in (("--self-supervised", args.self_supervised), ("--val-data", args.val_data),
                        ("--class-names", args.class_names), ("--image-size", args.image_size),
                        ("--window", args.window), ("--channels", args.channels),
                        ("--signal-length", args.signal_length)):  # fmt: skip
        if value:
            raise UsageError(f"{flag} does not apply to --task regression")
    if args.ways not in (None, 1):
        raise UsageError(f"--ways {args.ways}: a regression episode has one target (leave "
                         "--ways out)")  # fmt: skip
    if args.backbone not in (None, "mlp"):
        raise UsageError(f"--backbone {args.backbone}: regression takes the mlp backbone")
    return train_regressor(
        data=args.data, target=args.target, group_by=args.group_by, classes=args.classes,
        val_classes=args.val_classes, drop_missing=args.drop_missing_targets,
        algorithm=algorithm, params=_setup.parse_params(args.param), shots=args.shots or 10,
        queries=args.queries or 10, steps=args.steps, meta_batch=args.meta_batch, lr=args.lr,
        width=args.width, val_every=args.val_every, val_episodes=args.val_episodes,
        members=args.members or 10, level=args.level or 0.9, seed=args.seed,
        device=_setup.resolve_device(args.device), out=args.out, resume=not args.fresh,
        progress=not args.quiet, command=" ".join(["medmeta train", *argv]),
    )  # fmt: skip


def _window(text: str | None) -> str | tuple[float, float] | None:
    """``--window``: a preset name or ``CENTER,WIDTH``."""
    if text is None or "," not in text:
        return text
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--window: expected a preset or CENTER,WIDTH, got {text!r}") from None
    return center, width
