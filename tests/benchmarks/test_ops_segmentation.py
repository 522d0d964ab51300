"""``python -m benchmarks ops --shapes segmentation``: the PANet/ALPNet shapes of
masked_prototypes and the cosine pairwise_distance run (tiny quick mode), and every
formulation, medmeta included, is checked against the float64 reference before timing."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import ops

CPU = torch.device("cpu")
NO_PEERS = ops.Peers(keops_why="off in this test", easyfsl_why="off in this test")


def test_the_segmentation_grid_covers_the_corners_and_leaves_the_default_alone() -> None:
    full = ops.grid(quick=False, shapes="segmentation")
    masks = [s for build, s in full if build is ops.masked_problem]
    dists = [s for build, s in full if build is ops.distance_problem]
    assert {(s.D, s.HW, s.S, s.C) for s in masks} == {
        (D, hw, S, C) for D in (64, 128, 256) for hw in (16, 32, 64) for S in (1, 5)
        for C in (2, 22, 42)
    }  # fmt: skip
    assert {(s.Q, s.P, s.D, s.metric) for s in dists} == {
        (q, P, D, "cosine") for q in (2 * 16**2, 2 * 32**2, 4 * 64**2) for P in (2, 22, 42)
        for D in (64, 128, 256)
    }  # fmt: skip
    assert all(s.series().startswith(ops.SEGMENTATION_PREFIX) for _, s in full)
    default = ops.grid(quick=False)
    assert ops.grid(quick=False, shapes="default") == default
    assert not any(s.series().startswith(ops.SEGMENTATION_PREFIX) for _, s in default)


def test_segmentation_problems_offer_the_strong_torch_formulations() -> None:
    torch.manual_seed(0)
    masked = ops.masked_problem(ops.SegMaskShape(2, 3, 8, 4), CPU, torch.float32, NO_PEERS, True)
    assert masked.x == 16 and masked.diff_inputs[0].shape == (1, 2, 8, 4, 4)
    names = {x.name for x in masked.formulations if x.kind == "torch"}
    assert {"einsum", "bmm per shot + sum", "bmm over S·H·W (transposed copies)"} <= names
    dist = ops.distance_problem(ops.SegDistanceShape(2, 4, 3, 8), CPU, torch.float32,
                                NO_PEERS, False)  # fmt: skip
    assert dist.x == 32 and dist.diff_inputs[0].shape == (1, 32, 8)
    assert dist.diff_inputs[1].shape == (1, 3, 8)
    names = {x.name for x in dist.formulations if x.kind == "torch"}
    assert {"normalize + bmm", "bmm / (|x|·|y|)", "normalize(y) + bmm / |x|",
            "normalize + F.linear (B=1)", "normalize + torch.cdist² / 2"} <= names  # fmt: skip


def test_the_quick_segmentation_run_checks_every_formulation(
    light, tmp_path: Path, keep_threads: int
) -> None:
    out = tmp_path / "out"
    argv = ["--quick", "--shapes", "segmentation", "--out", str(out), "--no-malloc-env",
            "--threads", str(keep_threads), "--target-time", "0.002"]  # fmt: skip
    assert ops.main(argv, prog="python -m benchmarks ops") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ops-cpu-segmentation-quick.json", "ops-cpu-segmentation-quick.md"]  # fmt: skip
    payload = json.loads((out / "ops-cpu-segmentation-quick.json").read_text())
    assert payload["environment"]["shapes"] == "segmentation"
    assert payload["overhead"] is None  # measured by the default shape set only
    records = payload["records"]
    assert {r["op"] for r in records} == {"masked_prototypes", "pairwise_distance"}
    assert all(r["series"].startswith(ops.SEGMENTATION_PREFIX) for r in records)
    expected = {
        (op, pass_, series, x)
        for build, s in ops.grid(quick=True, shapes="segmentation")
        for op, series, x in [(ops.BUILDERS[build], s.series(), s.x)]
        for pass_ in ops.PASSES
    }
    assert {(r["op"], r["pass"], r["series"], r["x"]) for r in records} == expected
    # every formulation that ran was held to the float64 reference and agreed with it
    ran = [r for r in records if not r["status"].startswith(("skipped", "not available"))]
    assert ran and all(r["status"] == "ok" for r in ran)
    assert all(r["ref_tol"] and r["ref_error"] is not None for r in ran)
    assert all(r["ref_error"] <= r["ref_tol"] for r in ran)
    for op in ("masked_prototypes", "pairwise_distance"):
        kinds = {r["kind"] for r in ran if r["op"] == op}
        assert {"medmeta", "torch"} <= kinds
    assert len(payload["points"]) == len(expected)
    assert all(p["speedup"] and p["best_torch"] for p in payload["points"])
    md = (out / "ops-cpu-segmentation-quick.md").read_text()
    assert "Shape set: **segmentation**" in md
    every = md.split("## Every point: medmeta's speedup over the best torch formulation")[1]
    assert "H·W=256" in every and "n·h·w=512" in every
