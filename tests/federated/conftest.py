"""Fixtures of the federated tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower messages take their run id from the running task; outside a federation there
    is none, so the tests that build messages by hand set one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)
