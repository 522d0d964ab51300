"""The files the deployment engine reads: the Flower App folder ``flwr run`` packages (a
``pyproject.toml`` whose components are medmeta's ``ServerApp`` and ``ClientApp``, imported
from the installed package), the Flower configuration with the SuperLink connection
(``FLWR_HOME/config.toml``), each SuperNode's node config and the run file the
``ServerApp`` reads (plan, output folder, command).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmeta._files import atomic_write_bytes

__all__ = ["CONNECTION", "write_app", "write_connection", "write_node_config", "write_run"]

#: The SuperLink connection's name in the Flower configuration.
CONNECTION = "medmeta-local"


def _toml(data: Mapping[str, Any]) -> bytes:
    import tomli_w

    return tomli_w.dumps(dict(data)).encode("utf-8")


def write_app(folder: str | os.PathLike[str]) -> Path:
    """The Flower App folder (``pyproject.toml`` only: the apps live in medmeta)."""
    from medmeta import __version__
    from medmeta.federated.server_app import RUN_KEY

    project = {
        "project": {"name": "medmeta-federated", "version": __version__,
                    "description": "medmeta federated meta-learning", "license": "Apache-2.0",
                    "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "medmeta",
            "components": {"serverapp": "medmeta.federated.server_app:app",
                           "clientapp": "medmeta.federated.client_app:app"},
            "config": {RUN_KEY: ""},
        }}},
    }  # fmt: skip
    atomic_write_bytes(Path(folder) / "pyproject.toml", _toml(project))
    return Path(folder)


def write_connection(home: str | os.PathLike[str], address: str) -> Path:
    """``home/config.toml`` with the insecure SuperLink connection :data:`CONNECTION` at
    ``address`` (``host:port``), the default."""
    config = {
        "superlink": {"default": CONNECTION, CONNECTION: {"address": address, "insecure": True}}
    }
    return atomic_write_bytes(Path(home) / "config.toml", _toml(config))


def write_node_config(path: str | os.PathLike[str], site: Any) -> Path:
    """A SuperNode's ``--node-config`` TOML file for ``site`` (a
    :class:`~medmeta.federated.site.Site` whose ``data`` is a path or dataset name)."""
    if not isinstance(site.data, str):
        raise ValueError(
            f"site {site.name}: the deployment engine needs data a SuperNode can load (a "
            f"dataset name, an .npz, a folder), got {type(site.data).__name__}"
        )
    config = {"site": site.name, "data": site.data, "device": site.device}
    if site.classes:
        config["classes"] = site.classes
    return atomic_write_bytes(path, _toml(config))


def write_run(path: str | os.PathLike[str], run: Mapping[str, Any]) -> Path:
    """The run file (JSON) the deployed ``ServerApp`` reads, and beside it the
    ``--run-config`` TOML naming it."""
    from medmeta.federated.server_app import RUN_KEY

    target = Path(path)
    atomic_write_bytes(target, json.dumps(dict(run), indent=1).encode("utf-8"))
    return atomic_write_bytes(target.with_suffix(".toml"), _toml({RUN_KEY: str(target.resolve())}))
