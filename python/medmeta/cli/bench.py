"""``medmeta bench``: the benchmark suites of the source tree (``python -m benchmarks``)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from medmeta.edge.cli.errors import UsageError

HELP = """usage: medmeta bench [SUITE] [options]

Runs the benchmark suites of medmeta's source tree, the same as `python -m benchmarks`:
medmeta beside the best pure-PyTorch formulations and the installed peers, in one run;
JSON, Markdown and plots go to benchmarks/results/ under the working directory (--out DIR
elsewhere), with the device, versions and command.

  medmeta bench --quick              # every suite in quick mode (the harness check, ~2 minutes)
  medmeta bench --threads 2          # every suite in full (the reference results)
  medmeta bench ops --device cpu     # one suite, full size (see `medmeta bench ops --help`)
  medmeta bench algorithms --quick
  medmeta bench edge --quick

The suites live in the source tree (benchmarks/ beside python/), not in the wheel: run from
a clone, or set MEDMETA_SOURCE to the clone's folder.
"""


def source_tree() -> Path:
    """The folder holding ``benchmarks/``: ``$MEDMETA_SOURCE``, the working directory, or
    the source tree of an editable install."""
    candidates = [os.environ.get("MEDMETA_SOURCE"), os.getcwd(), str(_package_source())]
    for folder in candidates:
        if folder and (Path(folder) / "benchmarks" / "__main__.py").is_file():
            return Path(folder).resolve()
    raise UsageError(
        "the benchmark suites are in medmeta's source tree (benchmarks/), which was not found: "
        "run from a clone of the repository or set MEDMETA_SOURCE to it"
    )


def _package_source() -> Path:
    """Where an editable install's source tree would be (``python/medmeta/..`` -> root)."""
    import medmeta

    return Path(medmeta.__file__).resolve().parents[2]


def main(argv: Sequence[str], prog: str = "medmeta bench") -> int:
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    root = source_tree()
    suites = _suites(root)
    if argv and not argv[0].startswith("-") and argv[0] not in suites:
        raise UsageError(f"unknown suite {argv[0]!r}; suites: {', '.join(suites)}")
    # A child process: the CPU suites re-execute themselves with allocator settings
    # (MALLOC_*), which must not replace the calling process.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "benchmarks", *argv], env=env).returncode


def _suites(root: Path) -> dict[str, str]:
    """The suites of the source tree at ``root`` (``benchmarks.__main__.SUITES``)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.__main__").SUITES
