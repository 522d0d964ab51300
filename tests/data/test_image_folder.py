"""Image folders: real images from the embedded sets written as PNG/JPEG/TIFF (8/16-bit,
gray/RGB) and read back; corrupt, truncated, mismatched and hostile files."""

from __future__ import annotations

import logging
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from medmeta.data import DataError, load, load_image_folder, read_image


@pytest.fixture(scope="module")
def brain():
    return load("brain_tumor_mri")


@pytest.fixture(scope="module")
def blood():
    return load("pbc_blood")


def _pick(ds, per_class=3, classes=(0, 1)):
    by = ds.indices_by_class()
    return {ds.classes[k]: by[k][:per_class] for k in classes}


def _write(path, arr, fmt):
    if fmt in ("tif",):
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
    elif fmt == "jpg":
        Image.fromarray(arr).save(path, quality=95)
    else:
        Image.fromarray(arr).save(path)


def _folder(tmp_path, ds, fmt, transform=lambda a: a, per_class=3):
    root = tmp_path / f"{fmt}_folder"
    expected_x, expected_y = [], []
    for label, (cname, idx) in enumerate(_pick(ds, per_class).items()):
        (root / cname).mkdir(parents=True)
        for j, i in enumerate(idx):
            arr = transform(ds.x[i])
            _write(root / cname / f"img{j}.{fmt}", arr, fmt)
            expected_x.append(arr)
            expected_y.append(label)
    return root, np.stack(expected_x), np.array(expected_y)


def _to16(a):
    return a.astype(np.uint16) * 257


@pytest.mark.parametrize(
    ("which", "fmt", "transform", "dtype"),
    [
        ("brain", "png", lambda a: a, np.uint8),  # 8-bit gray PNG
        ("blood", "png", lambda a: a, np.uint8),  # 8-bit RGB PNG
        ("brain", "png", _to16, np.uint16),  # 16-bit gray PNG
        ("brain", "tif", lambda a: a, np.uint8),  # 8-bit gray TIFF
        ("blood", "tif", lambda a: a, np.uint8),  # 8-bit RGB TIFF
        ("brain", "tif", _to16, np.uint16),  # 16-bit gray TIFF
        ("blood", "tif", _to16, np.uint16),  # 16-bit RGB TIFF
        ("blood", "bmp", lambda a: a, np.uint8),  # 8-bit RGB BMP
    ],
)
def test_lossless_formats_read_back_exactly(tmp_path, brain, blood, which, fmt, transform, dtype):
    ds = brain if which == "brain" else blood
    root, x, y = _folder(tmp_path, ds, fmt, transform)
    out = load_image_folder(root, scale=False)
    assert out.x.dtype == dtype
    np.testing.assert_array_equal(out.x, x)
    np.testing.assert_array_equal(out.labels, y)
    assert out.classes == ds.classes[:2]
    assert out.extra["file"][0] == f"{ds.classes[0]}/img0.{fmt}"
    scaled = load_image_folder(root)  # default: float32 in [0, 1]
    assert scaled.x.dtype == np.float32
    np.testing.assert_allclose(scaled.x, x / np.iinfo(dtype).max, rtol=1e-6)


def test_jpeg_reads_back_close(tmp_path, blood):
    root, x, _ = _folder(tmp_path, blood, "jpg")
    out = load_image_folder(root, scale=False)
    assert out.x.shape == x.shape and out.x.dtype == np.uint8
    assert np.abs(out.x.astype(int) - x.astype(int)).mean() < 6.0


def test_mixed_bit_depths_share_the_unit_range(tmp_path, brain):
    root, x8, _ = _folder(tmp_path, brain, "png")
    # replace class 1's images by their 16-bit versions: same intensities, other bit depth
    cls1 = sorted((root / brain.classes[1]).iterdir())
    for p in cls1:
        a = np.asarray(Image.open(p))
        p.unlink()
        tifffile.imwrite(p.with_suffix(".tif"), _to16(a))
    out = load_image_folder(root)
    np.testing.assert_allclose(out.x, x8 / 255.0, atol=1e-6)
    with pytest.raises(DataError, match="pixel type uint16 differs from uint8"):
        load_image_folder(root, scale=False)


