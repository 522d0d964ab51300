"""Fixtures for the data-layer tests: the real sample files in ``files/`` and helpers that
make corrupted copies of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parent / "files"


@pytest.fixture
def files() -> Path:
    return FILES


@pytest.fixture
def ct_path() -> Path:
    return FILES / "CT_small.dcm"


@pytest.fixture
def mr_path() -> Path:
    return FILES / "MR_small.dcm"


@pytest.fixture
def anatomical_path() -> Path:
    return FILES / "anatomical.nii"


@pytest.fixture
def example4d_path() -> Path:
    return FILES / "example4d.nii.gz"


@pytest.fixture
def truncate():
    """``truncate(src, dst, keep)``: copy the first ``keep`` bytes (int) or fraction (float)."""

    def _truncate(src: Path, dst: Path, keep: float | int) -> Path:
        data = Path(src).read_bytes()
        n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
        Path(dst).write_bytes(data[:n])
        return Path(dst)

    return _truncate


@pytest.fixture
def copy():
    def _copy(src: Path, dst: Path) -> Path:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return Path(dst)

    return _copy
