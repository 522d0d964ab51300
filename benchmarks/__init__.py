"""medmeta benchmark suites.

Run ``python -m benchmarks <suite> [options]`` from the repository root (``ops`` today;
``algorithms`` and ``edge`` are planned). See ``benchmarks/README.md``.
"""
