"""``protocols-cpu.json`` combines several runs and records each run's command, date,
commit and environment; every result row names its run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _harness as H
from benchmarks import protocols

PROG = "python -m benchmarks protocols"


def fake_run(args) -> list[dict[str, Any]]:
    """Rows as ``protocols.run`` makes them, without meta-training anything."""
    return [
        {"protocol": protocol, "algorithm": name, "ways": 3, "shots": shots,
         "accuracy": 0.5 + 0.01 * args.steps, "ci95": 0.01, "auroc": 0.5, "ece": 0.1,
         "chance": 1 / 3, "meta_steps": args.steps, "fit_seconds": 0.0, "eval_seconds": 0.0}
        for protocol in protocols.PROTOCOLS
        for name in protocols._names(args)
        for shots in (1, 5)
    ]  # fmt: skip


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(protocols, "run", fake_run)
    return tmp_path / "results"


def argv(out: Path, threads: int, algorithms: str, steps: int) -> list[str]:
    return ["--algorithms", algorithms, "--steps", str(steps), "--out", str(out),
            "--threads", str(threads)]  # fmt: skip


def test_each_run_records_its_command_and_each_row_its_run(out: Path, keep_threads: int) -> None:
    first = argv(out, keep_threads, "protonet,matching", 7)
    second = argv(out, keep_threads, "maml", 3)
    assert protocols.main(first, prog=PROG) == 0
    assert protocols.main(second, prog=PROG) == 0
    report = json.loads((out / "protocols-cpu.json").read_text())
    runs = {r["id"]: r for r in report["runs"]}
    assert sorted(runs) == [1, 2]
    for run_id, args in ((1, first), (2, second)):
        run = runs[run_id]
        assert run["command"][1:] == ["-m", "benchmarks", "protocols", *args]
        assert run["environment"]["command"] == run["command"]
        assert run["date_utc"] and run["git_commit"] == run["environment"]["git_commit"]
        assert isinstance(run["git_dirty"], bool) and run["settings"]["steps"] == int(args[3])
    by_algorithm = {
        (r["algorithm"], r["shots"], r["protocol"]): r["run"] for r in report["results"]
    }
    assert len(by_algorithm) == 3 * 2 * 2
    assert {a: r for (a, _, _), r in by_algorithm.items()} == {
        "protonet": 1,
        "matching": 1,
        "maml": 2,
    }
    md = (out / "protocols-cpu.md").read_text()
    assert "- run 1: `" in md and "--algorithms protonet,matching --steps 7" in md
    assert "- run 2: `" in md and "--algorithms maml --steps 3" in md
    assert "| within-domain (blood cells) | maml | 53.0 ± 1.0 | 53.0 ± 1.0 | 3 | 2 |" in md

    # a third run of the first run's algorithms replaces its rows; the unused run goes
    assert protocols.main(argv(out, keep_threads, "protonet,matching", 9), prog=PROG) == 0
    report = json.loads((out / "protocols-cpu.json").read_text())
    assert [r["id"] for r in report["runs"]] == [2, 3]
    assert {r["algorithm"]: r["run"] for r in report["results"]} == {
        "maml": 2,
        "protonet": 3,
        "matching": 3,
    }


def test_a_file_with_one_command_keeps_it_only_for_the_rows_it_made() -> None:
    legacy = {
        "command": "python -m benchmarks.protocols --algorithms maml --steps 200",
        "settings": {"steps": 200},
        "results": fake_run(protocols.argparse.Namespace(algorithms="protonet,maml", steps=2)),
    }
    new_run = {"command": ["python", "-m", "benchmarks", "protocols"], "algorithms": ["snail"],
               "date_utc": "now", "git_commit": "abc", "git_dirty": False}  # fmt: skip
    report = protocols.combine(legacy, new_run, [])
    runs = {r["id"]: r for r in report["runs"]}
    rows = {r["algorithm"]: r["run"] for r in report["results"]}
    assert runs[rows["maml"]]["command"][-3:] == ["maml", "--steps", "200"]
    assert runs[rows["protonet"]]["command"] is None  # not recorded: said, not guessed
    assert "not recorded" in runs[rows["protonet"]]["note"]
    assert report["git_dirty"]  # runs of unknown provenance are not a clean commit
    assert report["git_commit"] == "abc"  # the run that wrote the file
    assert "(not recorded)" in protocols.markdown(report)


def test_protocols_refuse_a_dirty_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, keep_threads: int
) -> None:
    monkeypatch.setattr(H, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(H, "git_state", lambda repo=None: H.GitState("abc", ("x.py",)))
    monkeypatch.setattr(protocols, "run", lambda args: pytest.fail("ran from a dirty tree"))
    assert protocols.main(argv(tmp_path / "results", keep_threads, "maml", 1), prog=PROG) == 2
    assert "refusing to write results" in capsys.readouterr().err
    monkeypatch.setattr(protocols, "run", fake_run)
    allowed = [*argv(tmp_path / "results", keep_threads, "maml", 1), "--allow-dirty"]
    assert protocols.main(allowed, prog=PROG) == 0
    report = json.loads((tmp_path / "results" / "protocols-cpu.json").read_text())
    assert report["git_dirty"] and report["runs"][0]["environment"]["allow_dirty"]
    assert (
        "dirty tree: not a reference result"
        in (tmp_path / "results" / "protocols-cpu.md").read_text()
    )
