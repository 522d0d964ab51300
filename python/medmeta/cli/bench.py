"""``medmeta bench``: the benchmark suites of the source tree (``python -m benchmarks``)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medmeta.cli._errors import UsageError

HELP = """usage: medmeta bench [SUITE] [options]

Runs the benchmark suites of medmeta's source tree, the same as `python -m benchmarks`:
medmeta beside the best pure-PyTorch formulations and the installed peers, in one run;
JSON, Markdown and plots go to benchmarks/results/ with the device, versions and command.

  medmeta bench                      # every suite in quick mode (a smoke test, < 2 minutes)
  medmeta bench ops --device cpu     # one suite, full size (see `medmeta bench ops --help`)
  medmeta bench algorithms --quick
  medmeta bench edge --quick

The suites live in the source tree (benchmarks/ beside python/), not in the wheel: run from
a clone, or set MEDMETA_SOURCE to the clone's folder.
"""

#: The suites that ``medmeta bench`` with no suite runs, in quick mode.
QUICK_SUITES = ("ops", "algorithms", "edge")


def source_tree() -> Path:
    """The folder holding ``benchmarks/``: ``$MEDMETA_SOURCE``, the working directory, or
    the source tree of an editable install."""
    import medmeta

    candidates = [os.environ.get("MEDMETA_SOURCE"), os.getcwd(),
                  str(Path(medmeta.__file__).resolve().parents[2])]  # fmt: skip
    for folder in candidates:
        if folder and (Path(folder) / "benchmarks" / "__main__.py").is_file():
            return Path(folder).resolve()
    raise UsageError(
        "the benchmark suites are in medmeta's source tree (benchmarks/), which was not found: "
        "run from a clone of the repository or set MEDMETA_SOURCE to it"
    )


def main(argv: Sequence[str], prog: str = "medmeta bench") -> int:
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    root = source_tree()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner = importlib.import_module("benchmarks.__main__")
    if argv and not argv[0].startswith("-"):
        return int(runner.main(argv) or 0)
    status = 0
    extra = [a for a in argv if a != "--quick"]
    for suite in QUICK_SUITES:
        if suite not in runner.SUITES:
            print(
                f"medmeta bench: suite {suite!r} is not in this source tree; skipped",
                file=sys.stderr,
            )
            continue
        print(f"== {suite} (quick) ==", flush=True)
        status = max(status, int(runner.main([suite, "--quick", *extra]) or 0))
    return status
