"""The workflow's warnings: training episodes solved in the first few percent of the steps."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from medmeta.cli._workflow import _warn_early_convergence


def _fit(rows: list[tuple[int, float]]) -> SimpleNamespace:
    return SimpleNamespace(history=[{"step": s, "accuracy": a} for s, a in rows])


@pytest.mark.parametrize(
    ("rows", "steps", "warned"),
    [
        ([(10, 0.7), (20, 1.0), (400, 1.0)], 400, True),  # solved at step 20 of 400 (5%)
        ([(10, 0.7), (40, 1.0), (400, 1.0)], 400, False),  # solved only at 10%
        ([(20, 0.95), (400, 1.0)], 400, False),  # never 99% early
        ([(1, 1.0)], 10, False),  # too short a run to judge
    ],
)
def test_early_convergence_warning(rows, steps, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="medmeta"):
        _warn_early_convergence(_fit(rows), steps)
    assert ("training episodes were solved" in caplog.text) == warned
