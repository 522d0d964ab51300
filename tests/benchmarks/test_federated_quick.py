"""Smoke test of the federated suite (``python -m benchmarks federated --quick``): the
blood-cell class-mix protocol with tiny settings in a child process (two Flower simulations:
plain and with differential privacy). Checks the structure of what it writes, that every
model is scored on the same new-site episodes, and that the DP row carries Opacus's
epsilon; nothing about accuracy beyond the valid range."""

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
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"initialisation", "federated (fedavg)", "federated (fedavg) + DP, sigma 0.5",
                         "local only: A", "local only: B", "local only: C",
                         "pooled (not federated)"}  # fmt: skip
    assert all(r["protocol"] == "classmix" and r["episodes"] == 20 for r in rows.values())
    assert all(0 <= r["accuracy"] <= 1 and r["chance"] == 1 / 3 for r in rows.values())
    dp = rows["federated (fedavg) + DP, sigma 0.5"]
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(report["settings"]["rounds"]):
        accountant.step(noise_multiplier=dp["dp_noise"], sample_rate=1.0)
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(dp["delta"]), rel=1e-12)
    assert rows["federated (fedavg)"]["epsilon"] is None
    md = (tmp_path / "federated-cpu-quick.md").read_text()
    assert "| classmix | federated (fedavg) + DP, sigma 0.5 |" in md and "at 0.001 |" in md
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
    assert sizes == {"A": 300 + 600 + 300, "B": 300 * 3, "C": 300 * 3}  # shared classes halved
