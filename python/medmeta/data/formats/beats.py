"""Beat-annotated recordings (ECG) as one window per beat: the shared core of the WFDB and
CSV readers (:mod:`.wfdb_records`, :mod:`.beat_csv`).

A :class:`BeatRecord` is one recording (``signal`` ``[C, T]`` in physical units, ``fs`` Hz,
channel names) with its annotations (sample indices and symbols). :func:`beats_dataset` cuts
``signal[:, s - before : s + after]`` around every beat annotation ``s`` and labels it by
the class of its symbol: by default the ANSI/AAMI EC57 heartbeat classes N, S, V, F, Q as
grouped from the MIT-BIH symbols by de Chazal, O'Dwyer and Reilly, "Automatic classification
of heartbeats using ECG morphology and heartbeat interval features", IEEE Trans. Biomed.
Eng. 51(7), 2004. Non-beat annotations (rhythm changes ``+``, signal quality ``~``,
artefacts ``|``, waveform marks, comments) are ignored. Beats whose window crosses the start
or end of their record, or holds missing (NaN) samples, are skipped and counted in the
dataset's ``meta`` and in the log, never silently. ``groups`` are the record names, so one
patient's beats stay on one side of a split.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from ..dataset import ArrayDataset
from ..errors import DataError, OnError, SkippedFile, report_skipped

__all__ = [
    "AAMI_CLASSES",
    "BEAT_SYMBOLS",
    "DEFAULT_WINDOW",
    "NON_BEAT_SYMBOLS",
    "BeatRecord",
    "beat_classes",
    "beats_dataset",
    "resample_record",
    "window_samples",
]

logger = logging.getLogger(__name__)

#: The beat annotation symbols of WFDB (MIT-BIH and the other PhysioNet databases).
BEAT_SYMBOLS: dict[str, str] = {
    "N": "normal beat",
    "L": "left bundle branch block beat",
    "R": "right bundle branch block beat",
    "B": "bundle branch block beat (unspecified)",
    "A": "atrial premature beat",
    "a": "aberrated atrial premature beat",
    "J": "nodal (junctional) premature beat",
    "S": "supraventricular premature or ectopic beat",
    "V": "premature ventricular contraction",
    "r": "R-on-T premature ventricular contraction",
    "F": "fusion of ventricular and normal beat",
    "e": "atrial escape beat",
    "j": "nodal (junctional) escape beat",
    "n": "supraventricular escape beat",
    "E": "ventricular escape beat",
    "/": "paced beat",
    "f": "fusion of paced and normal beat",
    "Q": "unclassifiable beat",
    "?": "beat not classified during learning",
}

#: Non-beat WFDB annotations (ignored when cutting beats; named in error messages).
NON_BEAT_SYMBOLS: dict[str, str] = {
    "+": "rhythm change", "~": "signal quality change", "|": "isolated QRS-like artifact",
    "!": "ventricular flutter wave", "[": "start of ventricular flutter/fibrillation",
    "]": "end of ventricular flutter/fibrillation", "x": "non-conducted P-wave",
    "(": "waveform onset", ")": "waveform end", "p": "P-wave peak", "t": "T-wave peak",
    "u": "U-wave peak", "^": "non-conducted pacer spike", "s": "ST change",
    "T": "T-wave change", "*": "systole", "D": "diastole", '"': "comment",
    "=": "measurement", "@": "link to external data", "`": "PQ junction", "'": "J point",
}  # fmt: skip

#: MIT-BIH beat symbol -> AAMI EC57 class (de Chazal et al. 2004); B (bundle branch block,
#: unspecified) joins L and R in N, n (supraventricular escape) joins the escapes e and j in
#: N, r (R-on-T) joins V, and ? (unclassified) joins Q. Class order: N, S, V, F, Q.
AAMI_CLASSES: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "B": "N", "e": "N", "j": "N", "n": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "r": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q", "?": "Q",
}  # fmt: skip

#: Default window: 0.25 s before and 0.45 s after the beat annotation (R peak).
DEFAULT_WINDOW = (0.25, 0.45)


@dataclass(frozen=True)
class BeatRecord:
    """One recording and its annotations.

    Attributes:
        name: record name (the group of its beats).
        source: the file it came from (for messages).
        signal: ``[C, T]`` samples in physical units (NaN = missing sample).
        fs: sampling rate in Hz.
        channels: ``C`` channel names.
        samples: ``[A]`` int64 annotation positions (sample indices).
        symbols: ``A`` annotation symbols.
    """

    name: str
    source: str
    signal: np.ndarray
    fs: float
    channels: tuple[str, ...]
    samples: np.ndarray
    symbols: tuple[str, ...]


def window_samples(window: Sequence[float], fs: float) -> tuple[int, int]:
    """``(before, after)`` in samples: two ints are samples, two floats are seconds
    (rounded to the nearest sample at ``fs``)."""
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
        raise DataError(f"window must be (before, after), got {window!r}", "window")
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in window)
    floats = all(isinstance(v, (float, np.floating)) for v in window)
    if not (ints or floats):
        raise DataError(
            f"window must be two ints (samples) or two floats (seconds), got {window!r}", "window"
        )
    if floats and not all(math.isfinite(v) for v in window):
        raise DataError(f"window must be finite, got {window!r}", "window")
    before, after = (int(v) for v in window) if ints else (round(v * fs) for v in window)
    if before < 0 or after < 1:
        raise DataError(
            f"window needs before >= 0 and after >= 1 samples, got {before} and {after} "
            f"(from {window!r} at {fs:g} Hz)",
            "window",
        )
    return before, after


def beat_classes(classes: Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """``(symbol -> class name, class names in order of first appearance)``; ``None`` gives
    :data:`AAMI_CLASSES`. Keys must be beat symbols (:data:`BEAT_SYMBOLS`)."""
    if classes is None:
        mapping = dict(AAMI_CLASSES)
    else:
        if not isinstance(classes, Mapping) or not classes:
            raise DataError(
                "classes must be a non-empty mapping of beat symbols to class names, e.g. "
                f"{{'N': 'normal', 'V': 'ventricular'}}, got {classes!r}",
                "classes",
            )
        mapping = {}
        for symbol, name in classes.items():
            if symbol not in BEAT_SYMBOLS:
                what = (
                    f"a non-beat annotation ({NON_BEAT_SYMBOLS[symbol]})"
                    if symbol in NON_BEAT_SYMBOLS
                    else "not a WFDB beat symbol"
                )
                raise DataError(
                    f"{symbol!r} is {what}; beat symbols are {' '.join(BEAT_SYMBOLS)}", "classes"
                )
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"the class of {symbol!r} must be a name, got {name!r}", "classes")
            mapping[symbol] = name
    return mapping, list(dict.fromkeys(mapping.values()))


def resample_record(record: BeatRecord, fs: float) -> BeatRecord:
    """``record`` at ``fs`` Hz (``scipy.signal.resample_poly``, a polyphase anti-aliasing
    filter); annotation positions are scaled and rounded to the nearest new sample."""
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not 0 < fs < math.inf:
        raise DataError(f"fs must be a positive number of Hz, got {fs!r}", "fs")
    if math.isclose(fs, record.fs, rel_tol=1e-9):
        return record
    try:
        from scipy.signal import resample_poly
    except ImportError as err:
        raise ImportError(
            f"resampling to fs={fs:g} needs scipy (scipy.signal.resample_poly), which is not "
            "installed: pip install scipy, or leave fs unset to keep the records' own rate"
        ) from err
    ratio = Fraction(fs).limit_denominator(1000) / Fraction(record.fs).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    if max(up, down) > 10_000:
        raise DataError(
            f"cannot resample {record.fs:g} Hz to {fs:g} Hz with a small rational factor "
            f"({up}/{down})",
            "fs",
        )
    signal = resample_poly(record.signal, up, down, axis=1)
    samples = np.rint(record.samples * (up / down)).astype(np.int64)
    return replace(record, signal=signal, fs=record.fs * up / down, samples=samples)


def _consistent(
    records: Sequence[BeatRecord], match_names: bool, on_error: OnError, skipped: list
) -> list[BeatRecord]:
    """The records sharing the first one's rate and channels (others raise, or are skipped)."""
    first, out = records[0], [records[0]]
    for rec in records[1:]:
        problem = None
        if not math.isclose(rec.fs, first.fs, rel_tol=1e-6):
            problem = (f"sampled at {rec.fs:g} Hz, record {first.name} at {first.fs:g} Hz; "
                       "pass fs= to resample all records to one rate")  # fmt: skip
        elif len(rec.channels) != len(first.channels) or (
            match_names and rec.channels != first.channels
        ):
            problem = (f"has channels {list(rec.channels)}, record {first.name} has "
                       f"{list(first.channels)}; pick the same leads with channels=")  # fmt: skip
        if problem is None:
            out.append(rec)
        elif on_error == "raise":
            raise DataError(f"record {rec.name} {problem}", rec.source)
        else:
            skipped.append(SkippedFile(rec.source, problem))
    if not match_names and any(r.channels != first.channels for r in out):
        logger.warning(
            "channels chosen by position have different names across records: %s",
            "; ".join(f"{r.name}: {', '.join(r.channels)}" for r in out),
        )
    return out


