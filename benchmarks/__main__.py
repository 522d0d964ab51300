"""``python -m benchmarks <suite> [options]``: dispatch to a benchmark suite."""

from __future__ import annotations

import importlib
import sys

# suite name -> module with a ``main(argv, prog) -> int`` entry point
SUITES: dict[str, str] = {
    "ops": "benchmarks.ops",
    "maml_gradients": "benchmarks.maml_gradients",
    "protocols": "benchmarks.protocols",
}


def main(argv: list[str] | None = None) -> int:
    """Run the suite named by the first argument with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
        known = ", ".join(SUITES)
        print(
            f"usage: python -m benchmarks {{{known}}} [options]   (-h after a suite for its options)"
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    suite = importlib.import_module(SUITES[argv[0]])
    return suite.main(argv[1:], prog=f"python -m benchmarks {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
