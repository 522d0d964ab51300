"""The ``medmeta`` command line: one subcommand per task, one module per subcommand.

Subcommand modules are imported only when their command runs, so ``medmeta datasets`` and
``medmeta predict`` (the torch-free edge path) never import torch. Errors reach the user as
one readable line with a meaningful exit status (see :mod:`medmeta.edge.cli.errors`); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from medmeta.cli._allocator import keep_freed_memory
from medmeta.edge.cli import configure_logging
from medmeta.edge.cli.errors import EXIT_CODES_HELP, run_command

# name -> (module with ``main(argv, prog) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("medmeta.cli.demo", "meta-train, evaluate, adapt, export and verify on embedded data; write a report"),
    "train": ("medmeta.cli.train", "meta-train a learner on a dataset (NPZ, image folder or embedded name)"),
    "eval": ("medmeta.cli.evaluate", "evaluate a trained model on few-shot episodes (accuracy ± 95% CI, AUROC, ...)"),
    "adapt": ("medmeta.cli.adapt", "adapt a trained model to a new labelled support set"),
    "export": ("medmeta.cli.export", "export a trained or adapted model to ONNX (optionally int8)"),
    "predict": ("medmeta.cli.predict", "classify inputs with an ONNX model, without PyTorch; or segment them (masks)"),
    "datasets": ("medmeta.data.registry", "list the embedded real datasets, or describe one"),
    "federate": ("medmeta.cli.federate", "federated meta-learning across sites on Flower (data stay at each site; optional DP)"),
    "bench": ("medmeta.cli.bench", "run the benchmark suites (ops, algorithms, edge)"),
}  # fmt: skip

#: Commands that run PyTorch models over many batches (see :mod:`medmeta.cli._allocator`).
COMPUTE_COMMANDS = ("demo", "train", "eval", "adapt", "export")  # bench: in a child process

EPILOG = f"""examples:
  medmeta demo                                   # the whole pipeline on blood-cell images, report in ./medmeta-demo/
  medmeta demo --quick                           # the same in about 25 s (smoke test)
  medmeta demo --family signals                  # pig_cvp recordings (also tables, expression)
  medmeta demo --family regression               # T3 at a new clinic, with 90% intervals
  medmeta datasets                               # embedded datasets with their licenses
  medmeta train --data pbc_blood --classes 0-4 --algorithm protonet \\
                --ways 3 --shots 5 --queries 15 --steps 400 --out runs/protonet
  medmeta eval --model runs/protonet --data pbc_blood --classes 5-7 --episodes 600 --json
  medmeta adapt --model runs/protonet --support pbc_blood --classes 5-7 --shots 5 --out runs/adapted
  medmeta export --model runs/adapted --out model.onnx --int8
  medmeta predict --model model.onnx --inputs images/ --json
  medmeta train --task regression --data thyroid --target T3 --group-by referral_source \\
                --classes other,SVI,SVHC --val-classes STMW --drop-missing-targets --out runs/t3
  medmeta train --task segmentation --data dsb_nuclei --out runs/nuclei   # Dice, 1-way 1-shot
  medmeta adapt --model runs/nuclei --support cells/ --out runs/cells     # cells/images, cells/masks
  medmeta predict --model runs/cells --inputs new_cells/ --out masks/     # one PNG mask per image
  medmeta federate --sites a=pbc_blood@0-3,b=pbc_blood@4-7 --ways 3 --out runs/fed
  medmeta bench ops --quick

Run `medmeta COMMAND --help` for the options of a command.

{EXIT_CODES_HELP}"""


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmeta",
        description="Few-shot and meta-learning for medical data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medmeta {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and debug logging on errors"
    )
    width = max(map(len, SUBCOMMANDS))
    parser.add_argument(
        "command",
        choices=list(SUBCOMMANDS),
        metavar="COMMAND",
        help="one of:\n"
        + "\n".join(f"  {name:<{width}}  {spec[1]}" for name, spec in SUBCOMMANDS.items()).replace(
            "%", "%%"
        ),
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    parser.formatter_class = argparse.RawTextHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmeta`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere (before or after the command)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = _top_parser().parse_args(argv)
    configure_logging(debug)
    module_name, _ = SUBCOMMANDS[args.command]
    if args.command in COMPUTE_COMMANDS:
        keep_freed_memory()
    prog = f"medmeta {args.command}"
    return run_command(
        prog, lambda: importlib.import_module(module_name).main(args.args, prog=prog), debug=debug
    )


def _version() -> str:
    from medmeta import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
