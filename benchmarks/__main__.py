"""``python -m benchmarks [SUITE] [options]`` (also ``medmeta bench``).

With a suite name, run that suite with its options (``-h`` after it lists them). Without
one, run the op, algorithm and edge suites one after the other with the options given
(e.g. ``--quick --out DIR``): the single entry point that CI uses in quick mode to check
the harness, and that makes the reference results when run in full.
"""

from __future__ import annotations

import importlib
import sys

from benchmarks._harness import ensure_malloc_env

# suite name -> module with a ``main(argv, prog) -> int`` entry point
SUITES: dict[str, str] = {
    "ops": "benchmarks.ops",
    "segmentation": "benchmarks.segmentation",
    "maml_gradients": "benchmarks.maml_gradients",
    "protocols": "benchmarks.protocols",
    "algorithms": "benchmarks.algorithms",
    "edge": "benchmarks.edge",
    "federated": "benchmarks.federated",
    "distributed": "benchmarks.distributed",
}
#: The suites run when no suite is named.
DEFAULT_SUITES = ("ops", "algorithms", "edge")

USAGE = f"""usage: python -m benchmarks [SUITE] [options]

  SUITE is one of: {", ".join(SUITES)} (`python -m benchmarks SUITE -h` for its options).
  Without a SUITE, runs {", ".join(DEFAULT_SUITES)} in turn with the options given, e.g.
  `python -m benchmarks --quick` (the harness check, about two minutes) or
  `python -m benchmarks --threads 2` (the reference runs). Results: benchmarks/results/."""


def run_suite(name: str, argv: list[str], prog: str) -> int:
    suite = importlib.import_module(SUITES[name])
    return int(suite.main(argv, prog=f"{prog} {name}") or 0)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run one suite, or every default suite, and return the worst exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv and not argv[0].startswith("-"):
        if argv[0] not in SUITES:
            print(f"{prog}: unknown suite {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
            return 2
        return run_suite(argv[0], argv[1:], prog)
    if "--no-malloc-env" not in argv:
        # once, here: a suite re-executing itself would end this loop
        ensure_malloc_env([sys.executable, "-m", "benchmarks", *argv])
    status = 0
    for name in DEFAULT_SUITES:
        print(f"== {name}{' (quick)' if '--quick' in argv else ''} ==", flush=True)
        status = max(status, run_suite(name, argv, prog))
    return status


if __name__ == "__main__":
    sys.exit(main())
