"""Time series: the embedded ECG beats (re-cut from the raw trace), PigCVP written as a UCR-style
CSV and read back, ragged and NaN rows."""

from __future__ import annotations

import numpy as np
import pytest

from medmeta.data import (
    DataError,
    load,
    load_timeseries_csv,
    sliding_windows,
    timeseries_from_arrays,
    windows_around,
)


def test_ecg_beats_recut_from_the_raw_trace():
    ecg = load("ecg_beats")
    assert ecg.x.shape == (25, 1, 250)
    before, after = (int(v) for v in ecg.meta["window"])
    beats = windows_around(
        ecg.meta["signal"],
        ecg.extra["r_peaks"],
        before,
        after,
        labels=ecg.labels,
        class_names=ecg.classes,
    )
    np.testing.assert_array_equal(beats.x, ecg.x)
    assert beats.class_counts() == {"normal": 24, "anomalous (premature beat)": 1}
    # a window running past the end is an error naming it, or skipped and reported
    centers = np.append(ecg.extra["r_peaks"], 7450)
    with pytest.raises(DataError, match="window 25 around sample 7450 needs samples"):
        windows_around(ecg.meta["signal"], centers, before, after)
    kept = windows_around(ecg.meta["signal"], centers, before, after, on_error="skip")
    assert len(kept) == 25 and [s.path for s in kept.skipped] == ["centers[25]"]


def test_sliding_windows_on_the_trace():
    sig = load("ecg_beats").meta["signal"]
    w = sliding_windows(sig, 360, stride=180)
    assert w.shape == ((7500 - 360) // 180 + 1, 1, 360)
    np.testing.assert_array_equal(w[3, 0], sig[540:900])


def _ucr_csv(path, x, y, header=False):
    lines = []
    if header:
        lines.append(",".join(["label", *[f"t{i}" for i in range(x.shape[1])]]))
    for row, label in zip(x, y, strict=True):
        lines.append(",".join([str(int(label) + 1), *[repr(float(v)) for v in row]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pig_cvp_csv_roundtrip(tmp_path):
    pig = load("pig_cvp")
    idx = np.flatnonzero(pig.labels < 5)  # 5 pigs x 6 series
    x, y = pig.x[idx, 0], pig.labels[idx]
    path = _ucr_csv(tmp_path / "PigCVP_small.csv", x, y)
    ds = load_timeseries_csv(path)
    assert ds.x.shape == (30, 1, 2000)
    np.testing.assert_array_equal(ds.x[:, 0], x)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.classes == ["1", "2", "3", "4", "5"]
    with_header = load_timeseries_csv(
        _ucr_csv(tmp_path / "h.csv", x, y, header=True), label_column="label"
    )
    np.testing.assert_array_equal(with_header.x, ds.x)
    two = load_timeseries_csv(path, channels=2)
    assert two.x.shape == (30, 2, 1000)
    np.testing.assert_array_equal(two.x[:, 1], x[:, 1000:])


def test_ragged_nan_and_bad_rows(tmp_path):
    pig = load("pig_cvp")
    x, y = pig.x[:6, 0, :50], pig.labels[:6]
    path = _ucr_csv(tmp_path / "bad.csv", x, y)
    lines = path.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:-3])  # line 3 is 3 samples short
    lines[4] = lines[4].replace(lines[4].split(",")[7], "nan", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3 has 48 cells but line 1 has 51") as err:
        load_timeseries_csv(path)
    assert str(path) in str(err.value)
    ok = load_timeseries_csv(path, on_error="skip")
    assert len(ok) == 4
    assert [s.path for s in ok.skipped] == [f"{path}:3", f"{path}:5"]
    assert "NaN" in ok.skipped[1].reason
    np.testing.assert_array_equal(ok.x[:, 0], x[[0, 1, 3, 5]])


def test_arrays_validation():
    ecg = load("ecg_beats")
    ds = timeseries_from_arrays(ecg.x[:, 0], ecg.labels, ecg.classes)
    assert ds.x.shape == (25, 1, 250)
    bad = ecg.x[:, 0].copy()
    bad[4, 10] = np.nan
    with pytest.raises(DataError, match="example 4 contains NaN"):
        timeseries_from_arrays(bad, ecg.labels)
    with pytest.raises(DataError, match="label 2 at index 0 is out of range"):
        timeseries_from_arrays(ecg.x, np.full(25, 2), ecg.classes)
