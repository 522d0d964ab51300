"""The ``slow`` marker is applied to the long end-to-end tests, so that
``python -m pytest -m "not slow"`` is a quick developer run (CI runs everything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Tests that spawn a pipeline in a subprocess or run one end to end: each must be marked.
EXPECTED = (
    "tests/cli/test_demo.py::",
    "tests/cli/test_bench.py::test_bench_quick_runs_every_suite_and_writes_results",
    "tests/cli/test_export_predict.py::",
    "tests/benchmarks/test_algorithms_quick.py::",
    "tests/edge/test_torch_free.py::",
    "tests/report/test_render_chromium.py::",
    "tests/export/test_distill.py::test_student_is_smaller_and_well_above_chance",
    "tests/export/test_learners.py::test_learner_exports_with_parity",
)
NOT_SLOW = "tests/cli/test_bench.py::test_bench_unknown_suite"


def test_slow_marker_selects_the_long_end_to_end_tests() -> None:
    files = sorted({e.split("::")[0] for e in EXPECTED})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow",
         "-p", "no:cacheprovider", *files],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    selected = [line for line in done.stdout.splitlines() if "::" in line]
    assert len(selected) >= 20, done.stdout[-2000:]
    for prefix in EXPECTED:
        assert any(n.startswith(prefix) for n in selected), f"{prefix} is not marked slow"
    assert NOT_SLOW not in selected  # the marker selects, it does not take everything
