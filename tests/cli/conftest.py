"""A small model folder trained once per session for the CLI tests (real blood-cell images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmeta.cli import main

TRAIN_ARGS = [
    "--data", "pbc_blood", "--classes", "0-4", "--val-classes", "5-7", "--algorithm", "protonet",
    "--ways", "3", "--shots", "2", "--queries", "4", "--steps", "12", "--meta-batch", "2",
    "--width", "16", "--val-every", "6", "--val-episodes", "20", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="session")
def train_args() -> list[str]:
    return list(TRAIN_ARGS)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "protonet"
    assert main(["train", *TRAIN_ARGS, "--out", str(out)]) == 0
    return out
