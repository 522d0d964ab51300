"""Smoke test of the algorithms throughput suite (``python -m benchmarks algorithms``).

Runs its ``--quick`` mode on a tiny configuration (Conv4-8, 2 queries per class, one
meta-batch of 2 episodes) in a subprocess and checks the structure and the agreement
results of the JSON it writes. Nothing about speed is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from medmeta.algorithms import available

pytestmark = pytest.mark.slow  # the whole suite in a subprocess, every algorithm

REPO = Path(__file__).resolve().parents[2]
PEERS = ("learn2learn", "higher", "torchopt", "easyfsl")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("algorithms-bench")
    command = [
        sys.executable, "-m", "benchmarks", "algorithms", "--quick",
        "--hidden", "8", "--queries", "2", "--batches", "2", "--peer-batches", "2",
        "--threads", "1", "--target-time", "0.01", "--no-malloc-env", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((out / "algorithms-cpu-quick.json").read_text())
    payload["_markdown"] = (out / "algorithms-cpu-quick.md").read_text()
    return payload


def _records(payload: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in payload["records"] if all(r[k] == v for k, v in match.items())]


def test_every_algorithm_is_timed_beside_its_per_task_loop(result: dict[str, Any]) -> None:
    timed = {r["op"] for r in _records(result, formulation="medmeta", status="ok")}
    assert timed == set(available("classification"))
    for name in available("classification"):
        ours = _records(result, op=name, formulation="medmeta", **{"pass": "meta-train"})
        assert ours and all(r["median_s"] > 0 and r["episodes_per_s"] > 0 for r in ours)
        loop = _records(result, op=name, formulation="loop", **{"pass": "meta-train"})
        assert loop, name
        for r in loop:  # the loop agreed with medmeta, so it was timed and has a ratio
            assert r["status"] == "ok", (name, r["status"])
            assert r["ratio_vs_medmeta"] > 0
            assert r["ratio_vs_medmeta"] == pytest.approx(r["median_s"] / ours[0]["median_s"])


def test_protonet_evaluation_has_ratios(result: dict[str, Any]) -> None:
    evaluation = _records(result, op="protonet", **{"pass": "evaluate"})
    names = {r["formulation"] for r in evaluation}
    assert {"medmeta", "loop", "easyfsl", "learn2learn"} <= names
    loop = next(r for r in evaluation if r["formulation"] == "loop")
    assert loop["ratio_vs_medmeta"] > 0


def test_peers_are_timed_or_reported_with_a_reason(result: dict[str, Any]) -> None:
    status = result["environment"]["peers"]
    assert set(status) == set(PEERS)
    peer_records = [r for r in result["records"] if r["kind"] == "peer"]
    assert {r["formulation"] for r in peer_records} == set(PEERS)
    for r in peer_records:
        if r["status"] == "ok":
            assert r["ratio_vs_medmeta"] > 0 and not status[r["formulation"]].startswith("not")
        else:  # not importable here: the reason is the import error
            assert r["status"].startswith("not available: "), r["status"]
            assert len(r["status"]) > len("not available: ") + 5
            assert r["status"] == status[r["formulation"]]


def test_every_formulation_is_checked_against_the_float64_loop(result: dict[str, Any]) -> None:
    checks = {(c["algorithm"], c["pass"]): c for c in result["checks"]}
    assert {a for a, _ in checks} == set(available("classification"))
    for (name, _), c in checks.items():
        assert c["dtype"] == "float64" and c["reference"] == "loop" and c["tolerance"] <= 1e-6
        forms = c["formulations"]
        assert forms["loop"]["status"] == "ok" and forms["loop"]["max_rel_diff"] == 0.0
        # medmeta itself is checked against the loop, not the other way round
        assert forms["medmeta"]["status"] == "ok", name
        assert forms["medmeta"]["max_rel_diff"] < 1e-8, (name, forms["medmeta"])
    # vmap through batch norm is known to be off (pytorch/functorch#534): timed, but flagged
    vmap = checks[("maml", "meta-train")]["formulations"]["vmap"]
    assert vmap["status"].startswith("flagged: disagrees") and vmap["max_rel_diff"] > 1e-4
    (timed_vmap,) = _records(result, op="maml", formulation="vmap")
    assert timed_vmap["status"].startswith("flagged") and timed_vmap["ratio_vs_medmeta"] > 0


def test_report_states_the_targets_and_the_load(result: dict[str, Any]) -> None:
    targets = result["targets"]
    assert len(targets) == 3
    why = (
        "not measured: this run was on CPU; run with --device cuda"
        if torch.cuda.is_available()
        else "not measured: no GPU on this machine"
    )
    assert all(t["status"] == why for t in targets)
    assert all(any(m["ratio"] for m in t["measured"]) for t in targets[:2])  # MAML ratios
    contention = result["environment"]["contention"]
    assert contention["points"] == 13 and contention["others_cpu_median"] is not None
    md = result["_markdown"]
    for heading in ("## Targets", "## Meta-training step", "## ProtoNet evaluation"):
        assert heading in md
    assert "Machine load" in md and why in md
    assert "Agreement with the float64 reference" in md
