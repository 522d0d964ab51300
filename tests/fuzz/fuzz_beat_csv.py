"""Fuzz the ECG beat reader for CSV records
(:func:`medmeta.data.formats.beat_csv.load_beat_csv`): a signal file and an annotation file
(the two halves of the input, see :data:`._harness.SPLIT`).

Seeds: a stretch of the embedded MIT-BIH ECG trace with its R-peak annotations, with a time
column (seconds or PhysioNet's ``m:ss.fff`` with a units row) or without one, annotations
by sample or by time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, join, main, split

_FS = 360.0  # MIT-BIH sampling rate


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.beat_csv import load_beat_csv

    signal, annotations = split(data, 2)
    folder = fresh(scratch, ("rec.csv", signal), ("rec-ann.csv", annotations))
    sig, ann = folder / "rec.csv", folder / "rec-ann.csv"
    return [
        (lambda: load_beat_csv(sig, ann, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_beat_csv(sig, ann, signal_fs=_FS, window=(20, 40), max_bytes=MAX_BYTES),
         (DataError,)),
        (lambda: load_beat_csv(sig, ann, signal_fs=_FS, window=(0.05, 0.1), fs=180.0,
                               channels=[0], max_bytes=MAX_BYTES), (DataError,)),
    ]  # fmt: skip


def _clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:06.3f}"


def _seeds() -> dict[str, bytes]:
    from medmeta.data.formats.npz import read_npz

    z = read_npz(DATASETS / "ecg_beats.npz", ["signal", "r_peaks"])
    n = 600  # 1.7 s: two or three beats
    trace = z["signal"][:n]
    peaks = [int(p) for p in z["r_peaks"] if 20 <= p < n - 40][:3] or [100, 400]
    times = [k / _FS for k in range(n)]
    plain = "MLII,V5\n" + "".join(f"{v:.3f},{-v:.3f}\n" for v in trace)
    timed = "time,MLII\n" + "".join(f"{t:.5f},{v:.3f}\n" for t, v in zip(times, trace, strict=True))
    physionet = "'Elapsed time','MLII'\n'hh:mm:ss.mmm','mV'\n" + "".join(
        f"'{_clock(t)}',{v:.3f}\n" for t, v in zip(times, trace, strict=True))  # fmt: skip
    by_sample = "sample,symbol\n" + "".join(
        f"{p},{s}\n" for p, s in zip(peaks, "NVN", strict=False)
    )
    by_time = "time,symbol,aux\n" + "".join(
        f"{p / _FS:.4f},{s},\n" for p, s in zip(peaks, "NAN", strict=False)
    )
    return {
        "plain-samples": join(plain.encode(), by_sample.encode()),
        "timed-samples": join(timed.encode(), by_sample.encode()),
        "timed-times": join(timed.encode(), by_time.encode()),
        "physionet-times": join(physionet.encode(), by_time.encode()),
    }


HARNESS = Harness("beat_csv", _calls, _seeds,
                  ("medmeta.data.formats.beat_csv", "medmeta.data.formats.beats"))  # fmt: skip

if __name__ == "__main__":
    main(HARNESS)
