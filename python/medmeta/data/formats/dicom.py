"""DICOM (pydicom): single files, multi-frame files and series folders.

* :func:`read_dicom` reads one file (single- or multi-frame) to ``[F, H, W]`` float32, with the
  modality LUT (``RescaleSlope * stored + RescaleIntercept``, i.e. Hounsfield units for CT)
  and an optional display window (:data:`~medmeta.edge.windowing.WINDOW_PRESETS`).
* :func:`load_dicom_series` reads a series folder into a volume ``[Z, H, W]`` ordered by slice
  position along the slice normal (``ImagePositionPatient`` projected on the cross product of
  the ``ImageOrientationPatient`` row and column directions).
* :func:`load_dicom_folder` reads ``root/<class>/<files>`` into an :class:`ArrayDataset` of
  2-D slices whose ``groups`` are hashed patient ids.

Privacy: patient-identifying attributes (names, ids, birth dates, addresses, UIDs, dates, ...)
are never logged and never copied into outputs. The only patient-derived value that leaves
this module is :func:`patient_key`: ``HMAC-SHA256(salt, PatientID)`` truncated to 16 hex
digits, meant as the episode/split ``groups`` key. A dataset folder gets its own salt
(:func:`dataset_salt`: ``HMAC-SHA256(secret, "medmeta-dataset:" + folder name)``), so one
patient has unrelated keys in two datasets; the secret is ``$MEDMETA_PATIENT_SALT`` or a fixed
public default. It is a pseudonym, not an anonymisation: with the public default anyone who
knows a PatientID and the folder name can recompute the key, so set a secret
(``MEDMETA_PATIENT_SALT``, or ``salt=``, then used as the dataset's salt as it is) for data that
leaves your site. ``meta["patient_key"]`` of a loaded dataset says how its keys were made
(scheme and a fingerprint of the salt, never the salt). pydicom's own warnings are captured
and only counted, because their text can quote values.

Sizes are checked before decoding: ``Rows x Columns x frames x samples x bytes`` above
``max_bytes`` raises :class:`DataError` without touching the pixel data, and native (not
compressed) pixel data shorter than the header implies is reported as truncated.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmeta.edge.windowing import apply_window, resolve_window

from ..dataset import ArrayDataset
from ..errors import (
    DEFAULT_MAX_BYTES,
    DataError,
    OnError,
    SkippedFile,
    check_on_error,
    check_size,
    missing_extra,
    report_skipped,
)

__all__ = [
    "DicomImage",
    "DicomVolume",
    "dataset_salt",
    "load_dicom_folder",
    "load_dicom_series",
    "patient_key",
    "read_dicom",
]

logger = logging.getLogger(__name__)

DEFAULT_SALT = "medmeta-patient-key-v1"
_SALT_ENV = "MEDMETA_PATIENT_SALT"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("pydicom", err) from err
    return pydicom


def _secret() -> str:
    return os.environ.get(_SALT_ENV) or DEFAULT_SALT


def patient_key(patient_id: str | None, salt: str | None = None) -> str:
    """A stable pseudonymous patient id: ``HMAC-SHA256(salt, PatientID)``, 16 hex digits.

    ``salt`` defaults to ``$MEDMETA_PATIENT_SALT`` or a fixed public salt (the folder
    loaders pass the dataset's :func:`dataset_salt`). A missing or empty PatientID maps to
    one shared key (all such files then fall in one group, which is the safe choice for
    patient-level splits).
    """
    key = (_secret() if salt is None else salt).encode("utf-8")
    return hmac.new(key, (patient_id or "").encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def dataset_salt(root: str | os.PathLike[str], secret: str | None = None) -> str:
    """The salt of the patient keys of the dataset in folder ``root``:
    ``HMAC-SHA256(secret, "medmeta-dataset:" + folder name)`` as hex, so the same patient gets
    unrelated keys in differently named datasets while a dataset keeps its keys wherever it
    is copied. ``secret``: ``$MEDMETA_PATIENT_SALT`` or a fixed public default."""
    name = os.path.basename(os.path.normpath(os.fspath(root)))
    key = (_secret() if secret is None else secret).encode("utf-8")
    return hmac.new(key, f"medmeta-dataset:{name}".encode(), hashlib.sha256).hexdigest()


def _key_info(salt: str, given: bool) -> dict[str, str]:
    """``meta["patient_key"]``: how the keys were made, with a fingerprint of the salt."""
    return {"scheme": "hmac-sha256/16", "salt": "given" if given else "per-dataset",
            "salt_fingerprint": hashlib.sha256(salt.encode("utf-8")).hexdigest()[:8]}  # fmt: skip


@dataclass(frozen=True, repr=False)
class DicomImage:
    """One decoded DICOM file. No patient-identifying attribute is kept.

    Attributes:
        pixels: float32 ``[F, H, W]`` (``[F, H, W, 3]`` for colour), after the modality LUT
            (HU for CT) when ``rescaled``, windowed to ``[0, 1]`` when ``window`` was given.
        modality: e.g. ``"CT"``, ``"MR"``.
        patient_key: :func:`patient_key` of the PatientID.
        positions: ``[F, 3]`` ImagePositionPatient of each frame (mm) or ``None``.
        orientation: ``[6]`` ImageOrientationPatient or ``None``.
        pixel_spacing: ``(row, column)`` spacing in mm or ``None``.
        slice_thickness: mm or ``None``.
        instance_number: InstanceNumber or ``None``.
        rescaled: whether a slope/intercept was applied.
        window: the ``(center, width)`` applied, or ``None``.
        photometric: PhotometricInterpretation.
    """

    pixels: np.ndarray
    modality: str
    patient_key: str
    positions: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    instance_number: int | None
    rescaled: bool
    window: tuple[float, float] | None
    photometric: str
    series_key: str = field(default="")

    def __repr__(self) -> str:
        return (
            f"DicomImage(modality={self.modality!r}, pixels={self.pixels.dtype}"
            f"{list(self.pixels.shape)}, rescaled={self.rescaled}, window={self.window})"
        )


@dataclass(frozen=True, repr=False)
class DicomVolume:
    """A series as a volume ``[Z, H, W]`` float32 ordered by slice position.

    Attributes:
        volume: the slices, first = lowest position along the slice normal.
        spacing: ``(z, y, x)`` voxel spacing in mm (``z`` from positions when available).
        positions: ``[Z, 3]`` ImagePositionPatient per slice, or ``None``.
        modality, patient_key, rescaled, window: as in :class:`DicomImage`.
        skipped: files skipped under ``on_error="skip"``.
    """

    volume: np.ndarray
    spacing: tuple[float, float, float] | None
    positions: np.ndarray | None
    orientation: np.ndarray | None
    modality: str
    patient_key: str
    rescaled: bool
    window: tuple[float, float] | None
    skipped: tuple[SkippedFile, ...] = ()

    def __repr__(self) -> str:
        return (
            f"DicomVolume(modality={self.modality!r}, volume={self.volume.dtype}"
            f"{list(self.volume.shape)}, spacing={self.spacing})"
        )


def _float_or_none(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _frame_values(ds: Any, n_frames: int, seq: str, attr: str) -> list[Any] | None:
    """Per-frame values of ``attr`` from the enhanced multi-frame functional groups."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and len(per) == n_frames:
        vals = []
        for item in per:
            inner = item.get(seq)
            if inner is None or len(inner) == 0 or attr not in inner[0]:
                vals = None
                break
            vals.append(inner[0].get(attr))
        if vals is not None:
            return vals
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) > 0:
        inner = shared[0].get(seq)
        if inner is not None and len(inner) > 0 and attr in inner[0]:
            return [inner[0].get(attr)] * n_frames
    return None


