"""Training logs: one CSV row per logged step (appended as training goes) and a JSON file
with the configuration, the full history and the best validation result (rewritten
atomically at every checkpoint and at the end).

History rows are plain dicts with the keys of :data:`CSV_FIELDS` (``None`` where a value
does not apply, e.g. ``val_accuracy`` at steps without validation) plus ``extra`` (the
per-method step statistics of :class:`~medmeta.algorithms.base.StepResult`, JSON only).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmeta._files import atomic_write_bytes

__all__ = ["CSV_FIELDS", "TrainLog", "jsonable", "read_csv"]

#: Columns of ``log.csv``.
CSV_FIELDS = (
    "step",
    "loss",
    "accuracy",
    "val_accuracy",
    "val_ci95",
    "val_loss",
    "lr",
    "time",
)


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` and tuples by lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


class TrainLog:
    """``log.csv`` and ``log.json`` in ``out_dir``.

    Args:
        out_dir: the run folder.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        self.csv_path = self.dir / "log.csv"
        self.json_path = self.dir / "log.json"

    def reset(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite the CSV with ``history`` only (a fresh run, or a resume dropping the rows
        logged after the checkpoint)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for row in history:
            writer.writerow([_cell(row.get(k)) for k in CSV_FIELDS])
        atomic_write_bytes(self.csv_path, buffer.getvalue().encode())

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row to the CSV (flushed, so it survives a crash of the process)."""
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([_cell(row.get(k)) for k in CSV_FIELDS])
            f.flush()

    def write_json(self, payload: Mapping[str, Any]) -> None:
        """Atomically write ``payload`` (made strict-JSON with :func:`jsonable`)."""
        text = json.dumps(jsonable(payload), indent=1, allow_nan=False)
        atomic_write_bytes(self.json_path, text.encode())


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, float | int | None]]:
    """Rows of a ``log.csv`` with numbers parsed (empty cells are ``None``)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append(
                {
                    k: (None if v == "" else int(v) if k == "step" else float(v))
                    for k, v in row.items()
                }
            )
    return out
