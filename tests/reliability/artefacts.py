"""Checks on the files a command leaves behind: every file under its final name loads
completely (``*.pt`` with ``torch.load(weights_only=True)``, JSON, ONNX with its weights
hash, PNG, NPZ, CSV), and two runs' outputs hold the same weights. Used by the kill
driver (after each ``SIGKILL``) and by the tests (uninterrupted vs resumed)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta._files import _temp_pid

#: Keys of a model card that name the run rather than describe the model.
VOLATILE_CARD_KEYS = ("command",)


def temp_files(folder: Path) -> list[str]:
    """Temporary files of :func:`medmeta._files.atomic_write_bytes` in ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if _temp_pid(p.name) is not None)


def _check_onnx(path: Path) -> None:
    import onnx

    from medmeta.export.metadata import verify_weights

    model = onnx.load_model_from_string(path.read_bytes())
    onnx.checker.check_model(model)
    if not verify_weights(path):
        raise ValueError("the weights do not hash to the metadata's weights_sha256")


def _check_csv(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or any(len(r) != len(rows[0]) for r in rows) or not text.endswith("\n"):
        raise ValueError("ragged or unterminated CSV")


def _check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im.load()


def check_file(path: Path) -> str:
    """``"ok"`` when ``path`` loads completely, else the error (type: message)."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".onnx":
            _check_onnx(path)
        elif suffix == ".csv":
            _check_csv(path)
        elif suffix == ".png":
            _check_png(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:300]
    return "ok"


def check_folder(folder: Path) -> dict[str, str]:
    """``{relative path: check_file result}`` for every non-temporary file in ``folder``."""
    if not folder.exists():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and _temp_pid(path.name) is None:
            out[str(path.relative_to(folder))] = check_file(path)
    return out


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two nested structures of tensors / arrays / plain data differ (exactly)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [where]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return [f"{where} keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [where]


def without(rows: Iterable[Mapping[str, Any]], keys: tuple[str, ...] = ("time",)) -> list[dict]:
    """History rows without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def compare_model_folders(ref: Path, got: Path) -> list[str]:
    """Differences between two ``medmeta train`` / ``adapt`` folders: checkpoint weights,
    optimiser and sampler state, history without times, the model card without the command,
    the stored support set and the history in ``log.json``."""
    diffs: list[str] = []
    for name in ("last.pt", "best.pt", "support.pt"):
        a, b = ref / name, got / name
        if not a.exists() and not b.exists():
            continue
        if a.exists() != b.exists():
            diffs.append(f"{name} exists in only one folder")
            continue
        x = torch.load(a, map_location="cpu", weights_only=True)
        y = torch.load(b, map_location="cpu", weights_only=True)
        x.pop("elapsed", None), y.pop("elapsed", None)  # wall clock
        for ckpt in (x, y):  # a new process's global numpy / Python RNGs start at random:
            for key in ("numpy", "python"):  # saved for resuming, not drawn from in training
                ckpt.get("rng", {}).pop(key, None)
        if "history" in x:
            x["history"], y["history"] = without(x["history"]), without(y["history"])
        diffs += [f"{name}{d}" for d in differences(x, y)]
    card_a, card_b = (json.loads((f / "model.json").read_text()) for f in (ref, got))
    for key in VOLATILE_CARD_KEYS:
        card_a.pop(key, None), card_b.pop(key, None)
    diffs += [f"model.json{d}" for d in differences(card_a, card_b)]
    if (ref / "log.json").exists():
        hist_a, hist_b = (without(json.loads((f / "log.json").read_text())["history"])
                          for f in (ref, got))  # fmt: skip
        diffs += [f"log.json{d}" for d in differences(hist_a, hist_b)]
    return diffs


def same_onnx(a: Path, b: Path) -> bool:
    """Two ONNX files hold the same graph, weights and metadata (byte for byte)."""
    return a.read_bytes() == b.read_bytes()