def _rescale_params(ds: Any, n_frames: int) -> tuple[np.ndarray, np.ndarray, bool]:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None or intercept is not None:
        s = _float_or_none(slope)
        i = _float_or_none(intercept)
        return (
            np.full(n_frames, 1.0 if s is None else s),
            np.full(n_frames, 0.0 if i is None else i),
            True,
        )
    s_list = _frame_values(ds, n_frames, "PixelValueTransformationSequence", "RescaleSlope")
    i_list = _frame_values(ds, n_frames, "PixelValueTransformationSequence", "RescaleIntercept")
    if s_list is None and i_list is None:
        return np.ones(n_frames), np.zeros(n_frames), False
    s_arr = np.array([_float_or_none(v) or 1.0 for v in (s_list or [1.0] * n_frames)])
    i_arr = np.array([_float_or_none(v) or 0.0 for v in (i_list or [0.0] * n_frames)])
    return s_arr, i_arr, True


def _numbers(values: Any, n: int, name: str, path: str) -> np.ndarray | None:
    """``values`` as ``n`` finite floats, ``None`` when absent or of another length; values
    that are not numbers raise :class:`DataError` naming the attribute."""
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        return None
    if len(values) != n:
        return None
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"invalid {name}: expected {n} numbers ({err})", path) from err
    if not np.isfinite(out).all():
        raise DataError(f"invalid {name}: expected {n} finite numbers", path)
    return out


