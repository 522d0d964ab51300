"""medmeta benchmark suites.

Run ``python -m benchmarks [SUITE] [options]`` from the repository root (suites ``ops``,
``algorithms``, ``edge``, ``maml_gradients``, ``protocols``; without one, ``ops``,
``algorithms`` and ``edge`` in turn). See ``benchmarks/README.md``.
"""
