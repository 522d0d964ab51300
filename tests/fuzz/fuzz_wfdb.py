"""Fuzz the WFDB record reader (:func:`medmeta.data.formats.wfdb_records.read_wfdb_record`
and ``load_wfdb_beats``) and the ``wfdb`` package under it: the input is a header, a signal
file and an annotation file (see :data:`._harness.SPLIT`), written as ``rec.hea``,
``rec.dat`` and ``rec.atr``.

Seeds: a stretch of the embedded MIT-BIH trace written by ``wfdb.wrsamp`` / ``wrann`` in
formats 16, 212 and 80, one and two channels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, join, main, split


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.wfdb_records import load_wfdb_beats, read_wfdb_record

    header, signal, annotations = split(data, 3)
    folder = fresh(scratch, ("rec.hea", header), ("rec.dat", signal), ("rec.atr", annotations))
    return [
        (lambda: read_wfdb_record(folder / "rec.hea", max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_wfdb_beats(folder, window=(20, 40), max_bytes=MAX_BYTES), (DataError,)),
    ]


def _seeds() -> dict[str, bytes]:
    import tempfile

    import numpy as np
    import wfdb

    from medmeta.data.formats.npz import read_npz

    z = read_npz(DATASETS / "ecg_beats.npz", ["signal", "r_peaks"])
    n = 600
    trace = z["signal"][:n].astype(np.float64)
    peaks = np.array([p for p in z["r_peaks"] if 20 <= p < n - 40][:3] or [100, 400])
    seeds = {}
    for fmt, channels, gain in (("16", 1, 200.0), ("212", 2, 200.0), ("80", 1, 40.0)):
        signal = np.stack([trace, -trace][:channels], axis=1)
        names = ["MLII", "V5"][:channels]
        with tempfile.TemporaryDirectory() as tmp:
            wfdb.wrsamp("rec", fs=360, units=["mV"] * channels, sig_name=names,
                        p_signal=signal, fmt=[fmt] * channels, adc_gain=[gain] * channels,
                        baseline=[0] * channels, write_dir=tmp)  # fmt: skip
            wfdb.wrann("rec", "atr", peaks, np.array(list("NVN"[: len(peaks)])), write_dir=tmp)
            parts = [(Path(tmp) / f"rec.{ext}").read_bytes() for ext in ("hea", "dat", "atr")]
        seeds[f"fmt{fmt}-{channels}ch"] = join(*parts)
    return seeds


HARNESS = Harness("wfdb", _calls, _seeds,
                  ("medmeta.data.formats.wfdb_records", "medmeta.data.formats.beats", "wfdb"),
                  ("medmeta", "wfdb"))  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