def _positions(ds: Any, n_frames: int, path: str) -> np.ndarray | None:
    per = _frame_values(ds, n_frames, "PlanePositionSequence", "ImagePositionPatient")
    if per is not None:
        rows = [_numbers(p, 3, "ImagePositionPatient", path) for p in per]
        if all(r is not None for r in rows):
            return np.stack(rows)  # type: ignore[arg-type]
    pos = _numbers(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
    return pos[None] if pos is not None and n_frames == 1 else None


def _orientation(ds: Any, n_frames: int, path: str) -> np.ndarray | None:
    ori = ds.get("ImageOrientationPatient")
    if ori is None:
        per = _frame_values(ds, n_frames, "PlaneOrientationSequence", "ImageOrientationPatient")
        ori = per[0] if per else None
    return _numbers(ori, 6, "ImageOrientationPatient", path)


def _spacing(ds: Any, n_frames: int, path: str) -> tuple[float, float] | None:
    sp = ds.get("PixelSpacing")
    if sp is None:
        per = _frame_values(ds, n_frames, "PixelMeasuresSequence", "PixelSpacing")
        sp = per[0] if per else None
    values = _numbers(sp, 2, "PixelSpacing", path)
    return None if values is None else (float(values[0]), float(values[1]))


def _int_attr(ds: Any, name: str, path: str, default: int | None = None) -> int:
    value = ds.get(name, default)
    if value is None or value == "":
        raise DataError(f"missing {name}; cannot determine the image size", path)
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"invalid {name} value {value!r}", path) from err


def _dcmread(path: str, force: bool) -> Any:
    pydicom = _pydicom()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=force)
        except pydicom.errors.InvalidDicomError as err:
            raise DataError("not a DICOM file (no 'DICM' preamble/file meta header)", path) from err
        except Exception as err:
            raise DataError(
                f"cannot parse DICOM ({type(err).__name__}); the file is corrupt or truncated", path
            ) from err
    if caught:  # the text may quote element values, so only the count is logged
        logger.debug("pydicom emitted %d warnings while reading %s", len(caught), path)
    return ds


