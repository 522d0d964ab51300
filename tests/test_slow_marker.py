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
    "tests/cli/test_demo_families.py::test_signals_demo_trains_on_animals_and_checks_the_export",
    "tests/cli/test_demo_families.py::test_tables_demo_fits_the_encoding_on_training_rows",
    "tests/cli/test_demo_regression.py::test_regression_demo_writes_the_report_with_the_figure",
    "tests/cli/test_demo_regression.py::test_regression_demo_learns_above_the_support_mean",
    "tests/cli/test_demo_regression.py::test_the_edge_check_fails_loudly_when_the_numbers_differ",
    "tests/export/test_regression_export.py::test_cli_train_adapt_export_predict_agree",
    "tests/data/test_wfdb_records.py::test_cli_predicts_beats_of_a_record",
    "tests/data/test_wfdb_records.py::test_cli_predicts_a_folder_of_records",
    "tests/cli/test_regression_cli.py::test_trained_folder_follows_the_contract",
    "tests/cli/test_regression_cli.py::test_eval_beats_the_support_mean_and_ridge_at_held_out",
    "tests/cli/test_regression_cli.py::test_expression_vectors_train_eval_adapt",
)
#: Quick tests in the same files: the marker selects, it does not take everything.
NOT_SLOW = (
    "tests/cli/test_bench.py::test_bench_unknown_suite",
    "tests/cli/test_demo_regression.py::test_the_split_is_clinic_disjoint_and_the_test_clinic_is_new",
    "tests/cli/test_demo_families.py::test_raw_inputs_are_written_as_a_device_reads_them",
    "tests/data/test_wfdb_records.py::test_cli_trains_on_a_folder_of_records",
)


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
    for name in NOT_SLOW:
        assert name not in selected, f"{name} is marked slow"
