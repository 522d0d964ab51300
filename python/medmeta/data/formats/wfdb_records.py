"""WFDB records with beat annotations (PhysioNet: MIT-BIH Arrhythmia and the like) as one
window per annotated beat, read with the maintained ``wfdb`` package (optional:
``pip install medmeta[signals]``).

A record is a header ``NAME.hea``, its signal file(s) (``NAME.dat``) and an annotation file
``NAME.<annotator>`` (``atr``: the reference beat labels of MIT-BIH). Windows, classes and the
accounting of skipped beats are those of :func:`medmeta.data.formats.beats.beats_dataset`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    missing_extra,
)
from .beats import DEFAULT_WINDOW, BeatRecord, beat_classes, beats_dataset

__all__ = ["find_wfdb_records", "load_wfdb_beats", "read_wfdb_record"]

logger = logging.getLogger(__name__)

#: Bytes per sample of the uncompressed WFDB signal formats (to catch a truncated file).
_BYTES_PER_SAMPLE = {"8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5,
                     "310": 4 / 3, "311": 4 / 3, "24": 3.0, "32": 4.0}  # fmt: skip

Channels = Sequence[str | int] | None


def _wfdb() -> Any:
    try:
        import wfdb
    except ImportError as err:
        raise missing_extra("wfdb", err, extra="signals") from err
    return wfdb


def find_wfdb_records(path: str | os.PathLike[str]) -> list[Path]:
    """The header files of ``path``: a folder (all its ``*.hea``, sorted), a ``.hea`` file, or
    a record path without suffix (``folder/100`` for ``folder/100.hea``)."""
    p = Path(path)
    if p.is_dir():
        headers = sorted(p.glob("*.hea"))
        if not headers:
            raise DataError("no WFDB header files (*.hea) in this folder", str(p))
        return headers
    hea = p if p.suffix.lower() == ".hea" else p.with_name(p.name + ".hea")
    if not hea.is_file():
        raise DataError(f"WFDB header not found (expected {hea.name})", str(hea))
    return [hea]


def _check_signal_files(header: Any, hea: Path, max_bytes: int | None) -> None:
    """Refuse a missing or truncated signal file, or a record too large, before reading."""
    n_sig, sig_len = int(header.n_sig or 0), int(header.sig_len or 0)
    if n_sig < 1 or not header.file_name:
        raise DataError("the header declares no signals", str(hea))
    for fname in header.file_name:  # signal files sit beside the header, nowhere else
        if not isinstance(fname, str) or not fname or Path(fname).name != fname or fname == "..":
            raise DataError(f"signal file name {fname!r} is not a file beside the header",
                            str(hea))  # fmt: skip
    check_size(sig_len * n_sig * 8, max_bytes, hea, "the record")
    frame: dict[str, float] = {}
    for i, fname in enumerate(header.file_name):
        spf = (header.samps_per_frame or [1] * n_sig)[i] or 1
        frame[fname] = frame.get(fname, 0.0) + _BYTES_PER_SAMPLE.get(str(header.fmt[i]), 0) * spf
    offsets = dict(zip(header.file_name, header.byte_offset or [None] * n_sig, strict=False))
    for fname, per_frame in frame.items():
        dat = hea.parent / fname
        if not dat.is_file():
            raise DataError(f"the signal file {fname} named in the header is missing", str(hea))
        need = int(offsets.get(fname) or 0) + math.floor(sig_len * per_frame)
        if dat.stat().st_size < need:
            raise DataError(
                f"truncated signal file: {dat.stat().st_size:,} bytes, the header's "
                f"{sig_len:,} samples need {need:,}",
                str(dat),
            )


def _channel_indices(channels: Channels, names: list[str], hea: Path) -> list[int]:
    if channels is None:
        return list(range(len(names)))
    if isinstance(channels, (str, int)) or not channels:
        raise DataError(
            f"channels must be a list of names or indices, got {channels!r}", "channels"
        )
    out = []
    for c in channels:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            out.append(c)
        else:
            raise DataError(f"the record has no channel {c!r} (channels: {names})", str(hea))
    return out


def read_wfdb_record(
    header_path: str | os.PathLike[str],
    *,
    annotator: str = "atr",
    channels: Channels = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> BeatRecord:
    """One WFDB record and its annotations as a :class:`~.beats.BeatRecord` (signal
    ``[C, T]`` float64 in physical units, NaN where the record marks a sample missing).

    Raises:
        DataError: naming the file: a missing, corrupt or multi-segment header, a missing or
            truncated signal file, a missing channel, a missing or unreadable annotation file.
    """
    wfdb = _wfdb()
    hea = Path(header_path)
    base = str(hea.with_suffix(""))
    try:
        header = wfdb.rdheader(base)
    except Exception as err:  # wfdb raises ValueError, IndexError, ... on a corrupt header
        raise DataError(
            f"cannot read the WFDB header ({type(err).__name__}: {err})", str(hea)
        ) from err
    if not hasattr(header, "file_name") or getattr(header, "n_seg", None):
        raise DataError("multi-segment WFDB records are not supported", str(hea))
    if not header.fs or not 0 < float(header.fs) < math.inf:
        raise DataError(f"the header gives no valid sampling rate ({header.fs!r})", str(hea))
    _check_signal_files(header, hea, max_bytes)
    idx = _channel_indices(channels, list(header.sig_name or []), hea)
    try:
        record = wfdb.rdrecord(base, channels=idx, physical=True)
    except Exception as err:
        raise DataError(f"cannot read the signal ({type(err).__name__}: {err})", str(hea)) from err
    ann_path = Path(f"{base}.{annotator}")
    if not ann_path.is_file():
        raise DataError(f"annotation file not found (annotator={annotator!r})", str(ann_path))
    try:
        ann = wfdb.rdann(base, annotator)
    except Exception as err:
        raise DataError(
            f"cannot read the annotations ({type(err).__name__}: {err})", str(ann_path)
        ) from err
    return BeatRecord(
        name=hea.stem,
        source=str(hea),
        signal=np.asarray(record.p_signal, dtype=np.float64).T,
        fs=float(record.fs),
        channels=tuple(str(c) for c in record.sig_name),
        samples=np.asarray(ann.sample, dtype=np.int64),
        symbols=tuple(str(s) for s in ann.symbol),
    )


def load_wfdb_beats(
    path: str | os.PathLike[str],
    *,
    annotator: str = "atr",
    window: Sequence[float] = DEFAULT_WINDOW,
    channels: Channels = None,
    classes: Mapping[str, str] | None = None,
    fs: float | None = None,
    on_error: OnError = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> ArrayDataset:
    """One window per annotated beat of a WFDB record, or of every record of a folder.

    Args:
        path: a folder (every ``*.hea`` in it), a ``.hea`` file or a record path without
            suffix.
        annotator: annotation file suffix (``atr``: MIT-BIH reference labels).
        window: ``(before, after)`` around each beat annotation (the R peak): two ints are
            samples, two floats seconds (default 0.25 s before, 0.45 s after); the window is
            ``signal[:, s - before : s + after]``. Beats it would carry past a record's start
            or end are skipped and counted (``meta["edge_beats_skipped"]``).
        channels: channel names (e.g. ``["MLII"]``) or indices; default all. Records must
            share channel names unless chosen by index.
        classes: beat symbol -> class name; default the AAMI classes N, S, V, F, Q
            (:data:`~medmeta.data.formats.beats.AAMI_CLASSES`). Non-beat annotations are
            ignored; beats of unmapped symbols are counted in ``meta["unmapped_beats"]``.
        fs: resample every record to this rate (Hz) first (needs scipy).
        on_error: ``"skip"`` leaves out unreadable records (and those whose rate or channels
            differ from the first), listed in ``dataset.skipped``; by default they raise
            :class:`DataError`.
        max_bytes: refuse a record whose header claims more than this (decoded, float64).
        name: dataset name (default: the folder or record name).

    Returns:
        :class:`ArrayDataset` of float32 ``[N, C, before + after]`` windows, ``groups`` = the
        record names, ``extra["sample"]``/``extra["symbol"]`` and ``meta`` as described in
        :func:`~medmeta.data.formats.beats.beats_dataset` (``fs``, ``window``, ``channels``,
        ``records``, ``symbol_counts``, ...), plus ``source="wfdb"`` and ``annotator``.
    """
    check_on_error(on_error)
    beat_classes(classes)  # a bad mapping fails before any file is read
    if not isinstance(annotator, str) or not annotator or os.sep in annotator:
        raise DataError(f"annotator must be a file suffix such as 'atr', got {annotator!r}",
                        "annotator")  # fmt: skip
    headers = find_wfdb_records(path)
    records: list[BeatRecord] = []
    skipped: list[SkippedFile] = []
    for hea in headers:
        try:
            records.append(read_wfdb_record(hea, annotator=annotator, channels=channels,
                                            max_bytes=max_bytes))  # fmt: skip
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(err.source or str(hea), err.problem))
    if not records:
        reasons = "; ".join(str(s) for s in skipped[:5])
        raise DataError(f"no readable WFDB record ({reasons})", os.fspath(path))
    p = Path(path)
    meta = {"name": name or (p.resolve().name if p.is_dir() else records[0].name), "path": os.fspath(path),
            "source": "wfdb", "annotator": annotator}  # fmt: skip
    by_index = channels is not None and all(isinstance(c, int) for c in channels)
    return beats_dataset(records, window=window, classes=classes, fs=fs, on_error=on_error,
                         match_channel_names=not by_index, skipped=skipped, meta=meta)  # fmt: skip
