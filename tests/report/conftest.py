"""Fixtures of the report tests: the real quick run (trained once per session)."""

from __future__ import annotations

import pytest

from report.quickrun import quick_run


@pytest.fixture(scope="session")
def run() -> dict:
    return quick_run()
