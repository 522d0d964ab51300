"""Shared fixtures: devices (CUDA cases skip without a GPU), seeded generators and the
embedded blood-cell images."""

from __future__ import annotations

import logging

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed: draw on CPU, then move to the device."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def blood():
    """The embedded PBC blood-cell images (8 classes), loaded once per session."""
    from medmeta.data import load

    return load("pbc_blood")


@pytest.fixture(autouse=True)
def _logging_levels_of_the_cli_do_not_leak() -> object:
    """A command run in-process sets the ``medmeta`` logger's level (``configure_logging``)
    and a fuzz harness disables logging (``logging.disable``): restore both, so that a later
    test's ``caplog`` sees the records it expects."""
    logger = logging.getLogger("medmeta")
    level, disabled = logger.level, logging.root.manager.disable
    yield
    logger.setLevel(level)
    logging.disable(disabled)


@pytest.fixture(autouse=True)
def _native_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run the native kernels unless a test selects the reference itself."""
    monkeypatch.delenv("MEDMETA_BACKEND", raising=False)


# (device, dtype) pairs the kernels support: CPU float64/float32, CUDA all four.
DEVICE_DTYPES = [
    pytest.param(("cpu", torch.float64), id="cpu-float64"),
    pytest.param(("cpu", torch.float32), id="cpu-float32"),
    *[
        pytest.param(
            ("cuda", dt),
            id=f"cuda-{str(dt).removeprefix('torch.')}",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")],
        )
        for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    ],
]


@pytest.fixture(params=DEVICE_DTYPES)
def device_dtype(request: pytest.FixtureRequest) -> tuple[torch.device, torch.dtype]:
    device, dtype = request.param
    return torch.device(device), dtype
