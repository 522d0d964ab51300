"""``medmeta federate``: its usage errors (before any Flower process starts), and end to end
in the simulation engine with differential privacy, its folder taken by ``medmeta eval``
and ``medmeta adapt``."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from medmeta.cli import main
from medmeta.cli._model import read_card

SITES = "a=pbc_blood@0-2,b=pbc_blood@2-4,c=pbc_blood@4-6"
TINY = ["--ways", "3", "--shots", "2", "--queries", "3", "--meta-batch", "1", "--width", "8",
        "--local-steps", "3", "--rounds", "2", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--sites", ""], 2, "--sites: expected comma-separated sites"),
        (["--sites", "a=pbc_blood,a=knee_xray_kl"], 2, "two sites share a name"),
        (["--sites", "pbc_blood,thyroid"], 2, "tables are not supported"),
        (["--sites", "pbc_blood,ecg_beats"], 2, "different kinds of data"),
        (["--sites", "pbc_blood@0-1,knee_xray_kl", "--ways", "3"], 3,
         "site pbc_blood has 2 classes, --ways 3 needs 3"),
        (["--sites", "pbc_blood,no_such_set"], 3, "not an embedded dataset"),
        (["--sites", "pbc_blood,knee_xray_kl", "--learner", "alpnet"], 2,
         "--learner alpnet: federate trains classifiers"),
        (["--sites", "pbc_blood,knee_xray_kl", "--algorithm", "fedavg", "--server-lr", "0.5",
          "--image-size", "28"], 2, "fedavg takes the sites' mean"),
        (["--sites", "pbc_blood,knee_xray_kl", "--sites-per-round", "3", "--image-size", "28"],
         2, "sites_per_round 3 is more than the 2 sites"),
        (["--sites", "pbc_blood,knee_xray_kl", "--dp-clip", "0", "--image-size", "28"], 2,
         "dp_clip must be a finite number > 0"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_flag(tmp_path: Path, capsys, args, status, message) -> None:
    assert main(["federate", *args, "--out", str(tmp_path / "m"), "--quiet"]) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.json").exists()


@pytest.mark.slow
def test_federate_with_privacy_then_eval_and_adapt(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fed"
    with warnings.catch_warnings():  # Ray's helper processes: see test_simulation.py
        warnings.simplefilter("ignore", ResourceWarning)
        status = main(["federate", "--sites", SITES, *TINY, "--algorithm", "reptile",
                       "--server-lr", "0.5", "--dp-clip", "0.5", "--dp-noise", "0.8",
                       "--delta", "1e-4", "--out", str(out), "--json"])  # fmt: skip
        gc.collect()
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    card = read_card(out)
    privacy = card["privacy"]
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(2):
        accountant.step(noise_multiplier=0.8, sample_rate=1.0)
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-12)
    assert summary["epsilon"] == privacy["epsilon"] and summary["delta"] == 1e-4
    assert (privacy["clip"], privacy["noise_multiplier"], privacy["sample_rate"]) == (0.5, 0.8, 1.0)
    history = card["federated"]["history"]
    assert [h["sites"] for h in history] == [["a", "b", "c"]] * 2
    assert all(h["noise_std"] == pytest.approx(0.4) for h in history)
    assert [h["server_step"] for h in history] == [0.5, 0.25]  # annealed over 2 rounds
    assert card["command"].startswith("medmeta federate --sites")
    # an ordinary model folder: eval and adapt take it
    assert main(["eval", "--model", str(out), "--data", "pbc_blood", "--classes", "5-7",
                 "--shots", "2", "--queries", "3", "--episodes", "10", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["ways"] == 3 and 0 <= result["accuracy"] <= 1 and result["episodes"] == 10
    adapted = tmp_path / "adapted"
    assert main(["adapt", "--model", str(out), "--support", "pbc_blood", "--classes", "5-7",
                 "--shots", "3", "--out", str(adapted), "--json"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    assert read_card(adapted)["kind"] == "adapted" and info["held_out_accuracy"] > 1 / 3


def test_site_data_from_npz_files_is_checked(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(12, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "two.npz", images=images, labels=np.repeat([0, 1], 6),
             class_names=np.array(["x", "y"]))  # fmt: skip
    args = ["federate", "--sites", f"{tmp_path / 'two.npz'},pbc_blood", "--ways", "3",
            "--out", str(tmp_path / "m")]  # fmt: skip
    assert main(args) == 3
    assert "site two has 2 classes, --ways 3 needs 3" in capsys.readouterr().err
