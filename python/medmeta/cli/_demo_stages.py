"""The demo's stage timer: one progress line per stage (``[i/7] text``) and the seconds each
stage took, shared by the classification and the regression pipelines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from medmeta._files import atomic_write_bytes

__all__ = ["STAGES", "Stages"]

#: The stages of a demo run, in order (the keys of ``timings.json``, with ``total``).
STAGES = ("train", "evaluate", "adapt", "export", "verify", "latency", "report")


class Stages:
    """Times the stages and says each one's start on one line (``say``)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._start = 0.0

    def start(self, name: str, text: str) -> None:
        """Stop the running stage and start ``name`` (one of :data:`STAGES`)."""
        self.stop()
        self._name, self._start = name, time.perf_counter()
        self.say(f"[{len(self.seconds) + 1}/{len(STAGES)}] {text}")

    def stop(self) -> None:
        """Record the running stage's seconds (nothing when none runs)."""
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._start, 2)
            self._name = None

    def finish(self, folder: Path, wall: float) -> None:
        """Stop the running stage, record ``total`` (seconds since ``wall``, a
        ``time.perf_counter()`` value) and write ``folder/timings.json`` atomically."""
        self.stop()
        self.seconds["total"] = round(time.perf_counter() - wall, 2)
        atomic_write_bytes(
            folder / "timings.json", (json.dumps(self.seconds, indent=2) + "\n").encode()
        )
