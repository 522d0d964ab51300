"""SIGKILL at random moments, then the same command again: ``medmeta train`` ends with
exactly the weights (and optimiser state, history, model card) of an uninterrupted run for
every algorithm of every task, and no file under its final name is ever unloadable after a
kill; ``medmeta adapt`` and ``medmeta export`` never leave a half-written output.

The commands run in child processes of one driver process (``kill_driver.py``: forked, so
torch is imported once), each killed either by the driver after a seeded random delay or
by itself half-way through its k-th atomic write. Tiny settings (2-way 1-shot on 16x16
blood-cell images, a width-4 backbone, 4 steps, a checkpoint every step) keep each run
under a second.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from medmeta import algorithms
from medmeta.cli import main
from medmeta.train import load_checkpoint
from medmeta.train.logs import TrainLog
from reliability import artefacts

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="fork, /proc/self/fd and SIGKILL (Linux)"
)

DRIVER = Path(__file__).with_name("kill_driver.py")
#: Tiny runs: a checkpoint (and a validation) at every step.
COMMON = ["--steps", "4", "--meta-batch", "1", "--val-every", "1", "--val-episodes", "2",
          "--quiet"]  # fmt: skip
DATA = {
    "classification": ["--data", "pbc_blood", "--classes", "0-3", "--val-classes", "4-5",
                       "--ways", "2", "--shots", "1", "--queries", "1", "--width", "4",
                       "--image-size", "16"],
    "regression": ["--task", "regression", "--data", "{thyroid}", "--target", "T4U",
                   "--group-by", "referral_source", "--classes", "other,SVI,SVHC",
                   "--val-classes", "STMW", "--shots", "4", "--queries", "4", "--width", "8",
                   "--members", "2"],
    "segmentation": ["--task", "segmentation", "--data", "dsb_nuclei", "--shots", "1",
                     "--queries", "1", "--width", "4", "--image-size", "16"],
}  # fmt: skip
#: One inner step where a method has them (mamlpp: two, its multi-step loss needs them).
PARAMS = {
    "maml": ["inner_steps=1"], "fomaml": ["inner_steps=1"], "reptile": ["inner_steps=1"],
    "metasgd": ["inner_steps=1"], "anil": ["inner_steps=1"],
    "mamlpp": ["inner_steps=2", "msl_steps=2", "first_order_steps=2"],
}  # fmt: skip
FAST = ("classification", "protonet")
CASES = [(t, a) for t in DATA for a in algorithms.available(t)]
#: Groups of the embedded thyroid table kept for the regression runs (30 rows each).
THYROID_GROUPS = ("other", "SVI", "SVHC", "STMW")


def thyroid_subset(path: Path, rows: int = 30) -> Path:
    """The first ``rows`` rows with a T4U value of each of :data:`THYROID_GROUPS` of the
    embedded thyroid table, as a CSV (parsing all 9172 rows would dominate a tiny run)."""
    from medmeta.data import registry

    with registry.dataset_path("thyroid") as src, open(src, newline="") as f:
        reader = csv.DictReader(f)
        kept = [r for r in reader if r["referral_source"] in THYROID_GROUPS and r["T4U"]]
        fields = reader.fieldnames
    chosen = [r for g in THYROID_GROUPS for r in [r for r in kept if r["referral_source"] == g][:rows]]  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)  # type: ignore[arg-type]
        writer.writeheader()
        writer.writerows(chosen)
    return path


def _train(task: str, algorithm: str, out: Path) -> list[str]:
    params = [x for p in PARAMS.get(algorithm, []) for x in ("--param", p)]
    data = [a.format(thyroid=out.parent / "thyroid.csv") for a in DATA[task]]
    return ["train", *data, *COMMON, "--algorithm", algorithm, *params, "--out", str(out)]


def _train_job(task: str, algorithm: str, root: Path, **plan: Any) -> dict[str, Any]:
    name = f"{task}-{algorithm}"
    ref, out = root / f"{name}-ref", root / name
    return {"name": name, "ref_argv": _train(task, algorithm, ref),
            "argv": _train(task, algorithm, out), "watch": str(out), **plan}  # fmt: skip


#: The algorithm each task's warm-up run trains.
WARM_UP = {"classification": "protonet", "regression": "maml", "segmentation": "alpnet"}


def _adapt(model: Path, out: Path) -> list[str]:
    return ["adapt", "--model", str(model), "--support", "pbc_blood", "--classes", "6-7",
            "--shots", "2", "--out", str(out)]  # fmt: skip


def _export(model: Path, out: Path) -> list[str]:
    return ["export", "--model", str(model), "--form", "both", "--out", str(out / "model.onnx")]


def _drive(
    jobs: list[dict[str, Any]], root: Path, tasks: tuple[str, ...], timeout: float,
    warm: tuple[list[str], ...] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the driver over ``jobs``, warmed up with one training of each of ``tasks`` and
    the ``warm`` commands; its per-run results."""
    spec, result = root / "spec.json", root / "result.json"
    warm = (*(_train(t, WARM_UP[t], root / f"warm-{t}") for t in tasks), *warm)
    spec.write_text(json.dumps({"logs": str(root / "logs"), "jobs": jobs, "warm_up": list(warm)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(DRIVER), str(spec), str(result)], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def _check_runs(job: dict[str, Any]) -> int:
    """Every file loads after every kill, the last run succeeds and leaves no temporary
    file; returns how many runs were killed mid-way."""
    name = job["name"]
    assert job["ref"]["rc"] == 0, (name, job["ref"])
    for event in [*job["events"], job["final"]]:
        bad = {f: r for f, r in event["files"].items() if r != "ok"}
        assert not bad, (name, event["tag"], bad)
        assert event["killed"] or event["rc"] == 0, (name, event)
    assert job["final"]["rc"] == 0 and not job["final"]["killed"], (name, job["final"])
    assert job["final"]["temps"] == [], (name, job["final"]["temps"])  # killed writes swept
    assert any(e["killed"] for e in job["events"]), (name, "no kill landed mid-run")
    return sum(e["killed"] for e in job["events"])


def _summary(jobs: list[dict[str, Any]]) -> str:
    rows = []
    for job in jobs:
        torn = [e["writes"]["file"] for e in job["events"] if e["kind"] == "torn" and e["killed"]]
        kills = sum(e["killed"] for e in job["events"] if e["kind"] == "kill")
        rows.append(f"{job['name']}: ref {job['ref']['seconds']:.2f}s, torn writes of {torn}, "
                    f"{kills} timed kills landed")  # fmt: skip
    return "\n".join(rows)


def test_kill_train_and_adapt_protonet(tmp_path):
    """protonet (with the learning-curve plot): 2 torn writes and 2 random kills of
    ``train``, then a torn write and 2 random kills of ``adapt``."""
    train = _train_job(*FAST, tmp_path, torn=2, kills=2, seed=1, plots=True)
    model, adapted = Path(train["ref_argv"][-1]), tmp_path / "adapt-ref"
    jobs = [
        train,
        {"name": "adapt", "ref_argv": _adapt(model, adapted),
         "argv": _adapt(model, tmp_path / "adapt"), "watch": str(tmp_path / "adapt"),
         "torn": 1, "kills": 2, "seed": 2},
    ]  # fmt: skip
    results = _drive(jobs, tmp_path, ("classification",), timeout=300)
    print(_summary(results))
    assert sum(_check_runs(job) for job in results) >= 4
    assert artefacts.compare_model_folders(model, Path(train["watch"])) == []
    assert (Path(train["watch"]) / "learning_curves.png").exists()
    assert artefacts.compare_model_folders(adapted, tmp_path / "adapt") == []


@pytest.mark.slow  # ONNX exports take a few seconds each
def test_kill_export(tmp_path):
    """``medmeta export`` (classifier, embedder and head files) killed half-way through
    writes and at random: each file present is complete, the last run's files equal the
    uninterrupted run's byte for byte."""
    model, adapted = tmp_path / "model", tmp_path / "adapted"
    assert main(_train(*FAST, model)) == 0
    assert main(_adapt(model, adapted)) == 0
    job = {"name": "export", "ref_argv": _export(adapted, tmp_path / "export-ref"),
           "argv": _export(adapted, tmp_path / "export"), "watch": str(tmp_path / "export"),
           "torn": 2, "kills": 2, "seed": 3}  # fmt: skip
    warm = _export(adapted, tmp_path / "warm-export")
    (result,) = _drive([job], tmp_path, (), timeout=600, warm=(warm,))
    print(_summary([result]))
    assert _check_runs(result) >= 2
    names = sorted(p.name for p in (tmp_path / "export-ref").iterdir())
    assert names == ["model.embed.onnx", "model.head.onnx", "model.onnx"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == names
    for name in names:
        assert artefacts.same_onnx(tmp_path / "export-ref" / name, tmp_path / "export" / name)


@pytest.mark.slow  # 17 algorithms x 6 runs of ~0.5 s
def test_kill_and_resume_every_algorithm(tmp_path):
    """Every other (task, algorithm): a torn write and three random kills, then the weights,
    optimiser state, history and card equal the uninterrupted run's."""
    thyroid_subset(tmp_path / "thyroid.csv")
    jobs = [_train_job(t, a, tmp_path, torn=1, kills=3, seed=10 + i)
            for i, (t, a) in enumerate(CASES) if (t, a) != FAST]  # fmt: skip
    results = _drive(jobs, tmp_path, tuple(DATA), timeout=900)
    print(_summary(results))
    for job, spec in zip(results, jobs, strict=True):
        _check_runs(job)
        ref = Path(spec["ref_argv"][-1])
        diffs = artefacts.compare_model_folders(ref, Path(spec["watch"]))
        assert diffs == [], job["name"]


def test_kill_between_last_checkpoint_and_log_json(monkeypatch, tmp_path):
    """The process dies after the last step's last.pt and before its log.json: re-running
    the command finds training done and must still leave log.json with every step."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(_train(*FAST, ref)) == 0
    real = TrainLog.write_json

    def dies_at_the_last_step(self: TrainLog, payload: dict[str, Any]) -> None:
        if payload["step"] == 4:
            raise SystemExit(137)  # as SIGKILL: nothing after this point is written
        real(self, payload)

    with monkeypatch.context() as m:
        m.setattr(TrainLog, "write_json", dies_at_the_last_step)
        with pytest.raises(SystemExit):
            main(_train(*FAST, out))
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert main(_train(*FAST, out)) == 0
    assert artefacts.compare_model_folders(ref, out) == []  # log.json holds all 4 steps
