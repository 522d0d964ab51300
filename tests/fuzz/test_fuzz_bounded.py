"""The bounded fuzz run of CI: every harness fuzzes for a few seconds (medmeta's code
instrumented) under ``-rss_limit_mb`` and ``-timeout``, and finds nothing; and every
harness's seeds are read, so a harness exercises its reader and not only its error paths.
The documented long run is ``python -m tests.fuzz.run --seconds 600``."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz._harness import check_one
from fuzz.run import HARNESSES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bounded_fuzz_run_finds_nothing(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("CI"):
            pytest.fail("atheris is missing: CI installs medmeta[test], which has the fuzz extra")
        pytest.skip("atheris is not installed (pip install 'medmeta[fuzz]')")
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--seconds", "3", "--jobs", "2",
         "--medmeta-only", "--rss-limit-mb", "2048", "--timeout", "10",
         "--work", str(tmp_path / "work"), "--json", str(summary)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout[:3000])  # the executions per harness, for the CI log
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    outcomes = {o["harness"]: o for o in json.loads(summary.read_text())}
    assert set(outcomes) == set(HARNESSES)
    for name, o in outcomes.items():
        assert o["executions"] > 0 and not o["findings"], (name, o["tail"][-2000:])


@pytest.mark.slow
@pytest.mark.parametrize("name", HARNESSES)
def test_every_reader_call_accepts_some_seed(name, tmp_path):
    harness = importlib.import_module(f"fuzz.fuzz_{name}").HARNESS
    seeds = harness.seeds()
    assert seeds
    outcomes = [check_one(harness, data, tmp_path) for data in seeds.values()]
    for call in range(len(outcomes[0])):
        assert any(o[call] == "accepted" for o in outcomes), (name, call, outcomes)
