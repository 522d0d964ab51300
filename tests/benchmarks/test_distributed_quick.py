"""The distributed throughput suite (``python -m benchmarks distributed``): its ``--quick``
mode end to end (torchrun with 1 and 2 gloo processes, in a subprocess), and the
efficiency and share arithmetic of its report on made-up timings. Nothing about speed is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import distributed as B

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two torchrun launches, ~20 s
def test_quick_mode_times_one_and_two_processes(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks", "distributed", "--quick", "--no-malloc-env",
               "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "distributed-cpu-quick.json").read_text())
    records = {(r["algorithm"], r["processes"]): r for r in payload["records"]}
    assert set(records) == {(a, p) for a in ("protonet", "maml") for p in (1, 2)}
    for (_, processes), r in records.items():
        assert r["status"] == "ok", r["status"]
        assert r["episodes_per_s"] == pytest.approx(4 / r["step_s"])
        assert r["parameters"] > 0 and 0 <= r["sample_share"] < 1
        if processes == 1:  # the baseline: no process group in the step
            assert r["speedup"] == r["efficiency"] == 1.0 and r["allreduce_alone_s"] is None
        else:
            assert r["efficiency"] == pytest.approx(r["speedup"] / 2)
            assert 0 < r["allreduce_share"] < 1 and r["allreduce_alone_s"] > 0
            assert len(r["rank_step_s"]) == 2
    assert payload["settings"]["meta_batch"] == 4 and payload["environment"]["command"]
    md = (tmp_path / "distributed-cpu-quick.md").read_text()
    assert "| algorithm | P | episodes/s | speed-up | efficiency |" in md and "maml" in md


def _point(step_s: float, allreduce_s: float) -> dict[str, Any]:
    return {"algorithm": "protonet", "step_s": step_s, "sample_s": 0.1 * step_s,
            "allreduce_s": allreduce_s, "allreduce_alone_s": allreduce_s / 2}  # fmt: skip


def test_report_arithmetic_and_where_the_all_reduce_dominates() -> None:
    spec = {"algorithms": ["protonet"], "meta_batch": 16, "device": "cpu", "threads": 1,
            "hidden": 32, "ways": 5, "shots": 5, "queries": 10, "steps": 20, "warmup": 3}  # fmt: skip
    points = {
        1: {"status": "ok", "results": [_point(1.0, 0.0)]},
        2: {"status": "ok", "results": [_point(0.625, 0.125)]},
        4: {"status": "ok", "results": [_point(0.5, 0.3)]},
        8: {"status": "failed (exit 1): boom"},
    }
    records = B._records(points, spec)
    by_p = {r["processes"]: r for r in records}
    assert by_p[1]["episodes_per_s"] == 16 and by_p[1]["efficiency"] == 1.0
    assert by_p[2]["speedup"] == pytest.approx(1.6) and by_p[2]["efficiency"] == pytest.approx(0.8)
    assert by_p[4]["efficiency"] == pytest.approx(0.5) and by_p[4]["allreduce_share"] == 0.6
    assert by_p[8]["status"].startswith("failed") and "episodes_per_s" not in by_p[8]
    env = {"git_commit": "abc", "git_dirty": False, "command": ["x"], "env": {},
           "cpu_model": "cpu", "cpu_count": 2}  # fmt: skip
    md = B.markdown_report({"environment": env, "settings": spec, "records": records})
    assert (
        "The all-reduce dominates (≥ 50% of the step) for: protonet with 4 processes (60%)." in md
    )
    assert "| protonet | 2 | 25.6 | 1.60× | 80% | 625.0 | 125.0 (20%) | 62.5 |" in md
    assert "failed (exit 1): boom" in md
