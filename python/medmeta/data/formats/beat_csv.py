"""ECG beats from CSV files, with numpy and the csv module only (no ``wfdb``): a signal file
(one column per channel, a time column optional) and an annotation file (``sample,symbol`` or
``time,symbol`` rows) give the dataset that
:func:`~medmeta.data.formats.wfdb_records.load_wfdb_beats` gives for the same record.

Signal file: an optional header row (channel names; a column named ``time``, ``t``,
``time_s``, ``seconds``, ``sec`` or ``elapsed time`` is the time in seconds or ``[h:]mm:ss.f``,
as PhysioNet's CSV export writes it, with its optional units row), then one row per sample.
An empty cell or ``nan`` is a missing sample (windows holding one are skipped and counted).
Annotation file: a header naming a ``sample`` (or ``time``) column and a ``symbol`` (or
``type``) column; other columns are ignored.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..dataset import ArrayDataset
from ..errors import DEFAULT_MAX_BYTES, DataError, check_size
from .beats import DEFAULT_WINDOW, BeatRecord, beat_classes, beats_dataset

__all__ = ["load_beat_csv"]

TIME_COLUMNS = ("time", "t", "time_s", "seconds", "sec", "elapsed time")
SAMPLE_COLUMNS = ("sample", "sample #", "sample_index", "samp")
SYMBOL_COLUMNS = ("symbol", "type")
MISSING = ("", "nan", "na", "-")
#: The most columns a signal or annotation file may have (a wider one is refused before it
#: is parsed: a million one-sample "channels" would take seconds and hundreds of MB).
MAX_COLUMNS = 1024

Rows = list[tuple[int, list[str]]]  # (line number, cells)


def _rows(path: str, delimiter: str | None, max_bytes: int | None) -> Rows:
    """Non-empty lines of a delimited text file as cells (quotes and spaces stripped)."""
    if not os.path.isfile(path):
        raise DataError("file not found", path)
    check_size(os.path.getsize(path), max_bytes, path, "the CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [(i + 1, ln) for i, ln in enumerate(f.read().splitlines()) if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the file as UTF-8 text ({err})", path) from err
    if not lines:
        raise DataError("the file is empty", path)
    if delimiter is None:
        delimiter = next((d for d in (",", "\t", ";") if d in lines[0][1]), " ")
    width = len(lines[0][1].split()) if delimiter == " " else lines[0][1].count(delimiter) + 1
    if width > MAX_COLUMNS:  # checked before the lines are parsed into cells
        raise DataError(f"line {lines[0][0]} has about {width:,} columns; a CSV record holds "
                        f"at most {MAX_COLUMNS} (channels and a time column)", path)  # fmt: skip
    if delimiter == " ":
        cells = [ln.split() for _, ln in lines]
    else:  # line by line: a stray quote must not swallow the lines after it
        try:
            cells = [next(csv.reader([ln], delimiter=delimiter), []) for _, ln in lines]
        except csv.Error as err:
            raise DataError(f"malformed CSV ({err})", path) from err
    clean = [[c.strip(" \t'") for c in row] for row in cells]
    return [(n, row) for (n, _), row in zip(lines, clean, strict=True)]


def _seconds(cell: str) -> float:
    """``12.5``, ``0:12.500`` or ``1:02:03.5`` -> seconds (ValueError otherwise)."""
    parts = cell.split(":")
    if len(parts) > 3:
        raise ValueError(cell)
    return sum(float(p) * 60**k for k, p in enumerate(reversed(parts)))


def _is_value(cell: str) -> bool:
    if cell.lower() in MISSING:
        return True
    try:
        _seconds(cell)
    except ValueError:
        return False
    return True


def _column(rows: Rows, j: int, name: str, path: str, *, clock: bool = False) -> np.ndarray:
    """Column ``j`` as float64 (missing cells NaN); a non-number names its line and column."""
    cells = [r[j] for _, r in rows]
    try:  # fast path: plain numbers
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and not np.isinf(values).any():
        return values
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        try:
            values[i] = math.nan if cell.lower() in MISSING else (
                _seconds(cell) if clock else float(cell))  # fmt: skip
        except ValueError:
            raise DataError(
                f"line {rows[i][0]}, column {name!r}: {cell!r} is not a number", path
            ) from None
        if math.isinf(values[i]):
            raise DataError(f"line {rows[i][0]}, column {name!r}: {cell!r} is infinite", path)
    return values


def _time_index(header: list[str] | None, time_column: str | int | None, path: str) -> int | None:
    if isinstance(time_column, int) and not isinstance(time_column, bool):
        return time_column
    if time_column is not None:
        if header is None or time_column not in header:
            raise DataError(f"time column {time_column!r} not in the header {header}", path)
        return header.index(time_column)
    if header is None:
        return None
    return next((j for j, c in enumerate(header) if c.lower() in TIME_COLUMNS), None)


def _read_signal(
    path: str,
    channels: Sequence[str | int] | None,
    time_column: str | int | None,
    delimiter: str | None,
    max_bytes: int | None,
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """``(signal [C, T] float64, channel names, times [T] in seconds or None)``."""
    rows = _rows(path, delimiter, max_bytes)
    header = None
    if not all(_is_value(c) for c in rows[0][1]):
        header, rows = rows[0][1], rows[1:]
        if rows and not all(_is_value(c) for c in rows[0][1]):  # a units row (PhysioNet)
            rows = rows[1:]
    if not rows:
        raise DataError("no samples", path)
    width = len(header) if header is not None else len(rows[0][1])
    for line, cells in rows:
        if len(cells) != width:
            raise DataError(f"line {line} has {len(cells)} cells, expected {width}", path)
    names = header if header is not None else [f"ch{j}" for j in range(width)]
    t_idx = _time_index(header, time_column, path)
    if t_idx is not None and not 0 <= t_idx < width:
        raise DataError(f"time column {t_idx} out of range for rows of {width} cells", path)
    free = [j for j in range(width) if j != t_idx]
    if channels is None:
        chosen = free
    elif isinstance(channels, (str, int)) or not channels:
        raise DataError(
            f"channels must be a list of names or indices, got {channels!r}", "channels"
        )
    else:
        chosen = []
        for c in channels:
            if isinstance(c, str) and c in names and names.index(c) in free:
                chosen.append(names.index(c))
            elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(free):
                chosen.append(free[c])
            else:
                raise DataError(f"no channel {c!r} (channels: {[names[j] for j in free]})", path)
    if not chosen:
        raise DataError("no signal columns besides the time column", path)
    signal = np.stack([_column(rows, j, names[j], path) for j in chosen])
    times = None if t_idx is None else _column(rows, t_idx, names[t_idx], path, clock=True)
    return signal, [names[j] for j in chosen], times


def _sampling_rate(times: np.ndarray | None, signal_fs: float | None, path: str) -> float:
    """The rate from ``signal_fs`` or an evenly spaced time column (checked against each
    other when both are there); a rate within 0.1% of a whole number of Hz is rounded to it."""
    ok = isinstance(signal_fs, numbers.Real) and not isinstance(signal_fs, bool)
    if signal_fs is not None and not (ok and 0 < signal_fs < math.inf):
        raise DataError(
            f"signal_fs must be a positive number of Hz, got {signal_fs!r}", "signal_fs"
        )
    if times is None:
        if signal_fs is None:
            raise DataError("no time column: give signal_fs= (the sampling rate in Hz)", path)
        return float(signal_fs)
    if len(times) < 2 or np.isnan(times).any() or not (np.diff(times) > 0).all():
        raise DataError("the time column must increase strictly, with no missing values", path)
    fs = (len(times) - 1) / (times[-1] - times[0])
    off = np.abs(times - times[0] - np.arange(len(times)) / fs).max() * fs
    if off > 0.5:
        raise DataError(f"the time column is not evenly sampled (a sample is {off:.2f} "
                        f"samples off a {fs:g} Hz grid)", path)  # fmt: skip
    if abs(fs - round(fs)) <= 1e-3 * fs:
        fs = float(round(fs))
    if signal_fs is not None and abs(fs - signal_fs) > 5e-3 * signal_fs:
        raise DataError(
            f"signal_fs={signal_fs:g} but the time column is sampled at {fs:g} Hz", path
        )
    return float(signal_fs if signal_fs is not None else fs)


def _read_annotations(
    path: str, delimiter: str | None, max_bytes: int | None
) -> tuple[str, np.ndarray, list[str]]:
    """``("sample" or "time", positions [A] float64, symbols)`` of an annotation CSV."""
    rows = _rows(path, delimiter, max_bytes)
    header = [c.lower() for c in rows[0][1]]
    sym = next((header.index(c) for c in SYMBOL_COLUMNS if c in header), None)
    pos = next((header.index(c) for c in SAMPLE_COLUMNS if c in header), None)
    kind = "sample"
    if pos is None:
        pos, kind = next((header.index(c) for c in TIME_COLUMNS if c in header), None), "time"
    if sym is None or pos is None:
        raise DataError(
            "expected a header with a 'sample' (or 'time') column and a 'symbol' column, "
            f"found {rows[0][1]}",
            path,
        )
    values, symbols = [], []
    for line, cells in rows[1:]:
        if len(cells) <= max(sym, pos) or not cells[sym]:
            raise DataError(f"line {line}: no {header[pos]!r} or no symbol", path)
        try:
            v = _seconds(cells[pos]) if kind == "time" else float(cells[pos])
        except ValueError:
            raise DataError(
                f"line {line}: {header[pos]} {cells[pos]!r} is not a number", path
            ) from None
        if not math.isfinite(v) or (kind == "sample" and not v.is_integer()):
            raise DataError(
                f"line {line}: {header[pos]} {cells[pos]!r} is not a sample index", path
            )
        values.append(v)
        symbols.append(cells[sym])
    if not values:
        raise DataError("no annotations", path)
    return kind, np.asarray(values), symbols


def _times_to_samples(t: np.ndarray, times: np.ndarray | None, fs: float) -> np.ndarray:
    """Annotation times -> sample indices: the nearest time stamp of the signal when it has
    a time column (times on its clock), else ``round(t * fs)``."""
    if times is None:
        return np.rint(t * fs).astype(np.int64)
    samples = np.rint((t - times[0]) * fs).astype(np.int64)
    inside = (samples >= 0) & (samples < len(times))
    right = np.clip(np.searchsorted(times, t[inside]), 1, len(times) - 1)
    nearer_left = (t[inside] - times[right - 1]) <= (times[right] - t[inside])
    samples[inside] = right - nearer_left
    return samples


def load_beat_csv(
    signal_csv: str | os.PathLike[str],
    annotation_csv: str | os.PathLike[str],
    *,
    signal_fs: float | None = None,
    window: Sequence[float] = DEFAULT_WINDOW,
    channels: Sequence[str | int] | None = None,
    classes: Mapping[str, str] | None = None,
    fs: float | None = None,
    time_column: str | int | None = None,
    record: str | None = None,
    delimiter: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> ArrayDataset:
    """One window per annotated beat of a recording stored as CSV.

    Args:
        signal_csv: samples, one column per channel (+ an optional time column).
        annotation_csv: ``sample,symbol`` or ``time,symbol`` rows (times on the signal's
            clock when it has a time column, else seconds from its first sample).
        signal_fs: sampling rate of ``signal_csv`` in Hz; needed without a time column,
            checked against it otherwise.
        window, classes, fs: as for :func:`~medmeta.data.formats.wfdb_records.load_wfdb_beats`
            (two ints = samples, two floats = seconds; default AAMI classes; resampling).
        channels: column names or indices among the non-time columns (default all).
        time_column: the time column's name or index (default: a column named ``time``,
            ``t``, ``time_s``, ``seconds``, ``sec`` or ``elapsed time``).
        record: the record name, the group of every beat (default: the signal file's stem).
        delimiter: default sniffed among ``,``, tab, ``;`` and whitespace.
        max_bytes: refuse files larger than this.
        name: dataset name (default: the record name).

    Returns:
        :class:`ArrayDataset` of float32 ``[N, C, before + after]`` windows, as described in
        :func:`~medmeta.data.formats.beats.beats_dataset`, with ``meta["source"] = "csv"``.
    """
    beat_classes(classes)  # a bad mapping fails before any file is read
    sig_path, ann_path = os.fspath(signal_csv), os.fspath(annotation_csv)
    signal, names, times = _read_signal(sig_path, channels, time_column, delimiter, max_bytes)
    rate = _sampling_rate(times, signal_fs, sig_path)
    kind, values, symbols = _read_annotations(ann_path, delimiter, max_bytes)
    samples = (
        values.astype(np.int64) if kind == "sample" else _times_to_samples(values, times, rate)
    )
    rec = BeatRecord(name=record or Path(sig_path).stem, source=sig_path, signal=signal, fs=rate,
                     channels=tuple(names), samples=samples, symbols=tuple(symbols))  # fmt: skip
    meta = {"name": name or rec.name, "path": sig_path, "source": "csv", "annotations": ann_path}
    return beats_dataset([rec], window=window, classes=classes, fs=fs, meta=meta)
