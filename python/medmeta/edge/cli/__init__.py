"""The ``medmeta-edge`` command (the edge distribution's console script) and the
command-line base it shares with ``medmeta``: exit statuses and one-line errors
(:mod:`.errors`), config files (:mod:`.config`), class selections (:mod:`.classes`).

``medmeta-edge predict --model m.onnx --inputs scans/`` is the same command as
``medmeta predict`` (see :mod:`.predict`), on image files and folders, with numpy,
onnxruntime and Pillow only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medmeta.edge.cli.errors import EXIT_CODES_HELP, run_command

__all__ = ["configure_logging", "main"]

EPILOG = f"""examples:
  medmeta-edge predict --model model.onnx --inputs scan1.png scan2.png
  medmeta-edge predict --model model.embed.onnx --support enrol/ --inputs scans/ --json
  medmeta-edge info --model model.onnx

Run `medmeta-edge COMMAND --help` for the options of a command.

{EXIT_CODES_HELP}"""


def configure_logging(debug: bool) -> None:
    """Warnings from every logger on stderr; DEBUG from medmeta's own with ``--debug``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("medmeta").setLevel(logging.DEBUG if debug else logging.WARNING)


def _info(argv: Sequence[str], prog: str) -> int:
    """Print the medmeta metadata of an exported model as JSON."""
    import json

    from medmeta.edge.cli.config import make_parser, parse_args
    from medmeta.edge.runtime import EdgeModel

    parser = make_parser(prog, "Print the medmeta metadata of an exported ONNX model.")
    parser.add_argument("--model", required=True, help="a medmeta .onnx file")
    args = parse_args(parser, argv)
    meta = EdgeModel.read_metadata(args.model)
    summary = {k: v for k, v in meta.items() if k != "enrolment"}  # arrays: not for reading
    summary["enrolled_support"] = meta.get("enrolment") is not None
    print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmeta-edge`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(
        prog="medmeta-edge",
        description="Run medmeta models on a device: numpy, onnxruntime and Pillow, no PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medmeta-edge {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("command", choices=["predict", "info"], metavar="COMMAND",
                        help="predict: classify inputs; info: print a model's metadata")  # fmt: skip
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    args = parser.parse_args(argv)
    configure_logging(debug)
    prog = f"medmeta-edge {args.command}"
    if args.command == "info":
        return run_command(prog, lambda: _info(args.args, prog), debug=debug)
    from medmeta.edge.cli import predict

    return run_command(prog, lambda: predict.main(args.args, prog=prog), debug=debug)


def _version() -> str:
    from medmeta import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