class _Muted(logging.Filter):
    """Drops (and counts) log records: pydicom's quote element values, e.g. "Invalid value
    for VR UI: '<the UID>'" when an attribute is first read."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


def _quiet_pydicom(read: Callable[..., DicomImage]) -> Callable[..., DicomImage]:
    """``read`` with pydicom's warnings and log records counted, never shown: elements are
    decoded lazily, on first access, so this covers the whole read, not only ``dcmread``."""

    @functools.wraps(read)
    def quiet(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> DicomImage:
        muted, caught = _Muted(), []
        names = ["pydicom", *(n for n in logging.Logger.manager.loggerDict if n.startswith("pydicom."))]  # fmt: skip
        loggers = [logging.getLogger(n) for n in names]
        for log in loggers:
            log.addFilter(muted)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return read(path, *args, **kwargs)
        finally:
            for log in loggers:
                log.removeFilter(muted)
            if caught or muted.count:  # only counted: the text may quote names, ids, dates
                logger.debug("pydicom warned %d times while reading %s", len(caught) + muted.count, os.fspath(path))  # fmt: skip

    return quiet


def _malformed_as_data_error(read: Callable[..., DicomImage]) -> Callable[..., DicomImage]:
    """``read`` with the errors that pydicom raises while it decodes a malformed element on
    first access (a number that is not one, a bad UID, a short value, ...) turned into a
    :class:`DataError` naming the file. The element's text is left out: it may be a patient
    identifier."""

    @functools.wraps(read)
    def checked(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> DicomImage:
        try:
            return read(path, *args, **kwargs)
        except DataError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                NotImplementedError, struct.error, UnicodeError) as err:  # fmt: skip
            raise DataError(f"malformed DICOM header ({type(err).__name__} while reading an "
                            "element); the file is corrupt", os.fspath(path)) from err  # fmt: skip

    return checked


@_quiet_pydicom
@_malformed_as_data_error
def read_dicom(
    path: str | os.PathLike[str],
    *,
    rescale: bool = True,
    window: str | tuple[float, float] | None = None,
    invert_monochrome1: bool = True,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    salt: str | None = None,
    force: bool = False,
) -> DicomImage:
    """Read one DICOM file (single- or multi-frame).

    Args:
        path: the file.
        rescale: apply ``RescaleSlope``/``RescaleIntercept`` (HU for CT); also looked up in the
            enhanced multi-frame functional groups.
        window: a preset name (``"lung"``, ``"soft_tissue"``, ``"bone"``, ``"brain"``, ...) or a
            ``(center, width)`` pair; maps values to ``[0, 1]`` after rescaling.
        invert_monochrome1: invert MONOCHROME1 images (where low values are bright) so that high
            values are always bright.
        max_bytes: refuse files whose header implies more than this many bytes of pixels.
        salt: salt of the hashed patient key (see :func:`patient_key`).
        force: let pydicom read files without the DICOM preamble.

    Returns:
        :class:`DicomImage` with ``pixels`` float32 ``[F, H, W]`` (or ``[F, H, W, 3]``).
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError("file not found", p)
    size = os.path.getsize(p)
    check_size(size, max_bytes, p, "the file")
    win = resolve_window(window) if window is not None else None
    ds = _dcmread(p, force)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(
            "no pixel data (no PixelData element): the file may be truncated, or it is a "
            "non-image object such as a structured report or presentation state",
            p,
        )
    rows = _int_attr(ds, "Rows", p)
    cols = _int_attr(ds, "Columns", p)
    frames = _int_attr(ds, "NumberOfFrames", p, 1)
    spp = _int_attr(ds, "SamplesPerPixel", p, 1)
    bits = _int_attr(ds, "BitsAllocated", p, 16)
    if (
        min(rows, cols, frames, spp, bits) <= 0
        or spp not in (1, 3)
        or bits not in (1, 8, 16, 32, 64)
    ):
        raise DataError(
            f"invalid image header: Rows={rows}, Columns={cols}, NumberOfFrames={frames}, "
            f"SamplesPerPixel={spp}, BitsAllocated={bits}",
            p,
        )
    n_values = rows * cols * frames * spp
    stored = (n_values * bits + 7) // 8
    what = f"pixel data of {frames} frame(s) of {rows}x{cols}x{spp} at {bits} bits"
    check_size(stored, max_bytes, p, what)
    check_size(n_values * 4, max_bytes, p, f"decoded float32 {what}")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        encapsulated = bool(tsyntax is not None and tsyntax.is_encapsulated)
    except (ValueError, AttributeError) as err:
        raise DataError("the file meta's TransferSyntaxUID is not a transfer syntax", p) from err
    if not encapsulated and "PixelData" in ds:
        have = len(ds.PixelData)
        if have < stored:
            raise DataError(
                f"pixel data holds {have:,} bytes but the header (Rows x Columns x frames x "
                f"samples x bits) implies {stored:,}: the file is truncated or the header wrong",
                p,
            )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            raw = ds.pixel_array
        except Exception as err:
            hint = (
                " (compressed transfer syntax: a decoder plugin such as pylibjpeg or "
                "python-gdcm may be needed)"
                if encapsulated
                else ""
            )
            raise DataError(
                f"cannot decode pixel data ({type(err).__name__}: {err}){hint}", p
            ) from err
    raw = np.asarray(raw)
    expected = (frames, rows, cols) + ((3,) if spp == 3 else ())
    if frames == 1:
        raw = raw[None]
    if tuple(raw.shape) != expected:
        raise DataError(f"decoded pixel array has shape {raw.shape}, header implies {expected}", p)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    pixels = raw.astype(np.float32)
    if invert_monochrome1 and photometric == "MONOCHROME1":
        bits_stored = _int_attr(ds, "BitsStored", p, bits)
        if not 1 <= bits_stored <= bits:
            raise DataError(f"invalid BitsStored={bits_stored} for BitsAllocated={bits}", p)
        if raw.dtype.kind == "u":
            pixels = np.float32(2**bits_stored - 1) - pixels
        else:
            pixels = -pixels
    slope, intercept, rescaled = _rescale_params(ds, frames)
    if rescale and rescaled:
        shape = (frames,) + (1,) * (pixels.ndim - 1)
        pixels = pixels * slope.astype(np.float32).reshape(shape) + intercept.astype(
            np.float32
        ).reshape(shape)
    if win is not None:
        pixels = apply_window(pixels, win)
    if not np.isfinite(pixels).all():
        raise DataError("pixel values contain NaN or infinity after rescaling", p)
    inst = ds.get("InstanceNumber")
    return DicomImage(
        pixels=pixels,
        modality=str(ds.get("Modality", "")),
        patient_key=patient_key(str(ds.get("PatientID", "") or ""), salt),
        positions=_positions(ds, frames, p),
        orientation=_orientation(ds, frames, p),
        pixel_spacing=_spacing(ds, frames, p),
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        instance_number=None if inst in (None, "") else _int_attr(ds, "InstanceNumber", p),
        rescaled=bool(rescale and rescaled),
        window=win,
        photometric=photometric,
        series_key=patient_key(str(ds.get("SeriesInstanceUID", "") or ""), salt),
    )


