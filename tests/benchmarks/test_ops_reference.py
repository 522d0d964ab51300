"""``benchmarks/ops.py`` checks every formulation, medmeta included, against the float64
reference before timing: a medmeta error fails the run, a wrong baseline is dropped and
reported with its error (never silently, never as the best formulation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import medmeta.ops as mm
from benchmarks import _harness as H
from benchmarks import ops

CPU = torch.device("cpu")
NO_PEERS = ops.Peers(keops_why="off in this test", easyfsl_why="off in this test")
BROKEN = "cdist² off by 0.1%"


def quick_argv(out: Path, threads: int, *extra: str) -> list[str]:
    return ["--quick", "--ops", "pairwise_distance", "--out", str(out), "--no-malloc-env",
            "--threads", str(threads), "--target-time", "0.002", *extra]  # fmt: skip


@pytest.fixture
def broken_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pure-torch distance formulation that is 0.1% off (a subtle bug)."""
    real = ops.torch_distances

    def with_broken(metric: str):
        forms = dict(real(metric))
        if metric == "sqeuclidean":
            forms[BROKEN] = lambda x, y: torch.cdist(x, y).square() * 1.001
        return forms

    monkeypatch.setattr(ops, "torch_distances", with_broken)


def corrupt_at(monkeypatch: pytest.MonkeyPatch, batch: int, relative: float) -> None:
    """medmeta's pairwise_distance (and so its gradients) off by a factor ``1 + relative``
    at B=batch only."""
    real = mm.pairwise_distance

    def corrupted(x, y, metric="sqeuclidean"):
        out = real(x, y, metric)
        return out * (1 + relative) if x.shape[0] == batch else out

    monkeypatch.setattr(mm, "pairwise_distance", corrupted)


def test_float32_tolerance_grows_with_the_sums_and_is_bounded() -> None:
    tol = [ops.float32_tolerance(n) for n in (1, 64, 1600, 20480, 10**8)]
    assert tol == sorted(tol) and tol[0] == 1e-5 and tol[-1] == 1e-3
    assert 3e-5 < tol[1] < 4e-5 and 1e-4 < tol[2] < 2e-4


@pytest.mark.parametrize("pass_", ops.PASSES)
def test_check_point_drops_a_wrong_baseline_with_its_error(broken_baseline, pass_) -> None:
    torch.manual_seed(0)
    problem = ops.distance_problem(ops.EpisodeShape(2, 15, 5, 64), CPU, torch.float32,
                                   NO_PEERS, False)  # fmt: skip
    records, calls = ops.check_point(problem, pass_, H.Clock(CPU))
    bad = records[BROKEN]
    assert bad.status.startswith("disagrees with the float64 reference: output 0: max abs error")
    assert BROKEN not in calls
    assert bad.ref_error == pytest.approx(1e-3, rel=0.05)
    assert bad.ref_tol == ops.float32_tolerance(64)
    ours = records["medmeta"]
    assert "medmeta" in calls and ours.status == "ok" and ours.ref_error < ours.ref_tol / 10
    assert {"baddbmm expansion", "torch.cdist ** 2"} <= set(calls)


@pytest.mark.parametrize("pass_", ops.PASSES)
def test_check_point_raises_when_medmeta_disagrees(monkeypatch, pass_) -> None:
    corrupt_at(monkeypatch, batch=2, relative=1e-3)
    torch.manual_seed(0)
    problem = ops.distance_problem(ops.EpisodeShape(2, 15, 5, 64), CPU, torch.float32,
                                   NO_PEERS, False)  # fmt: skip
    with pytest.raises(ops.MedmetaCheckFailed) as caught:
        ops.check_point(problem, pass_, H.Clock(CPU))
    message = str(caught.value)
    assert f"medmeta disagrees with the float64 reference: pairwise_distance {pass_} at B=2" in (
        message
    )
    assert "max abs error" in message and "float32 tolerance" in message


def test_a_medmeta_error_at_one_size_fails_the_run(
    light, monkeypatch, tmp_path: Path, capsys, keep_threads: int
) -> None:
    corrupt_at(monkeypatch, batch=8, relative=1e-3)  # the quick grid's second size
    status = ops.main(quick_argv(tmp_path / "out", keep_threads), prog="python -m benchmarks ops")
    assert status == 1
    err = capsys.readouterr().err
    assert "pairwise_distance forward at B=8 Q=75 N=5 D=256" in err
    assert "max abs error" in err and "tolerance" in err and "the run fails" in err
    assert not (tmp_path / "out").exists()  # no results from a failed check


def test_a_wrong_baseline_is_reported_and_never_timed(
    light, broken_baseline, tmp_path: Path, keep_threads: int, capsys
) -> None:
    out = tmp_path / "out"
    assert ops.main(quick_argv(out, keep_threads), prog="python -m benchmarks ops") == 0
    payload = json.loads((out / "ops-cpu-quick.json").read_text())
    broken = [r for r in payload["records"] if r["formulation"] == BROKEN]
    assert len(broken) == 4  # two sqeuclidean sizes, two passes
    for r in broken:
        assert r["status"].startswith("disagrees with the float64 reference")
        assert r["median_s"] is None and r["ref_error"] > r["ref_tol"]
    assert all(p["best_torch"] != BROKEN and BROKEN not in p["ratios"] for p in payload["points"])
    checked = [r for r in payload["records"] if r["status"] == "ok"]
    assert checked and all(r["ref_error"] <= r["ref_tol"] for r in checked)
    md = (out / "ops-cpu-quick.md").read_text()
    section = md.split("## Baselines that disagree with the float64 reference (not timed)")[1]
    assert BROKEN in section and "1.00e-03" in section
