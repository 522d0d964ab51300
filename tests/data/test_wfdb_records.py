"""ECG records with beat annotations: WFDB records written with ``wfdb.wrsamp``/``wfdb.wrann``
(two channels, known beats, edge beats, non-beat annotations), the same record as CSV, the
real MIT-BIH excerpt of ``ecg_beats`` re-cut through the CSV route, the errors a user meets,
and ``medmeta train``/``predict`` on a folder of records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medmeta.data import DataError, load
from medmeta.data.formats.beat_csv import load_beat_csv
from medmeta.data.formats.wfdb_records import load_wfdb_beats

FS = 250
GAIN = 200.0
CHANNELS = ("MLII", "V1")
# annotation positions and symbols: 10 and 2480 are beats too near the edges for the window
# (50 before, 100 after); + ~ | are rhythm / noise / artefact marks, not beats
SAMPLES = [10, 20, 300, 600, 900, 1000, 1200, 1500, 1800, 2000, 2100, 2480]
SYMBOLS = ["N", "+", "N", "V", "A", "~", "L", "F", "/", "|", "E", "V"]
KEPT = [300, 600, 900, 1200, 1500, 1800, 2100]
AAMI = ["N", "V", "S", "N", "F", "Q", "V"]  # N, V, A, L, F, /, E by AAMI group


@pytest.fixture(scope="module")
def wfdb():
    return pytest.importorskip("wfdb")


def _write(wfdb, folder: Path, name: str, digital: np.ndarray, samples, symbols,
           sig_name=CHANNELS) -> Path:  # fmt: skip
    """A record ``name`` of ``digital`` ``[T, C]`` int samples (gain 200/mV, format 16)."""
    c = digital.shape[1]
    wfdb.wrsamp(name, fs=FS, units=["mV"] * c, sig_name=list(sig_name), d_signal=digital,
                fmt=["16"] * c, adc_gain=[GAIN] * c, baseline=[0] * c, write_dir=str(folder))  # fmt: skip
    wfdb.wrann(name, "atr", np.asarray(samples), symbol=list(symbols), write_dir=str(folder))
    return folder / f"{name}.hea"


def _digital(seed: int, length: int = 2500) -> np.ndarray:
    return np.random.default_rng(seed).integers(-600, 600, size=(length, 2))


@pytest.fixture
def record(wfdb, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """One record in its own folder and its physical signal ``[C, T]`` (float32)."""
    folder = tmp_path / "records"
    folder.mkdir()
    digital = _digital(0)
    _write(wfdb, folder, "rec", digital, SAMPLES, SYMBOLS)
    return folder, (digital.T / GAIN).astype(np.float32)


def test_windows_are_the_signal_slices_labelled_by_aami_group(record, caplog):
    folder, signal = record
    ds = load_wfdb_beats(folder, window=(50, 100))
    assert ds.x.shape == (7, 2, 150) and ds.x.dtype == np.float32
    for i, s in enumerate(KEPT):
        np.testing.assert_array_equal(ds.x[i], signal[:, s - 50 : s + 100])
    assert ds.class_names == ("N", "S", "V", "F", "Q")
    assert [ds.class_names[k] for k in ds.labels] == AAMI
    assert ds.extra["sample"].tolist() == KEPT
    assert ds.extra["symbol"].tolist() == ["N", "V", "A", "L", "F", "/", "E"]
    assert ds.groups.tolist() == ["rec"] * 7
    meta = ds.meta
    assert meta["format"] == "timeseries" and meta["fs"] == FS and meta["window"] == [50, 100]
    assert meta["channels"] == list(CHANNELS) and meta["records"] == ["rec"]
    assert meta["edge_beats_skipped"] == 2 and meta["edge_beats_by_record"] == {"rec": 2}
    assert meta["non_beat_annotations"] == {"+": 1, "~": 1, "|": 1}
    assert meta["symbol_counts"] == {"N": 1, "V": 1, "A": 1, "L": 1, "F": 1, "/": 1, "E": 1}
    assert "skipped 2 beats whose window" in caplog.text  # never silently
    # the same window in seconds (0.2 s, 0.4 s at 250 Hz), and the record named directly
    by_seconds = load_wfdb_beats(folder / "rec.hea", window=(0.2, 0.4))
    np.testing.assert_array_equal(by_seconds.x, ds.x)
    np.testing.assert_array_equal(load_wfdb_beats(folder / "rec", window=(50, 100)).x, ds.x)


def test_a_folder_loads_every_record_channels_and_a_custom_mapping(record, wfdb):
    folder, signal = record
    other = _digital(1, 1200)
    _write(wfdb, folder, "rec2", other, [100, 400, 700], ["V", "N", "R"])
    ds = load_wfdb_beats(folder, window=(50, 100))
    assert ds.meta["records"] == ["rec", "rec2"] and len(ds) == 10
    assert ds.groups.tolist() == ["rec"] * 7 + ["rec2"] * 3
    assert [ds.class_names[k] for k in ds.labels[7:]] == ["V", "N", "N"]
    np.testing.assert_array_equal(ds.x[9], (other.T[:, 650:800] / GAIN).astype(np.float32))
    assert ds.meta["beats_per_record"] == {"rec": 7, "rec2": 3}
    mapped = load_wfdb_beats(folder, window=(50, 100), channels=["V1"],
                             classes={"V": "ventricular", "N": "normal", "E": "ventricular"})  # fmt: skip
    assert mapped.class_names == ("ventricular", "normal") and mapped.x.shape == (5, 1, 150)
    assert [mapped.class_names[k] for k in mapped.labels].count("ventricular") == 3
    assert mapped.meta["unmapped_beats"] == {"A": 1, "L": 1, "F": 1, "/": 1, "R": 1}
    np.testing.assert_array_equal(mapped.x[0, 0], signal[1, 250:400])
    by_index = load_wfdb_beats(folder, window=(50, 100), channels=[1])
    np.testing.assert_array_equal(by_index.x[:, 0], ds.x[:, 1])


def _signal_csv(path: Path, signal: np.ndarray, *, time: bool, blank: int | None = None) -> Path:
    head = ["time"] * time + list(CHANNELS)
    lines = [",".join(head)]
    for t in range(signal.shape[1]):
        cells = [f"{t / FS:.4f}"] * time + [repr(float(v)) for v in signal[:, t]]
        if t == blank:
            cells[-1] = ""
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def _annotation_csv(path: Path, samples, symbols, *, seconds: bool = False) -> Path:
    rows = [f"{s / FS:.4f},{y}" if seconds else f"{s},{y}" for s, y in zip(samples, symbols, strict=True)]  # fmt: skip
    path.write_text(("time,symbol\n" if seconds else "sample,symbol\n") + "\n".join(rows) + "\n")
    return path


def test_the_csv_route_gives_identical_arrays(record, tmp_path: Path):
    folder, signal = record
    ref = load_wfdb_beats(folder, window=(50, 100))
    physical = signal.astype(np.float64)  # what wfdb gives, before float32
    ann = _annotation_csv(tmp_path / "ann.csv", SAMPLES, SYMBOLS)
    with_time = load_beat_csv(_signal_csv(tmp_path / "rec.csv", physical, time=True), ann,
                              window=(50, 100))  # fmt: skip
    no_time = load_beat_csv(_signal_csv(tmp_path / "plain.csv", physical, time=False), ann,
                            signal_fs=FS, window=(0.2, 0.4), record="rec")  # fmt: skip
    by_time = load_beat_csv(tmp_path / "rec.csv", _annotation_csv(tmp_path / "t.csv", SAMPLES,
                            SYMBOLS, seconds=True), window=(50, 100))  # fmt: skip
    for ds in (with_time, no_time, by_time):
        np.testing.assert_array_equal(ds.x, ref.x)
        np.testing.assert_array_equal(ds.labels, ref.labels)
        np.testing.assert_array_equal(ds.groups, ref.groups)
        assert ds.class_names == ref.class_names and ds.meta["fs"] == FS
        assert ds.meta["edge_beats_skipped"] == 2 and ds.meta["channels"] == list(CHANNELS)
    # a missing sample (empty cell) inside one beat's window: that beat is skipped, counted
    gap = load_beat_csv(_signal_csv(tmp_path / "gap.csv", physical, time=True, blank=620), ann,
                        window=(50, 100))  # fmt: skip
    assert len(gap) == 6 and gap.meta["gap_beats_skipped"] == 1 and 600 not in gap.extra["sample"]


def test_the_csv_route_reproduces_the_embedded_mit_bih_beats(tmp_path: Path):
    """ecg_beats: 25 beats cut at R peak -90..+160 from a 360 Hz MIT-BIH trace; the 26th
    R peak (found as the file's notes say) has a window past the end of the trace."""
    signal_mod = pytest.importorskip("scipy.signal")
    ecg = load("ecg_beats")
    trace, r_peaks = ecg.meta["signal"], ecg.extra["r_peaks"]
    peaks, _ = signal_mod.find_peaks(trace, distance=150, prominence=0.5)
    assert len(peaks) == 26 and np.array_equal(peaks[:25], r_peaks)
    symbols = ["V" if ecg.meta["sample_labels"][p] else "N" for p in peaks]
    sig = tmp_path / "mitdb.csv"
    sig.write_text("MLII\n" + "\n".join(repr(float(v)) for v in trace) + "\n")
    ann = _annotation_csv(tmp_path / "mitdb_ann.csv", peaks, symbols)
    ds = load_beat_csv(sig, ann, signal_fs=360, window=(90, 160),
                       classes={"N": "normal", "V": "anomalous (premature beat)"})  # fmt: skip
    np.testing.assert_array_equal(ds.x, ecg.x)
    np.testing.assert_array_equal(ds.labels, ecg.labels)
    assert ds.class_names == ecg.class_names
    assert ds.meta["edge_beats_skipped"] == 1 and ds.meta["symbol_counts"] == {"N": 24, "V": 1}


def test_resampling_to_a_target_rate(tmp_path: Path, monkeypatch):
    pytest.importorskip("scipy.signal")
    t = np.arange(2 * FS) / FS
    wave = np.sin(2 * np.pi * 3 * t)[None]  # 3 Hz, far below both Nyquist rates
    sig = _signal_csv(tmp_path / "sine.csv", np.repeat(wave, 2, 0), time=False)
    ann = _annotation_csv(tmp_path / "a.csv", [125, 250, 375], ["N", "N", "V"])
    ds = load_beat_csv(sig, ann, signal_fs=FS, fs=500, window=(0.1, 0.2))
    assert ds.meta["fs"] == 500 and ds.x.shape == (3, 2, 150)
    assert ds.extra["sample"].tolist() == [250, 500, 750]
    new_t = (500 + np.arange(-50, 100)) / 500  # the window of the beat at 1.0 s
    np.testing.assert_allclose(ds.x[1, 0], np.sin(2 * np.pi * 3 * new_t), atol=2e-3)
    monkeypatch.setitem(sys.modules, "scipy.signal", None)
    with pytest.raises(ImportError, match=r"fs=500 needs scipy"):
        load_beat_csv(sig, ann, signal_fs=FS, fs=500)


def _corrupt_header(folder: Path) -> Path:
    bad = folder / "bad.hea"
    bad.write_text("this is not a header\n")
    return bad


def test_wfdb_errors_name_the_file(record, wfdb):
    folder, _ = record
    with pytest.raises(DataError, match=r"annotation file not found \(annotator='qrs'\)") as err:
        load_wfdb_beats(folder, annotator="qrs")
    assert "rec.qrs" in str(err.value)
    with pytest.raises(DataError, match=r"'X' is not a WFDB beat symbol"):
        load_wfdb_beats(folder, classes={"N": "normal", "X": "other"})
    with pytest.raises(DataError, match=r"'\+' is a non-beat annotation \(rhythm change\)"):
        load_wfdb_beats(folder, classes={"+": "rhythm"})
    with pytest.raises(DataError, match=r"window of 3000 samples is longer than record rec "
                                        r"\(2500 samples at 250 Hz\)"):  # fmt: skip
        load_wfdb_beats(folder, window=(2000, 1000))
    with pytest.raises(DataError, match=r"two ints \(samples\) or two floats \(seconds\)"):
        load_wfdb_beats(folder, window=(50, 0.4))
    with pytest.raises(DataError, match=r"no channel 'V5' \(channels: \['MLII', 'V1'\]\)"):
        load_wfdb_beats(folder, channels=["V5"])
    bad = _corrupt_header(folder)
    with pytest.raises(DataError, match="cannot read the WFDB header") as err:
        load_wfdb_beats(folder)
    assert str(bad) in str(err.value)
    kept = load_wfdb_beats(folder, window=(50, 100), on_error="skip")  # the good record stays
    assert kept.meta["records"] == ["rec"] and [s.path for s in kept.skipped] == [str(bad)]
    bad.unlink()
    dat = folder / "rec.dat"
    dat.write_bytes(dat.read_bytes()[:4000])
    with pytest.raises(DataError, match=r"truncated signal file: 4,000 bytes, the header's "
                                        r"2,500 samples need 10,000"):  # fmt: skip
        load_wfdb_beats(folder)
    dat.unlink()
    with pytest.raises(DataError, match=r"the signal file rec\.dat named in the header is missing") as err:  # fmt: skip
        load_wfdb_beats(folder / "rec.hea")
    assert str(folder / "rec.hea") in str(err.value)
    with pytest.raises(DataError, match="no WFDB header files"):
        load_wfdb_beats(folder.parent)


def test_records_must_share_rate_and_leads(record, wfdb):
    folder, _ = record
    _write(wfdb, folder, "rec3", _digital(2, 1000), [300], ["N"], sig_name=("V5", "V2"))
    with pytest.raises(DataError, match=r"record rec3 has channels \['V5', 'V2'\], record rec has"):
        load_wfdb_beats(folder, window=(50, 100))
    skipped = load_wfdb_beats(folder, window=(50, 100), on_error="skip")
    assert skipped.meta["records"] == ["rec"] and "channels" in skipped.skipped[0].reason
    assert len(load_wfdb_beats(folder, window=(50, 100), channels=[0])) == 8  # by position


def test_without_wfdb_the_error_names_the_signals_extra(record, monkeypatch):
    folder, _ = record
    monkeypatch.setitem(sys.modules, "wfdb", None)
    with pytest.raises(ImportError, match=r"pip install medmeta\[signals\]"):
        load_wfdb_beats(folder)


def test_csv_errors_name_line_and_column(tmp_path: Path):
    sig = tmp_path / "s.csv"
    sig.write_text("time,MLII\n0.0,0.1\n0.004,oops\n")
    ann = _annotation_csv(tmp_path / "a.csv", [1], ["N"])
    with pytest.raises(DataError, match=r"line 3, column 'MLII': 'oops' is not a number"):
        load_beat_csv(sig, ann)
    sig.write_text("MLII\n0.1\n0.2\n")
    with pytest.raises(DataError, match=r"no time column: give signal_fs="):
        load_beat_csv(sig, ann)
    bad_ann = tmp_path / "b.csv"
    bad_ann.write_text("where,what\n1,N\n")
    with pytest.raises(DataError, match=r"a 'sample' \(or 'time'\) column and a 'symbol' column"):
        load_beat_csv(sig, bad_ann, signal_fs=FS)
    with pytest.raises(DataError, match="file not found"):
        load_beat_csv(sig, tmp_path / "missing.csv", signal_fs=FS)


def _bump(d: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((d - center) / width) ** 2)


def _ecg(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, list[int], list[str]]:
    """A synthetic two-lead ECG ``[T, 2]`` (digital, 200/mV) with normal beats (narrow QRS,
    P and T waves) and premature ventricular ones (wide, inverted, no P wave)."""
    t = np.arange(int(seconds * FS)) / FS
    sig = np.zeros_like(t)
    samples, symbols, r = [], [], 0.5
    while r < seconds - 0.5:
        kind = "V" if rng.random() < 0.4 else "N"
        d = t - r
        sig += (_bump(d, 0, 0.012) + 0.15 * _bump(d, -0.18, 0.025) + 0.3 * _bump(d, 0.3, 0.05)
                if kind == "N" else -1.2 * _bump(d, 0, 0.05) + 0.4 * _bump(d, 0.25, 0.07))  # fmt: skip
        samples.append(round(r * FS))
        symbols.append(kind)
        r += (0.6 if kind == "V" else 0.85) + rng.uniform(-0.05, 0.05)
    leads = np.stack([sig, 0.5 * sig], 1) + rng.normal(0, 0.03, (len(t), 2))
    return np.rint(leads * GAIN).astype(np.int64), samples, symbols


@pytest.fixture
def ecg_folder(wfdb, tmp_path: Path) -> Path:
    folder = tmp_path / "ecg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (tmp_path / "new").mkdir()
    for k in range(5):  # four patients to train on, a fifth (in new/) to predict
        digital, samples, symbols = _ecg(rng, 12)
        _write(wfdb, folder if k < 4 else tmp_path / "new", f"p{k}", digital, samples, symbols)
    return folder


def _train(folder: Path, out: Path) -> None:
    from medmeta.cli import main

    assert main(["train", "--data", str(folder), "--backbone", "conv1d", "--classes", "N,V",
                 "--ways", "2", "--shots", "5", "--queries", "5", "--steps", "4", "--width",
                 "8,8", "--val-every", "4", "--val-episodes", "4", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip


def test_cli_trains_on_a_folder_of_records(ecg_folder: Path, tmp_path: Path):
    from medmeta.cli._model import read_card

    _train(ecg_folder, tmp_path / "model")
    card = read_card(tmp_path / "model")
    assert card["preprocessing"]["kind"] == "series"
    assert card["preprocessing"]["input_shape"] == [2, 174]  # 62 + 112 samples at 250 Hz
    assert card["backbone"]["name"] == "conv1d" and card["training"]["classes"] == ["N", "V"]


@pytest.mark.slow  # train, export and predict through the CLI
def test_cli_predicts_beats_of_a_record(ecg_folder: Path, tmp_path: Path):
    from medmeta.cli import main
    from medmeta.cli._torchfree import run_without_torch

    _train(ecg_folder, tmp_path / "model")
    onnx = tmp_path / "ecg.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--support", str(ecg_folder),
                 "--classes", "N,V", "--shots", "5", "--out", str(onnx)]) == 0  # fmt: skip
    new = ecg_folder.parent / "new" / "p4.hea"  # a patient the model has never seen
    proc = run_without_torch(["predict", "--model", str(onnx), "--inputs", str(new), "--json"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["inputs"] == len(load_wfdb_beats(new))
    assert result["accuracy"] > 0.9, result["accuracy"]  # the two beat shapes differ plainly


@pytest.mark.slow  # train, export and predict through the CLI
def test_cli_predicts_a_folder_of_records(ecg_folder: Path, tmp_path: Path, capsys):
    """``--inputs`` a folder of ``*.hea`` records: the WFDB beats, not the image reader."""
    from medmeta.cli import main

    _train(ecg_folder, tmp_path / "model")
    onnx = tmp_path / "ecg.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--support", str(ecg_folder),
                 "--classes", "N,V", "--shots", "5", "--out", str(onnx)]) == 0  # fmt: skip
    new = ecg_folder.parent / "new"  # a folder holding one patient the model has never seen
    capsys.readouterr()
    assert main(["predict", "--model", str(onnx), "--inputs", str(new), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    beats = load_wfdb_beats(new)
    assert result["inputs"] == len(beats) > 10
    assert [p["input"] for p in result["predictions"]] == [f"p4:{s}" for s in beats.extra["sample"]]
    assert result["accuracy"] > 0.9, result["accuracy"]  # the two beat shapes differ plainly