def _list_files(folder: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.upper() != "DICOMDIR":
                files.append(os.path.join(dirpath, f))
    return files


def load_dicom_series(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    rescale: bool = True,
    window: str | tuple[float, float] | None = None,
    series: int | None = None,
    on_error: OnError = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    salt: str | None = None,
) -> DicomVolume:
    """Read a DICOM series (a folder, searched recursively, or a list of files) into a volume.

    Slices are ordered by position along the slice normal; when positions are missing, by
    InstanceNumber. Multi-frame files contribute one slice per frame. All slices must share
    the size and orientation; duplicated positions raise :class:`DataError`.

    Args:
        source: folder or list of files.
        rescale, window, max_bytes: as for :func:`read_dicom`.
        salt: salt of ``patient_key`` (default for a folder: its :func:`dataset_salt`).
        series: if the files hold several series, which one (index in order of SeriesNumber);
            by default several series raise :class:`DataError`.
        on_error: ``"skip"`` skips unreadable files and reports them in ``volume.skipped``.

    Returns:
        :class:`DicomVolume` with ``volume`` float32 ``[Z, H, W]``.
    """
    check_on_error(on_error)
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        if not os.path.isdir(folder):
            raise DataError("DICOM series folder not found", folder)
        files = _list_files(folder)
        where = folder
        salt = dataset_salt(folder) if salt is None else salt
    else:
        files = [os.fspath(f) for f in source]
        where = "files"
    if not files:
        raise DataError("no files found for the series", where)
    images: list[tuple[str, DicomImage]] = []
    skipped: list[SkippedFile] = []
    for f in files:
        try:
            images.append(
                (f, read_dicom(f, rescale=rescale, window=window, max_bytes=max_bytes, salt=salt))
            )
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(SkippedFile(f, err.problem))
    report_skipped(logger, skipped, len(files))
    if not images:
        raise DataError(f"no readable DICOM image among {len(files)} files", where)
    by_series: dict[str, list[tuple[str, DicomImage]]] = {}
    for f, im in images:
        by_series.setdefault(im.series_key, []).append((f, im))
    keys = list(by_series)
    if len(keys) > 1:
        if series is None:
            sizes = [len(by_series[k]) for k in keys]
            raise DataError(
                f"the files hold {len(keys)} series ({sizes} files); pass series= to choose one",
                where,
            )
        if not 0 <= series < len(keys):
            raise DataError(f"series={series} out of range; there are {len(keys)} series", where)
        chosen = by_series[keys[series]]
    else:
        chosen = by_series[keys[0]]

    slices: list[np.ndarray] = []
    positions: list[np.ndarray | None] = []
    instance: list[int | None] = []
    frame_index: list[int] = []
    names: list[str] = []
    f0, im0 = chosen[0]
    for f, im in chosen:
        if im.pixels.shape[1:] != im0.pixels.shape[1:]:
            raise DataError(
                f"slice size {im.pixels.shape[1:]} differs from "
                f"{im0.pixels.shape[1:]} of {os.path.basename(f0)!r}",
                f,
            )
        if (
            im.orientation is not None
            and im0.orientation is not None
            and not np.allclose(im.orientation, im0.orientation, atol=1e-3)
        ):
            raise DataError(f"slice orientation differs from that of {os.path.basename(f0)!r}", f)
        for k in range(im.pixels.shape[0]):
            slices.append(im.pixels[k])
            positions.append(None if im.positions is None else im.positions[k])
            instance.append(im.instance_number)
            frame_index.append(k)
            names.append(f)
    orientation = im0.orientation
    pos_arr: np.ndarray | None = None
    if all(p is not None for p in positions):
        pos_arr = np.stack(positions)  # type: ignore[arg-type]
        if orientation is not None:
            normal = np.cross(orientation[:3], orientation[3:])
        else:
            normal = np.array([0.0, 0.0, 1.0])
        dist = pos_arr @ normal
        order = np.argsort(dist, kind="stable")
        d_sorted = dist[order]
        dup = np.flatnonzero(np.isclose(np.diff(d_sorted), 0.0, atol=1e-4))
        if dup.size:
            a, b = names[order[dup[0]]], names[order[dup[0] + 1]]
            raise DataError(
                f"two slices share the position {d_sorted[dup[0]]:.3f} mm along the "
                f"slice normal ({os.path.basename(a)!r} and {os.path.basename(b)!r})",
                where,
            )
        steps = np.diff(d_sorted)
        dz = float(np.median(steps)) if steps.size else im0.slice_thickness
    elif len(chosen) == 1:  # one (possibly multi-frame) file: keep the stored frame order
        order = np.arange(len(slices))
        dz = im0.slice_thickness
    elif all(i is not None for i in instance) and len(set(instance)) == len(chosen):
        logger.info(
            "no slice positions in %s; ordering %d slices by InstanceNumber", where, len(slices)
        )
        order = np.lexsort((np.asarray(frame_index), np.asarray(instance)))
        dz = im0.slice_thickness
    else:
        raise DataError(
            "cannot order the slices: no ImagePositionPatient and no unique InstanceNumber", where
        )
    volume = np.stack([slices[i] for i in order])
    spacing = None
    if im0.pixel_spacing is not None:
        spacing = (float(dz) if dz is not None else float("nan"), *im0.pixel_spacing)
    return DicomVolume(
        volume=volume,
        spacing=spacing,
        positions=None if pos_arr is None else pos_arr[order],
        orientation=orientation,
        modality=im0.modality,
        patient_key=im0.patient_key,
        rescaled=im0.rescaled,
        window=im0.window,
        skipped=tuple(skipped),
    )


def load_dicom_folder(
    root: str | os.PathLike[str],
    *,
    rescale: bool = True,
    window: str | tuple[float, float] | None = None,
    size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    on_error: OnError = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    salt: str | None = None,
) -> ArrayDataset:
    """Read ``root/<class>/**/<DICOM file>`` into a dataset of 2-D slices.

    Every frame of every file becomes one example. ``groups`` holds the hashed patient key
    (:func:`patient_key` with the dataset's salt) so that episodes and splits can keep a
    patient's slices together; ``meta["patient_key"]`` says how (never the salt itself).
    Neither the file names nor any patient attribute is stored in the dataset.

    Args:
        root: folder with one sub-folder per class (searched recursively inside each class).
        rescale, window, max_bytes: as for :func:`read_dicom`.
        salt: salt of the patient keys (default: :func:`dataset_salt` of ``root``).
        size: resize slices to ``(H, W)``; by default sizes must match, and a mismatch raises
            :class:`DataError` naming the file.
        class_names: the class folders to load, in label order (default: all, sorted).
        on_error: ``"skip"`` skips unreadable files and reports them in ``dataset.skipped``.

    Returns:
        :class:`ArrayDataset` with ``x`` float32 ``[N, H, W]`` (``[N, H, W, 3]`` for colour),
        ``groups`` the patient keys and ``extra["modality"]``.
    """
    from .image_folder import _list_classes, _resize

    check_on_error(on_error)
    root_s = os.fspath(root)
    given, salt = salt is not None, dataset_salt(root_s) if salt is None else salt
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    names = _list_classes(root_s, class_names)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    groups: list[str] = []
    modality: list[str] = []
    skipped: list[SkippedFile] = []
    total = 0
    first: tuple[tuple[int, ...], str] | None = None
    for label, cname in enumerate(names):
        files = _list_files(os.path.join(root_s, cname))
        if not files:
            raise DataError(
                f"class folder {cname!r} contains no files", os.path.join(root_s, cname)
            )
        kept = 0
        for f in files:
            total += 1
            try:
                im = read_dicom(f, rescale=rescale, window=window, max_bytes=max_bytes, salt=salt)
                frames = [im.pixels[k] for k in range(im.pixels.shape[0])]
                if size is not None:
                    frames = [_resize(fr, size) for fr in frames]
                shape = frames[0].shape
                if first is None:
                    first = (shape, f)
                elif shape != first[0]:
                    raise DataError(
                        f"slice shape {shape} differs from {first[0]} of "
                        f"{os.path.basename(first[1])!r}; pass size=(H, W)",
                        f,
                    )
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped.append(SkippedFile(f, err.problem))
                continue
            xs.extend(frames)
            ys.extend([label] * len(frames))
            groups.extend([im.patient_key] * len(frames))
            modality.extend([im.modality] * len(frames))
            kept += 1
        if kept == 0:
            raise DataError(
                f"no readable DICOM image in class {cname!r} ({len(files)} skipped)",
                os.path.join(root_s, cname),
            )
    report_skipped(logger, skipped, total)
    meta = {
        "name": os.path.basename(os.path.normpath(root_s)),
        "format": "dicom",
        "rescaled": rescale,
        "window": None if window is None else resolve_window(window),
        "patient_key": _key_info(salt, given),
    }
    return ArrayDataset(
        np.stack(xs),
        np.asarray(ys, dtype=np.int64),
        names,
        np.asarray(groups),
        meta=meta,
        extra={"modality": np.asarray(modality)},
        skipped=skipped,
    )