def test_size_mismatch_names_the_file_and_resize_fixes_it(tmp_path, brain):
    root, _, _ = _folder(tmp_path, brain, "png")
    odd = root / brain.classes[1] / "img1.png"
    Image.fromarray(brain.x[0][:40, :50]).save(odd)
    with pytest.raises(DataError, match=r"image is 40x50 \(HxW\) but 'img0.png' is 64x64") as err:
        load_image_folder(root)
    assert str(odd) in str(err.value)
    out = load_image_folder(root, size=(32, 32))
    assert out.x.shape == (6, 32, 32)
    assert 0.0 <= out.x.min() and out.x.max() <= 1.0


def test_gray_and_rgb_mixed(tmp_path, brain, blood):
    root = tmp_path / "mixed"
    (root / "gray").mkdir(parents=True)
    (root / "rgb").mkdir()
    Image.fromarray(brain.x[0][:28, :28]).save(root / "gray" / "a.png")
    Image.fromarray(blood.x[0]).save(root / "rgb" / "b.png")
    with pytest.raises(DataError, match=r"image is colour but 'a\.png' is grayscale"):
        load_image_folder(root)
    rgb = load_image_folder(root, channels=3, scale=False)
    assert rgb.x.shape == (2, 28, 28, 3)
    np.testing.assert_array_equal(rgb.x[0], np.repeat(brain.x[0][:28, :28, None], 3, axis=-1))
    gray = load_image_folder(root, channels=1)
    luma = blood.x[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    np.testing.assert_allclose(gray.x[1], luma, atol=1e-5)


@pytest.mark.parametrize("fmt", ["png", "tif", "jpg"])
def test_truncated_file_raises_naming_it(tmp_path, brain, truncate, fmt):
    root, _, _ = _folder(tmp_path, brain, fmt)
    victim = root / brain.classes[0] / f"img1.{fmt}"
    truncate(victim, victim, 0.5)
    with pytest.raises(DataError) as err:
        load_image_folder(root)
    assert str(victim) in str(err.value)


def test_on_error_skip_reports_files(tmp_path, brain, truncate, caplog):
    root, x, _ = _folder(tmp_path, brain, "png")
    bad1 = truncate(root / brain.classes[0] / "img1.png", root / brain.classes[0] / "img1.png", 0.3)
    bad2 = root / brain.classes[1] / "zz_junk.png"
    bad2.write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING, logger="medmeta.data"):
        out = load_image_folder(root, on_error="skip")
    assert len(out) == 5
    assert sorted(s.path for s in out.skipped) == sorted([str(bad1), str(bad2)])
    assert "skipped 2 of 7 files" in caplog.text and "zz_junk.png" in caplog.text
    np.testing.assert_array_equal(out.x, np.concatenate([x[:1], x[2:]]) / np.float32(255.0))


def test_empty_class_and_missing_root(tmp_path, brain):
    root, _, _ = _folder(tmp_path, brain, "png")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder 'empty_class' contains no image files"):
        load_image_folder(root)
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(flat)


def test_hidden_and_other_files_are_listed_not_loaded(tmp_path, brain):
    root, x, _ = _folder(tmp_path, brain, "png")
    (root / brain.classes[0] / ".DS_Store").write_bytes(b"\0\0")
    (root / brain.classes[0] / "readme.txt").write_text("x")
    out = load_image_folder(root, scale=False)
    np.testing.assert_array_equal(out.x, x)
    assert sorted(out.meta["ignored"]) == sorted(
        [f"{brain.classes[0]}/.DS_Store", f"{brain.classes[0]}/readme.txt"]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def test_hostile_png_header_fails_fast(tmp_path):
    path = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # claims 10^10 pixels
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + _png_chunk(b"IEND", b"")
    )
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        read_image(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in str(err.value)
    assert "pixels" in str(err.value) or "absurd" in str(err.value)


def test_hostile_tiff_header_fails_fast(tmp_path, brain):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, brain.x[0])
    with pytest.raises(DataError, match="above the limit of 100"):
        read_image(path, max_pixels=100)


def test_big_endian_16bit_tiff(tmp_path, brain):
    root = tmp_path / "be"
    expected = []
    for name, idx in _pick(brain, 2).items():
        (root / name).mkdir(parents=True)
        for j, i in enumerate(idx):
            a = _to16(brain.x[i])
            tifffile.imwrite(root / name / f"{j}.tif", a, byteorder=">")
            expected.append(a)
    out = load_image_folder(root, scale=False)
    assert out.x.dtype == np.dtype("uint16")
    np.testing.assert_array_equal(out.x, np.stack(expected))