def _long_enough(
    records: Sequence[BeatRecord], length: int, on_error: OnError, skipped: list
) -> list[BeatRecord]:
    """The records at least one window long (shorter ones raise, or are skipped)."""
    out = []
    for rec in records:
        if rec.signal.shape[1] >= length:
            out.append(rec)
            continue
        problem = (f"the window of {length} samples is longer than record {rec.name} "
                   f"({rec.signal.shape[1]} samples at {rec.fs:g} Hz)")  # fmt: skip
        if on_error == "raise":
            raise DataError(problem, rec.source)
        skipped.append(SkippedFile(rec.source, problem))
    if not out:
        raise DataError(f"every record is shorter than the window of {length} samples", "window")
    return out


def _cut(
    rec: BeatRecord, before: int, after: int, mapping: Mapping[str, str], tally: dict[str, Counter]
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[n, C, before + after]`` float32 of one record's beats and their annotation
    indices ``[n]``; counts non-beat, unmapped, edge and gap annotations in ``tally``."""
    symbols = np.asarray(rec.symbols, dtype=object)
    is_beat = np.array([s in BEAT_SYMBOLS for s in rec.symbols], dtype=bool)
    mapped = np.array([s in mapping for s in rec.symbols], dtype=bool)
    tally["non_beat"].update(symbols[~is_beat].tolist())
    tally["unmapped"].update(symbols[is_beat & ~mapped].tolist())
    length = rec.signal.shape[1]
    inside = (rec.samples - before >= 0) & (rec.samples + after <= length)
    tally["edge"][rec.name] += int((is_beat & mapped & ~inside).sum())
    idx = np.flatnonzero(is_beat & mapped & inside)
    signal = np.asarray(rec.signal, dtype=np.float32)
    windows = signal[:, rec.samples[idx, None] + np.arange(-before, after)]  # [C, n, L]
    windows = np.ascontiguousarray(windows.transpose(1, 0, 2))
    finite = np.isfinite(windows).all(axis=(1, 2))
    tally["gap"][rec.name] += int((~finite).sum())
    return windows[finite], idx[finite]


def beats_dataset(
    records: Sequence[BeatRecord],
    *,
    window: Sequence[float] = DEFAULT_WINDOW,
    classes: Mapping[str, str] | None = None,
    fs: float | None = None,
    match_channel_names: bool = True,
    on_error: OnError = "raise",
    skipped: Sequence[SkippedFile] = (),
    meta: Mapping[str, Any] | None = None,
) -> ArrayDataset:
    """One window per beat annotation of ``records``.

    Args:
        records: recordings with their annotations.
        window: ``(before, after)`` around each annotation: ints are samples, floats
            seconds; the window is ``signal[:, s - before : s + after]``.
        classes: beat symbol -> class name (default :data:`AAMI_CLASSES`); beats of other
            symbols are left out and counted in ``meta["unmapped_beats"]``.
        fs: resample every record to this rate first (:func:`resample_record`).
        match_channel_names: records must share channel names (not only their number).
        on_error: a record that does not match the first one's rate or channels raises
            :class:`DataError`, or with ``"skip"`` is left out and listed in ``skipped``.
        skipped: inputs the reader already left out.
        meta: more dataset-level fields (name, path, source format, ...).

    Returns:
        :class:`ArrayDataset` with ``x`` float32 ``[N, C, before + after]``, labels by class,
        ``groups`` the record names, ``extra["sample"]`` (annotation position) and
        ``extra["symbol"]``, and ``meta`` with ``fs``, ``window`` (samples),
        ``window_seconds``, ``channels``, ``records``, ``beats_per_record``,
        ``symbol_counts``, ``edge_beats_skipped`` (+ ``edge_beats_by_record``),
        ``gap_beats_skipped``, ``unmapped_beats``, ``non_beat_annotations`` and ``classes``.
    """
    mapping, names = beat_classes(classes)
    if not records:
        raise DataError("no records to read", str((meta or {}).get("path", "records")))
    skipped = list(skipped)
    if fs is not None:
        records = [resample_record(r, fs) for r in records]
    records = _consistent(records, match_channel_names, on_error, skipped)
    rate = records[0].fs
    before, after = window_samples(window, rate)
    records = _long_enough(records, before + after, on_error, skipped)
    tally: dict[str, Counter] = {k: Counter() for k in ("non_beat", "unmapped", "edge", "gap")}
    xs, labels, groups, samples, symbols = [], [], [], [], []
    lookup = {c: k for k, c in enumerate(names)}
    for rec in records:
        x, idx = _cut(rec, before, after, mapping, tally)
        beat_symbols = [rec.symbols[i] for i in idx]
        xs.append(x)
        labels += [lookup[mapping[s]] for s in beat_symbols]
        groups += [rec.name] * len(idx)
        samples.append(rec.samples[idx])
        symbols += beat_symbols
    out_meta = _summary(records, tally, symbols, groups, rate, before, after, mapping)
    out_meta = {**(meta or {}), **out_meta}
    _log(out_meta, len(records), skipped, before, after)
    if not symbols:
        raise DataError(
            f"no beat windows: {_describe_losses(out_meta)}", str(out_meta.get("path", "records"))
        )
    return ArrayDataset(
        np.concatenate(xs), np.asarray(labels, dtype=np.int64), names, np.asarray(groups),
        meta=out_meta, extra={"sample": np.concatenate(samples), "symbol": np.asarray(symbols)},
        skipped=skipped,
    )  # fmt: skip


def _summary(
    records: Sequence[BeatRecord],
    tally: Mapping[str, Counter],
    symbols: list[str],
    groups: list[str],
    fs: float,
    before: int,
    after: int,
    mapping: Mapping[str, str],
) -> dict[str, Any]:
    per_record = Counter(groups)
    return {
        "format": "timeseries",
        "fs": float(fs),
        "window": [before, after],
        "window_seconds": [before / fs, after / fs],
        "channels": list(records[0].channels),
        "records": [r.name for r in records],
        "beats_per_record": {r.name: per_record[r.name] for r in records},
        "symbol_counts": dict(Counter(symbols).most_common()),
        "edge_beats_skipped": sum(tally["edge"].values()),
        "edge_beats_by_record": {k: v for k, v in tally["edge"].items() if v},
        "gap_beats_skipped": sum(tally["gap"].values()),
        "unmapped_beats": dict(tally["unmapped"].most_common()),
        "non_beat_annotations": dict(tally["non_beat"].most_common()),
        "classes": dict(mapping),
    }


def _describe_losses(meta: Mapping[str, Any]) -> str:
    unmapped = sum(meta["unmapped_beats"].values())
    return (
        f"{meta['edge_beats_skipped']} beats too near a record's start or end for the window "
        f"{meta['window']} samples, {meta['gap_beats_skipped']} with missing samples, "
        f"{unmapped} of symbols without a class {sorted(meta['unmapped_beats'])}, "
        f"{sum(meta['non_beat_annotations'].values())} non-beat annotations"
    )


def _log(
    meta: Mapping[str, Any], n_records: int, skipped: Sequence[SkippedFile], before: int, after: int
) -> None:
    report_skipped(logger, skipped, n_records + len(skipped))
    if meta["edge_beats_skipped"]:
        logger.warning(
            "skipped %d beats whose window (%d samples before, %d after) crosses the start or "
            "end of their record (%s)",
            meta["edge_beats_skipped"], before, after,
            ", ".join(f"{k}: {v}" for k, v in meta["edge_beats_by_record"].items()),
        )  # fmt: skip
    if meta["gap_beats_skipped"]:
        logger.warning(
            "skipped %d beats whose window holds missing (NaN) samples",
            meta["gap_beats_skipped"],
        )
    if meta["unmapped_beats"]:
        logger.info("left out beats without a class: %s", meta["unmapped_beats"])
    logger.info(
        "%d beats from %d records at %g Hz: %s",
        sum(meta["symbol_counts"].values()), n_records, meta["fs"], meta["symbol_counts"],
    )  # fmt: skip
