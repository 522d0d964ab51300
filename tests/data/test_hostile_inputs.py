"""Hostile files: headers that declare gigantic volumes, a zip bomb and a pickle in an
``.npz``, symlink loops in an image folder, a 16-bit palette PNG, truncated DICOM, a CSV
with a million columns. Each is refused with a :class:`DataError` (or read correctly),
without crashing, hanging or allocating beyond a stated bound.

Memory is measured in a child process that reads every hostile file in turn: before each
read the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), so a case's growth
is its own peak (VmHWM) minus the RSS it started from. Bound: :data:`BOUND_MB` for every
case (the data each file would claim is hundreds of MB to GBs, under the readers' default
``max_bytes`` of 2 GiB, so only the checks made before allocating keep a case under it).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from medmeta.data import DataError
from medmeta.data.formats.dicom import read_dicom
from medmeta.data.formats.image_folder import load_image_folder, read_image
from medmeta.data.formats.npz import load_npz, read_npz

FILES = Path(__file__).resolve().parent / "files"
#: Peak RSS growth allowed while a reader refuses (or reads) one hostile file.
BOUND_MB = 64
#: Time allowed for one hostile file.
BOUND_SECONDS = 10.0
_MIB = 1 << 20


# -- builders ---------------------------------------------------------------------------
def _nifti_header(shape: tuple[int, ...]) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    return header.binaryblock + b"\0" * 4  # the 4-byte extension flag, then (no) voxels


def _dicom_claiming(rows: int, columns: int, path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    ds.Rows, ds.Columns = rows, columns  # 16000 x 16000 x 16 bits: 512 MB claimed
    ds.save_as(path, enforce_file_format=True)
    return path


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})  # fmt: skip
    return buf.getvalue()


def _zip_bomb(path: Path, members: dict[str, int]) -> Path:
    """An ``.npz`` whose members ``name -> MiB`` are ``.npy`` arrays of that many zero bytes,
    deflated to about 1 KB per MiB (one full-flush deflate block, repeated), written as a
    zip by hand (the CRCs are left 0: a reader that inflated everything would see them)."""
    local, central = bytearray(), bytearray()
    for name, mib in members.items():
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = c.compress(_npy_header((mib * _MIB,))) + c.flush(zlib.Z_FULL_FLUSH)
        block = c.compress(b"\0" * _MIB) + c.flush(zlib.Z_FULL_FLUSH)
        data = head + block * mib + c.flush(zlib.Z_FINISH)
        size = len(_npy_header((mib * _MIB,))) + mib * _MIB
        fname = f"{name}.npy".encode()
        # version 2.0, no flags, deflate, time/date/CRC 0, sizes, name length
        entry = struct.pack("<HHHHHIIIH", 20, 0, 8, 0, 0, 0, len(data), size, len(fname))
        central += (struct.pack("<IH", 0x02014B50, 20) + entry + struct.pack("<HHHHII", 0, 0, 0, 0, 0, len(local)) + fname)  # fmt: skip
        local += struct.pack("<I", 0x04034B50) + entry + struct.pack("<H", 0) + fname + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(local), 0)  # fmt: skip
    path.write_bytes(bytes(local + central + end))
    return path


def _png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))  # fmt: skip

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    palette = bytes(range(48))  # 16 RGB entries
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"PLTE", palette)
            + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b""))  # fmt: skip


def _wide_csv(path: Path, columns: int = 1_000_000) -> Path:
    header = ",".join(["label"] + [f"c{i}" for i in range(1, columns)])
    path.write_text(header + "\n" + ",".join(["1"] * columns) + "\n")
    return path


# -- the child process that measures ----------------------------------------------------
def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024  # kB -> MB
    raise RuntimeError(field)


def _read(case: str, path: str) -> None:
    """Read the hostile file ``path`` as case ``case`` does (run in the child)."""
    if case.startswith("nifti"):
        from medmeta.data.formats.nifti import read_nifti

        read_nifti(path)
    elif case.startswith("dicom"):
        read_dicom(path)
    elif case == "npz-bomb-small-bound":
        read_npz(path, max_bytes=16 * _MIB)
    elif case.startswith("npz"):
        load_npz(path)  # the default bound, 2 GiB
    elif case == "csv-pandas":
        from medmeta.data.formats.table import read_table

        read_table(path, "label")
    elif case == "csv-device":
        from medmeta.edge.table import read_csv_rows

        read_csv_rows(path)
    elif case == "csv-series":
        from medmeta.data.formats.timeseries import load_timeseries_csv

        load_timeseries_csv(path)
    elif case == "csv-beats":
        from medmeta.data.formats.beat_csv import load_beat_csv

        load_beat_csv(path, path, signal_fs=360.0)
    else:
        raise KeyError(case)


def measure(cases: dict[str, str]) -> dict[str, dict]:
    """``{case: {seconds, growth_mb, error, message}}`` for each ``case: path`` (child side)."""
    import gc

    import pandas  # noqa: F401  (imports are not the cases' memory)

    from medmeta.data.formats import beat_csv, nifti, table, timeseries  # noqa: F401
    from medmeta.edge import table as edge_table  # noqa: F401

    results = {}
    for case, path in cases.items():
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS mark
        start_rss, start = _vm("VmRSS"), time.perf_counter()
        try:
            _read(case, path)
            error, message = None, ""
        except Exception as err:  # reported, judged by the test
            error, message = type(err).__name__, str(err)[:300]
        results[case] = {"seconds": time.perf_counter() - start,
                         "growth_mb": _vm("VmHWM") - start_rss, "error": error,
                         "message": message}  # fmt: skip
    return results


def _measure_in_child(cases: dict[str, Path]) -> dict[str, dict]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak-RSS reset (/proc/self/clear_refs) needs Linux")
    code = ("import json, runpy, sys; m = runpy.run_path(sys.argv[1]); "
            "print(json.dumps(m['measure'](json.loads(sys.argv[2]))))")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, __file__, json.dumps({k: str(v) for k, v in cases.items()})],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                          "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict]:
    """Every memory-measured hostile case, read once in one child process."""
    tmp = tmp_path_factory.mktemp("hostile")
    cases = {
        "nifti-gz-giant": tmp / "giant.nii.gz",
        "nifti-plain-giant": tmp / "giant.nii",
        "dicom-giant": _dicom_claiming(16000, 16000, tmp / "giant.dcm"),
        "npz-bomb-small-bound": _zip_bomb(tmp / "bomb-one.npz", {"images": 512}),
        "npz-bomb-together": _zip_bomb(tmp / "bomb-three.npz",
                                       {"images": 768, "labels": 768, "extra": 768}),
        "csv-pandas": _wide_csv(tmp / "wide.csv"),
        "csv-device": tmp / "wide.csv",
        "csv-series": tmp / "wide.csv",
        "csv-beats": tmp / "wide.csv",
    }  # fmt: skip
    giant = _nifti_header((800, 800, 400))  # 512 MB of int16 claimed, 1 GB as float32
    cases["nifti-gz-giant"].write_bytes(gzip.compress(giant, mtime=0))
    cases["nifti-plain-giant"].write_bytes(giant)
    return _measure_in_child(cases)


# -- the tests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("nifti-gz-giant", "holds at most"),
        ("nifti-plain-giant", "truncated or the header wrong"),
        ("dicom-giant", "truncated or the header wrong"),
        ("npz-bomb-small-bound", "above the limit of 16,777,216"),
        ("npz-bomb-together", "the 3 arrays together"),
        ("csv-pandas", "about 1,000,000 columns, above the limit"),
        ("csv-beats", "about 1,000,000 columns"),
    ],
)
def test_hostile_header_is_refused_within_the_bound(measured, case, match):
    result = measured[case]
    assert result["error"] == "DataError", result
    assert match in result["message"], result
    assert result["seconds"] < BOUND_SECONDS, result
    assert result["growth_mb"] < BOUND_MB, result


@pytest.mark.parametrize("case", ["csv-device", "csv-series"])
def test_a_million_columns_are_read_in_bounded_time_and_memory(measured, case):
    result = measured[case]  # one row of 1,000,000 cells (10 MB): these readers take it
    assert result["error"] is None, result
    assert result["seconds"] < BOUND_SECONDS, result
    assert result["growth_mb"] < 512, result


def test_npz_object_array_is_refused_and_its_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, array in [
        ("plain.npz", np.array([Payload(), None], dtype=object)),
        ("field.npz", np.array([(1, Payload())], dtype=[("a", "i4"), ("b", "O")])),
    ]:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:  # np.save of object arrays pickles them
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=True)
            zf.writestr("images.npy", buf.getvalue())
            zf.writestr("labels.npy", _npy_header((2,), "<i8") + bytes(16))
        for read in (load_npz, read_npz):
            with pytest.raises(DataError, match="pickled Python objects"):
                read(path)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(Payload())) is None and marker.exists()  # a live payload


def test_symlink_loops_in_an_image_folder_are_ignored_not_followed(tmp_path, caplog):
    from PIL import Image

    root = tmp_path / "root"
    (root / "cells").mkdir(parents=True)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "cells" / "a.png")
    (root / "cells" / "self.png").symlink_to("self.png")  # loops on itself
    (root / "cells" / "x.png").symlink_to("y.png")
    (root / "cells" / "y.png").symlink_to("x.png")  # a two-link loop
    (root / "cells" / "up").symlink_to(root)  # a directory cycle
    (root / "loop").symlink_to("loop")  # a looping "class folder"
    start = time.perf_counter()
    data = load_image_folder(root)
    assert time.perf_counter() - start < BOUND_SECONDS
    assert data.class_names == ("cells",) and data.x.shape == (1, 8, 8)
    assert np.allclose(data.x[0] * 255, np.arange(64).reshape(8, 8))
    assert sorted(data.meta["ignored"]) == ["cells/self.png", "cells/x.png", "cells/y.png"]
    assert "looping link" in caplog.text
    with pytest.raises(DataError, match="not found"):
        load_image_folder(root, class_names=["cells", "loop"])


def test_16_bit_palette_png_is_refused(tmp_path):
    path = tmp_path / "palette16.png"  # colour type 3 allows depths 1-8 only
    path.write_bytes(_png(4, 4, 16, 3, b"".join(b"\0" + bytes(8) for _ in range(4))))
    with pytest.raises(DataError, match=r"palette16\.png"):
        read_image(path)
    (tmp_path / "root" / "c").mkdir(parents=True)
    (tmp_path / "root" / "c" / "p.png").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match=r"p\.png"):
        load_image_folder(tmp_path / "root")
    ok = tmp_path / "palette8.png"  # the same image at a legal depth reads
    ok.write_bytes(_png(4, 4, 8, 3, b"".join(b"\0" + bytes([0, 1, 2, 3]) for _ in range(4))))
    assert read_image(ok).shape == (4, 4, 3)
    assert read_image(ok)[0, 1].tolist() == [3, 4, 5]  # palette entry 1


@pytest.mark.parametrize("keep", [1, 128, 132, 400, 2000, 6290, 20000, 39000])
def test_truncated_dicom_is_refused(tmp_path, keep):
    raw = (FILES / "CT_small.dcm").read_bytes()  # pixel data at bytes 6288..39068
    path = tmp_path / f"cut{keep}.dcm"
    path.write_bytes(raw[:keep])
    with pytest.raises(DataError) as err:
        read_dicom(path)
    assert str(path) in str(err.value)


def test_dicom_cut_in_its_trailing_padding_reads_intact(tmp_path):
    raw = (FILES / "CT_small.dcm").read_bytes()  # (FFFC,FFFC) padding after the pixels
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[:-1])
    assert np.array_equal(read_dicom(path).pixels, read_dicom(FILES / "CT_small.dcm").pixels)
