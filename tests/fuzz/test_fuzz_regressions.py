"""Every input that a fuzz harness found to break a reader (a crash, an undocumented
exception, a hang, a huge allocation) is kept in ``regressions/<harness>/`` and replayed
here: the fixed reader must refuse it with its documented error, nothing else."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz._harness import check_one
from fuzz.run import HARNESSES

REGRESSIONS = Path(__file__).parent / "regressions"
CASES = sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file())


def test_every_regression_belongs_to_a_harness():
    assert len(CASES) >= 10
    assert {p.parent.name for p in CASES} <= set(HARNESSES)


# an input that hangs libhdf5 waits out the HDF5 probe's timeout (3 s per reader call)
PARAMS = [pytest.param(p, marks=[pytest.mark.slow] if "hang" in p.name else [],
                       id=f"{p.parent.name}/{p.name}") for p in CASES]  # fmt: skip


@pytest.mark.parametrize("case", PARAMS)
def test_fuzz_finding_is_refused_with_a_documented_error(case, tmp_path):
    harness = importlib.import_module(f"fuzz.fuzz_{case.parent.name}").HARNESS
    outcomes = check_one(harness, case.read_bytes(), tmp_path)  # raises on anything else
    assert len(outcomes) >= 1
    assert "refused" in outcomes, f"{case.name} was read without complaint by every reader"
