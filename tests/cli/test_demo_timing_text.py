"""The demo's run times are stated once (medmeta.cli.demo) and the same in the README, the
demo's --help and the top-level --help."""

from __future__ import annotations

from pathlib import Path

from medmeta.cli import EPILOG as TOP_EPILOG
from medmeta.cli.demo import DEMO_TIME, EPILOG, QUICK_TIME, REGRESSION_TIMES, TIMED_ON

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_readme_and_help_state_the_same_demo_times():
    setup = README[README.index("## Set-up") : README.index("```bash")]
    assert f"{DEMO_TIME} on {TIMED_ON}" in " ".join(setup.split())
    assert f"`medmeta demo --quick` takes {QUICK_TIME}" in " ".join(setup.split())
    assert f"{DEMO_TIME} on {TIMED_ON}" in EPILOG and QUICK_TIME in EPILOG
    assert f"the same in {QUICK_TIME}" in TOP_EPILOG


def test_readme_and_help_state_the_same_regression_demo_times():
    full, quick = REGRESSION_TIMES
    assert f"({full}; `--quick` {quick})" in README
    assert f"A full run took {full}, --quick {quick}." in " ".join(EPILOG.split())
