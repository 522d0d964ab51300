"""Run federated meta-learning in Flower's deployment engine on this machine, as Flower
runs in practice: a ``flower-superlink`` (the server), one ``flower-supernode`` per site
(each knowing only its site name and data, from its node config), both insecure on
loopback, and the run submitted with ``flwr run`` to the SuperLink. The SuperLink starts
the ``ServerApp`` (:data:`medmeta.federated.server_app.app`) and each SuperNode a
``ClientApp`` (:data:`medmeta.federated.client_app.app`) per message.

Everything is written under ``OUT/flower/``: the Flower App folder, ``FLWR_HOME`` with the
connection, node configs, the run file and one log per process. Every process started is
stopped at the end, also on errors.

On separate machines the same commands apply (see docs/federated.md): start
``flower-superlink`` on the server, ``flower-supernode --superlink HOST:PORT --node-config
site.toml`` at each site, and ``flwr run`` the app folder against the SuperLink (with TLS
instead of ``--insecure``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmeta.federated import app_files, processes
from medmeta.federated.plan import FederatedPlan
from medmeta.federated.round_state import prepare_output
from medmeta.federated.site import Site

__all__ = ["run_deployment"]

logger = logging.getLogger(__name__)


def _environment(home: Path) -> dict[str, str]:
    """This environment plus Flower's home, no telemetry or update check, and this
    Python's scripts first on PATH (the SuperLink starts ``flower-superexec`` by name)."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               PYTHONUNBUFFERED="1")  # fmt: skip
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _site_for_node(site: Site) -> Site:
    """``site`` with a data path made absolute (a SuperNode may run elsewhere)."""
    if isinstance(site.data, str) and Path(site.data).exists():
        return Site(site.name, str(Path(site.data).resolve()), site.classes, site.device)
    return site


def _launch(
    sites: Sequence[Site], work: Path, env: dict[str, str], timeout: float
) -> tuple[list[subprocess.Popen[bytes]], int]:
    """Start the SuperLink and the SuperNodes; returns them and the SuperLink's port."""
    started: list[subprocess.Popen[bytes]] = []
    port = processes.free_port()
    link = processes.start(
        [processes.executable("flower-superlink"), "--insecure", "--host", "127.0.0.1",
         "--port", str(port), "--disable-runtime-dependency-installation"],
        work / "superlink.log", env, cwd=work,
    )  # fmt: skip
    started.append(link)
    try:
        processes.wait_for_port(port, link, timeout, "flower-superlink")
        for i, site in enumerate(sites):
            node_config = app_files.write_node_config(work / f"site-{i}.toml", _site_for_node(site))
            started.append(processes.start(
                [processes.executable("flower-supernode"), "--insecure", "--superlink",
                 f"127.0.0.1:{port}", "--port", str(processes.free_port()),
                 "--node-config", str(node_config)],
                work / f"supernode-{i}.log", env, cwd=work,
            ))  # fmt: skip
    except BaseException:
        processes.stop(started)
        raise
    logger.info("SuperLink on 127.0.0.1:%d with %d SuperNodes (%s)", port, len(sites),
                ", ".join(s.name for s in sites))  # fmt: skip
    return started, port


def run_deployment(
    plan: FederatedPlan,
    sites: Sequence[Site],
    out: str | os.PathLike[str],
    *,
    command: str | None = None,
    timeout: float = 3600.0,
    start_timeout: float = 120.0,
    resume: bool = True,
) -> dict[str, Any]:
    """Run ``plan`` in Flower's deployment engine on loopback, one SuperNode per site, and
    write the model folder ``out``; returns its card.

    Args:
        sites: the sites, their ``data`` a dataset name, .npz or folder each.
        timeout: seconds allowed for the whole run (``flwr run``).
        start_timeout: seconds allowed for the SuperLink to listen and the sites to connect.
        resume: go on after the last round finished in ``out`` by an earlier start of
            the same plan (:mod:`medmeta.federated.round_state`); ``False``: start over.

    Raises:
        ValueError: ``out`` holds the state of a run with another plan (with ``resume``).
        RuntimeError: a process failed or the run ended without a model (the message holds
            the end of the logs, kept in ``out/flower/``).
    """
    if sorted(s.name for s in sites) != sorted(plan.sites):
        raise ValueError(f"the sites {[s.name for s in sites]} do not match the plan's "
                         f"{list(plan.sites)}")  # fmt: skip
    folder = Path(out).resolve()
    work = folder / "flower"
    prepare_output(folder, plan, resume)
    app = app_files.write_app(work / "app")
    env = _environment(work / "home")
    run_config = app_files.write_run(work / "run.json", {
        "plan": plan.to_dict(), "out": str(folder), "command": command,
        "connect_timeout": start_timeout,
    })  # fmt: skip
    started, port = _launch(sites, work, env, start_timeout)
    try:
        app_files.write_connection(work / "home", f"127.0.0.1:{port}")
        with open(work / "flwr-run.log", "ab") as log:
            done = subprocess.run(
                [processes.executable("flwr"), "run", str(app), app_files.CONNECTION,
                 "--run-config", str(run_config), "--stream"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=work, timeout=timeout, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"the federated run did not finish within {timeout:g} s; logs in "
                           f"{work}") from err  # fmt: skip
    finally:
        processes.stop(started)
    card = folder / "model.json"
    if not card.is_file():
        raise RuntimeError(
            f"the deployment run ended (flwr run status {done.returncode}) without writing "
            f"{card}; logs in {work}:\n{processes.tail(work / 'flwr-run.log')}\n"
            f"{processes.tail(work / 'superlink.log')}"
        )
    return json.loads(card.read_text(encoding="utf-8"))
