"""Smoke test of the federated suite (``python -m benchmarks federated --quick``): the
blood-cell class-mix protocol with tiny settings in a child process (two Flower simulations:
plain and with differential privacy). Checks the structure of what it writes, that every
model is scored on both new-site tasks, and that the DP row carries Opacus's epsilon; nothing
about accuracy beyond the valid range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import federated as F

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two Ray clusters in a child process
def test_quick_run_writes_the_table(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks", "federated", "--quick", "--threads", "1",
               "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "federated-cpu-quick.json").read_text())
    models = [
        "initialisation",
        "federated (fedavg)",
        "federated (fedavg) + DP, sigma 0.5",
        "local only: A",
        "local only: B",
        "local only: C",
        "pooled (not federated)",
    ]
    ways = {"the labs' 5 cell types": 5, "3 new cell types": 3}
    rows = {(r["model"], r["target"]): r for r in report["results"]}
    assert sorted(rows) == sorted((m, t) for m in models for t in ways)
    assert all(r["protocol"] == "classmix" and r["episodes"] == 20 for r in rows.values())
    assert all(0 <= r["accuracy"] <= 1 and r["chance"] == 1 / ways[t] == 1 / r["ways"]
               for (_, t), r in rows.items())  # fmt: skip
    dp = rows[("federated (fedavg) + DP, sigma 0.5", "3 new cell types")]
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(report["settings"]["rounds"]):
        accountant.step(noise_multiplier=dp["dp_noise"], sample_rate=1.0)
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(dp["delta"]), rel=1e-12)
    assert rows[("federated (fedavg)", "3 new cell types")]["epsilon"] is None
    md = (tmp_path / "federated-cpu-quick.md").read_text()
    assert "| the labs' 5 cell types (5-way) | 3 new cell types (3-way) | ε at δ |" in md
    assert "| federated (fedavg) + DP, sigma 0.5 |" in md and "at 0.001 |" in md
    assert report["environment"]["flwr"] == "1.42.0"


def test_sites_share_no_example_and_hold_their_classes() -> None:
    for protocol in F.PROTOCOLS.values():
        sites = F.site_indices(protocol, seed=0)
        assert len(sites) == 3
        for source in {data for _, data, _ in sites}:
            index = [i for _, data, i in sites if data == source]
            merged = np.concatenate(index)
            assert len(np.unique(merged)) == len(merged)  # no example at two sites
    classmix = {name: sorted(set(raw.labels.tolist())) for name, _, raw in
                F.site_data(F.PROTOCOLS["classmix"], seed=0)}  # fmt: skip
    assert classmix == {"A": [0, 1, 2], "B": [2, 3, 4], "C": [0, 3, 4]}
    sizes = {name: len(raw) for name, _, raw in F.site_data(F.PROTOCOLS["classmix"], seed=0)}
    # 20% of each class held out for the new lab, the rest of a shared class halved
    assert sizes == {"A": 240 + 480 + 240, "B": 240 * 3, "C": 240 * 3}


def test_the_new_lab_holds_images_no_lab_has() -> None:
    sites, held = F.split(F.PROTOCOLS["classmix"], seed=0)
    assert list(held) == ["pbc_blood"] and len(held["pbc_blood"]) == 5 * 120
    at_sites = np.concatenate([index for _, _, index in sites])
    assert not set(held["pbc_blood"].tolist()) & set(at_sites.tolist())
    (known, examples), (novel, new_types) = F._targets(F.PROTOCOLS["classmix"], seed=0)
    assert (known.ways, novel.ways) == (5, 3)
    assert np.bincount(np.asarray(examples.labels)).tolist() == [120] * 5
    assert sorted(set(np.asarray(new_types.labels).tolist())) == [5, 6, 7]
    assert all(len(v) == 0 for v in F.split(F.PROTOCOLS["modalities"], seed=0)[1].values())
