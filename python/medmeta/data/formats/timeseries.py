"""Time series as fixed-length windows (e.g. ECG beats): arrays, CSV, and windows cut from a
raw trace. Datasets hold float32 ``[N, C, L]`` (channels, then time).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dataset import ArrayDataset
from ..errors import (
    DEFAULT_MAX_BYTES,
    DataError,
    OnError,
    SkippedFile,
    check_on_error,
    check_size,
    report_skipped,
)

__all__ = ["load_timeseries_csv", "sliding_windows", "timeseries_from_arrays", "windows_around"]

logger = logging.getLogger(__name__)


def _as_series(x: Any, source: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"series must be numeric, got dtype {arr.dtype}", source)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise DataError(f"series must have shape [N, L] or [N, C, L], got {arr.shape}", source)
    return arr.astype(np.float32, copy=False)


def timeseries_from_arrays(
    x: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    groups: Any = None,
    *,
    name: str | None = None,
) -> ArrayDataset:
    """Wrap windows ``[N, L]`` or ``[N, C, L]`` and labels ``[N]`` as a dataset of float32
    ``[N, C, L]``; NaN/inf or bad labels raise :class:`DataError`."""
    arr = _as_series(x, "x")
    meta = {"name": name or "timeseries", "format": "timeseries"}
    return ArrayDataset(arr, labels, class_names, groups, meta=meta)


def _parse_float(cell: str, line: int, col: int, source: str) -> float:
    try:
        v = float(cell)
    except ValueError as err:
        raise DataError(f"line {line}, column {col + 1}: {cell!r} is not a number", source) from err
    if not math.isfinite(v):
        raise DataError(
            f"line {line}, column {col + 1}: value {cell!r} is NaN or infinite; "
            "windows must be complete (no missing samples)",
            source,
        )
    return v


def load_timeseries_csv(
    path: str | os.PathLike[str],
    *,
    label_column: int | str = 0,
    header: bool | None = None,
    channels: int = 1,
    delimiter: str | None = None,
    class_names: Sequence[str] | None = None,
    on_error: OnError = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> ArrayDataset:
    """Read one window per row: a label column and ``channels x L`` values (UCR layout).

    Args:
        path: ``.csv``/``.tsv``/``.txt`` file (delimiter sniffed among ``,``, tab, ``;`` and
            whitespace unless given).
        label_column: index (default 0, as in the UCR archive) or header name of the label.
        header: whether the first row is a header (default: detected, a first row whose value
            cells are not all numbers).
        channels: number of channels per row; the values are channel-major
            (``c0[0..L-1], c1[0..L-1], ...``).
        class_names: fix the classes in label order; labels outside it raise.
        on_error: ``"skip"`` drops malformed rows (reported in ``dataset.skipped`` as
            ``path:line``); by default a ragged row, a non-number or a NaN raises
            :class:`DataError` naming the line.
        max_bytes: refuse files larger than this.

    Returns:
        :class:`ArrayDataset` with ``x`` float32 ``[N, channels, L]``.
    """
    check_on_error(on_error)
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError("file not found", p)
    check_size(os.path.getsize(p), max_bytes, p, "the series file")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the file as UTF-8 text ({err})", p) from err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError("the file is empty", p)
    if delimiter is None:
        first = lines[0]
        delimiter = next((d for d in (",", "\t", ";") if d in first), " ")
    if delimiter == " ":
        rows = [ln.split() for ln in lines]
    else:
        rows = list(csv.reader(lines, delimiter=delimiter))
    if header is None:
        cells = [
            c
            for i, c in enumerate(rows[0])
            if i != (label_column if isinstance(label_column, int) else -1)
        ]
        header = not all(_is_number(c) for c in cells)
    head = rows[0] if header else None
    body = rows[1:] if header else rows
    start_line = 2 if header else 1
    if isinstance(label_column, str):
        if head is None or label_column not in head:
            raise DataError(
                f"label column {label_column!r} not found in the header "
                f"{head if head else '(no header row)'}",
                p,
            )
        lc = head.index(label_column)
    else:
        lc = label_column
    if not body:
        raise DataError("no data rows", p)
    width = len(body[0])
    if not 0 <= (lc if lc >= 0 else width + lc) < width:
        raise DataError(f"label column {label_column} out of range for rows of {width} cells", p)
    lc = lc if lc >= 0 else width + lc
    n_values = width - 1
    if channels < 1 or n_values % channels or n_values == 0:
        raise DataError(
            f"rows have {n_values} values, not a positive multiple of channels={channels}", p
        )
    series: list[list[float]] = []
    raw_labels: list[str] = []
    skipped: list[SkippedFile] = []
    for i, row in enumerate(body):
        line = start_line + i
        try:
            if len(row) != width:
                raise DataError(
                    f"line {line} has {len(row)} cells but line {start_line} has "
                    f"{width}; windows must all have the same length",
                    p,
                )
            label = row[lc].strip()
            if label == "" or label.lower() in ("nan", "na"):
                raise DataError(f"line {line}: missing label", p)
            vals = [_parse_float(c, line, j, p) for j, c in enumerate(row) if j != lc]
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(f"{p}:{line}", err.problem))
            continue
        series.append(vals)
        raw_labels.append(label)
    report_skipped(logger, skipped, len(body))
    if not series:
        raise DataError("no valid rows", p)
    if class_names is None:
        uniq = set(raw_labels)
        if all(_is_number(v) for v in uniq):
            names = [_fmt(v) for v in sorted(uniq, key=float)]
            raw_labels = [_fmt(v) for v in raw_labels]
        else:
            names = sorted(uniq)
    else:
        names = [str(c) for c in class_names]
        if all(_is_number(v) for v in raw_labels) and all(_is_number(c) for c in names):
            raw_labels = [_fmt(v) for v in raw_labels]
            names = [_fmt(c) for c in names]
        unknown = sorted(set(raw_labels) - set(names))
        if unknown:
            raise DataError(f"labels {unknown[:10]} are not in class_names", p)
    lookup = {c: k for k, c in enumerate(names)}
    x = np.asarray(series, dtype=np.float32).reshape(len(series), channels, -1)
    y = np.array([lookup[v] for v in raw_labels], dtype=np.int64)
    meta = {"name": name or os.path.splitext(os.path.basename(p))[0], "format": "timeseries"}
    return ArrayDataset(x, y, names, meta=meta, skipped=skipped)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _fmt(v: str) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else str(f)


def sliding_windows(signal: Any, length: int, stride: int | None = None) -> np.ndarray:
    """Fixed-length windows of a trace ``[L]`` or ``[C, L]`` -> float32 ``[N, C, length]``."""
    sig = np.asarray(signal, dtype=np.float32)
    if sig.ndim == 1:
        sig = sig[None]
    if sig.ndim != 2:
        raise DataError(f"signal must be [L] or [C, L], got {sig.shape}", "signal")
    stride = length if stride is None else int(stride)
    if length < 1 or stride < 1:
        raise DataError(f"length and stride must be >= 1, got {length}, {stride}", "length")
    if sig.shape[1] < length:
        raise DataError(
            f"signal of {sig.shape[1]} samples is shorter than one window of {length}", "signal"
        )
    win = np.lib.stride_tricks.sliding_window_view(sig, length, axis=1)[:, ::stride]
    return np.ascontiguousarray(np.moveaxis(win, 1, 0))


def windows_around(
    signal: Any,
    centers: Any,
    before: int,
    after: int,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    *,
    on_error: OnError = "raise",
) -> ArrayDataset:
    """Cut ``signal[c - before : c + after]`` around each center (e.g. ECG R peaks).

    Args:
        signal: trace ``[L]`` or ``[C, L]``.
        centers: sample indices ``[N]``.
        before, after: samples kept before (inclusive) and after (exclusive) each center.
        labels: ``[N]`` labels (default: all 0).
        class_names: class names for the labels.
        on_error: windows that cross the signal's ends raise :class:`DataError` naming the
            center; with ``"skip"`` they are dropped and reported in ``dataset.skipped``.

    Returns:
        :class:`ArrayDataset` with ``x`` float32 ``[N, C, before + after]`` and
        ``extra["center"]``.
    """
    check_on_error(on_error)
    sig = np.asarray(signal, dtype=np.float32)
    if sig.ndim == 1:
        sig = sig[None]
    if sig.ndim != 2:
        raise DataError(f"signal must be [L] or [C, L], got {sig.shape}", "signal")
    if not np.isfinite(sig).all():
        raise DataError("signal contains NaN or infinite samples", "signal")
    c = np.asarray(centers)
    if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
        raise DataError(f"centers must be a 1-D integer array, got {c.dtype} {c.shape}", "centers")
    lab = np.zeros(c.shape[0], dtype=np.int64) if labels is None else np.asarray(labels)
    if lab.shape != c.shape:
        raise DataError(f"{c.shape[0]} centers but labels of shape {lab.shape}", "labels")
    if before < 0 or after < 1:
        raise DataError(f"need before >= 0 and after >= 1, got {before}, {after}", "before")
    keep, skipped = [], []
    for i, ci in enumerate(c.tolist()):
        lo, hi = ci - before, ci + after
        if lo < 0 or hi > sig.shape[1]:
            err = (
                f"window {i} around sample {ci} needs samples {lo}..{hi - 1} but the signal "
                f"has 0..{sig.shape[1] - 1}"
            )
            if on_error == "raise":
                raise DataError(err, "centers")
            skipped.append(SkippedFile(f"centers[{i}]", err))
            continue
        keep.append(i)
    report_skipped(logger, skipped, c.shape[0])
    x = (
        np.stack([sig[:, c[i] - before : c[i] + after] for i in keep])
        if keep
        else np.zeros((0, sig.shape[0], before + after), np.float32)
    )
    return ArrayDataset(
        x,
        lab[keep],
        class_names,
        meta={"name": "windows", "format": "timeseries"},
        extra={"center": c[keep]},
        skipped=skipped,
    )
