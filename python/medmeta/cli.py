"""The ``medmeta`` command line: one subcommand per task.

Subcommands are looked up lazily so that ``medmeta datasets`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, function taking argv and returning an exit status, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "datasets": (
        "medmeta.data.registry",
        "main",
        "list the embedded real datasets, or describe one",
    ),
}

EPILOG = """examples:
  medmeta datasets                   # the embedded datasets with their licenses
  medmeta datasets pbc_blood --license
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmeta`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="medmeta",
        description="Few-shot and meta-learning for medical data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medmeta {_version()}")
    parser.add_argument(
        "command",
        choices=sorted(SUBCOMMANDS),
        help="; ".join(f"{name}: {spec[2]}" for name, spec in sorted(SUBCOMMANDS.items())),
    )
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="arguments of the command (see COMMAND --help)"
    )
    args = parser.parse_args(argv)
    module, function, _ = SUBCOMMANDS[args.command]
    return int(getattr(importlib.import_module(module), function)(args.args) or 0)


def _version() -> str:
    from medmeta import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
