"""The benchmark suites live in the source tree (``benchmarks/``), not in the package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def keep_threads():
    """The suites set torch's thread count; give the test process its own back."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture
def light(monkeypatch: pytest.MonkeyPatch) -> None:
    """No 256 MB bandwidth probe and no plot in suite runs that check results, not speed."""
    from benchmarks import _harness as H

    monkeypatch.setattr(H, "copy_bandwidth", lambda device: 1e10)

    def no_plot(*args, **kwargs):
        raise ImportError("no plot in this test")

    monkeypatch.setattr(H, "plot_speedups", no_plot)
