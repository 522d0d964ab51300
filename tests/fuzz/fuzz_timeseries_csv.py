"""Fuzz the window-per-row series reader
(:func:`medmeta.data.formats.timeseries.load_timeseries_csv`, UCR layout).

Seeds: a few embedded ECG beats and pig CVP windows (shortened) as CSV, TSV and
whitespace-separated rows, with and without a header, one and two channels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._harness import DATASETS, MAX_BYTES, Call, Harness, fresh, main


def _calls(data: bytes, scratch: Path) -> Sequence[Call]:
    from medmeta.data import DataError
    from medmeta.data.formats.timeseries import load_timeseries_csv

    path = fresh(scratch, ("series.csv", data)) / "series.csv"
    return [
        (lambda: load_timeseries_csv(path, max_bytes=MAX_BYTES), (DataError,)),
        (lambda: load_timeseries_csv(path, channels=2, on_error="skip", max_bytes=MAX_BYTES),
         (DataError,)),
        (lambda: load_timeseries_csv(path, label_column="label", header=True,
                                     max_bytes=MAX_BYTES), (DataError,)),
    ]  # fmt: skip


def _rows(x, y, sep: str, header: bool) -> bytes:
    lines = [sep.join(["label"] + [f"t{j}" for j in range(x.shape[1])])] if header else []
    lines += [
        sep.join([str(int(c))] + [f"{v:.4g}" for v in row]) for c, row in zip(y, x, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def _seeds() -> dict[str, bytes]:
    from medmeta.data.formats.npz import read_npz

    ecg = read_npz(DATASETS / "ecg_beats.npz", ["X", "labels"])
    cvp = read_npz(DATASETS / "pig_cvp.npz", ["X", "labels"])
    beats, beat_y = ecg["X"][:4, ::10], ecg["labels"][:4]
    return {
        "ecg.csv": _rows(beats, beat_y, ",", False),
        "ecg-header.csv": _rows(beats, beat_y, ",", True),
        "ecg.tsv": _rows(beats, beat_y, "\t", True),
        "ecg-spaces.txt": _rows(beats, beat_y, " ", False),
        "cvp-semicolon.csv": _rows(cvp["X"][:4, :24], cvp["labels"][:4], ";", False),
    }


HARNESS = Harness("timeseries_csv", _calls, _seeds, ("medmeta.data.formats.timeseries",))

if __name__ == "__main__":
    main(HARNESS)
