"""NumPy ``.npz`` archives: the MedMNIST layout and the flat ``images``/``labels`` layout.

Layouts understood by :func:`load_npz`:

* MedMNIST: ``train_images``/``train_labels``, ``val_images``/``val_labels``,
  ``test_images``/``test_labels`` (labels ``[N]`` or ``[N, 1]``).
* Flat: ``images`` (or ``X``/``x``) with ``labels`` and optionally ``class_names``,
  ``groups``/``source_ids`` (per-example patient/source ids) and any other 1-D per-example
  arrays (kept in ``dataset.extra``).
* Segmentation: ``images`` with ``masks`` (and ``class_names``) gives a
  :class:`~medmeta.data.dataset.SegmentationDataset`.

Arrays are read member by member with ``allow_pickle=False``: the ``.npy`` header of each member
is checked (dtype, claimed size against ``max_bytes`` and against the member's real size) and
the sizes of all the members read are added up against ``max_bytes`` before anything is
allocated or inflated, so a hostile, truncated or zip-bomb archive fails fast with a
:class:`~medmeta.data.errors.DataError` naming the file and the key.
"""

from __future__ import annotations

import logging
import lzma
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dataset import ArrayDataset, SegmentationDataset
from ..errors import DEFAULT_MAX_BYTES, DataError, check_size

__all__ = ["load_npz", "npz_keys", "read_npz"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
_X_KEYS = ("images", "X", "x", "data")
_GROUP_KEYS = ("groups", "source_ids", "patient_ids")


#: What :mod:`zipfile`, :mod:`zlib`, :mod:`lzma` and :mod:`numpy.lib.format` raise on a corrupt
#: or foreign archive (bad headers, encryption, unknown compression, truncated streams).
_CORRUPT = (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, KeyError,
            IndexError, OverflowError, SyntaxError, struct.error, tokenize.TokenError, zlib.error,
            lzma.LZMAError, zipfile.BadZipFile)  # fmt: skip


#: numpy's reader of any ``.npy`` header version (private: ``np.lib.format`` in numpy 1,
#: ``np.lib._format_impl`` in numpy 2); only format 3.0 (UTF-8 field names) needs it.
_READ_ANY_HEADER = getattr(np.lib.format, "_read_array_header", None) or getattr(
    getattr(np.lib, "_format_impl", None), "_read_array_header", None
)


def _read_header(f: Any, source: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(f)
        elif version == (3, 0) and _READ_ANY_HEADER is not None:
            shape, _fortran, dtype = _READ_ANY_HEADER(f, version)
        else:
            raise DataError(f"array {key!r} has .npy format version {version}; expected 1.0, "
                            "2.0 or 3.0", source)  # fmt: skip
    except DataError:
        raise
    except _CORRUPT as err:
        raise DataError(f"array {key!r} has an invalid .npy header ({err})", source) from err
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _member_header(
    zf: zipfile.ZipFile, key: str, source: str, max_bytes: int | None
) -> tuple[zipfile.ZipInfo, int]:
    """The member of ``key`` and the bytes its array claims, checked before any is read:
    no pickled objects, no negative sizes, at most ``max_bytes`` and at most what the member
    holds (only the ``.npy`` header is inflated)."""
    info = zf.getinfo(key + ".npy")
    try:
        with zf.open(info) as f:
            shape, dtype = _read_header(f, source, key)
            header_len = f.tell()
    except DataError:
        raise
    except _CORRUPT as err:
        raise DataError(
            f"array {key!r} cannot be opened ({type(err).__name__}: {err}); the file is corrupt",
            source,
        ) from err
    if dtype.hasobject:
        raise DataError(
            f"array {key!r} holds pickled Python objects ({dtype}); refused "
            "(medmeta loads .npz files with allow_pickle=False)",
            source,
        )
    if any(s < 0 for s in shape):
        raise DataError(f"array {key!r} has a negative dimension in shape {shape}", source)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_size(nbytes, max_bytes, source, f"array {key!r} of shape {shape} and dtype {dtype}")
    available = info.file_size - header_len
    if nbytes > available:
        raise DataError(
            f"array {key!r} claims shape {shape} ({nbytes:,} bytes) but the archive member holds "
            f"only {available:,} bytes of data (truncated or corrupt)",
            source,
        )
    return info, nbytes


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, source: str) -> np.ndarray:
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _CORRUPT as err:
        raise DataError(
            f"array {key!r} could not be read ({type(err).__name__}: {err}); the file is corrupt",
            source,
        ) from err


def read_npz(
    path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> dict[str, np.ndarray]:
    """Read arrays from an ``.npz`` file safely (no pickles, sizes checked before allocation).

    Every requested member's ``.npy`` header is read first (a few hundred bytes inflated
    each); nothing more is inflated unless each array and all of them together fit
    ``max_bytes``, so a zip bomb (members that inflate to far more) is refused up front.

    Args:
        path: the ``.npz`` file.
        keys: the arrays to read (default: all).
        max_bytes: refuse an archive whose requested arrays claim more bytes than this, one
            or together.

    Returns:
        ``{key: array}``.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise DataError("file not found", source)
    try:
        zf = zipfile.ZipFile(source)
    except _CORRUPT as err:
        raise DataError(
            f"not a valid .npz (zip) archive ({err}); the file may be truncated or corrupt", source
        ) from err
    with zf:
        available = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if keys is None:
            keys = available
        missing = [k for k in keys if k not in available]
        if missing:
            raise DataError(f"missing arrays {missing}; the archive holds {available}", source)
        headers = {k: _member_header(zf, k, source, max_bytes) for k in keys}
        total = sum(nbytes for _, nbytes in headers.values())
        check_size(total, max_bytes, source, f"the {len(headers)} arrays together")
        return {k: _read_member(zf, info, k, source) for k, (info, _) in headers.items()}


def npz_keys(source: str) -> list[str]:
    """The array names of an ``.npz`` archive (no array read); a corrupt archive is a
    :class:`DataError`."""
    try:
        with zipfile.ZipFile(source) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except _CORRUPT as err:
        raise DataError(
            f"not a valid .npz (zip) archive ({err}); the file may be truncated or corrupt", source
        ) from err


def _class_names(arr: np.ndarray | None, given: Sequence[str] | None) -> list[str] | None:
    if given is not None:
        return [str(c) for c in given]
    if arr is None:
        return None
    return [str(c) for c in np.asarray(arr).ravel()]


def load_npz(
    path: str | os.PathLike[str],
    *,
    split: str | Sequence[str] | None = None,
    x_key: str | None = None,
    labels_key: str = "labels",
    class_names: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> ArrayDataset | SegmentationDataset:
    """Load a labelled ``.npz`` archive (MedMNIST or flat layout).

    Args:
        path: the ``.npz`` file.
        split: MedMNIST layout only: ``"train"``, ``"val"``, ``"test"`` or a list of them
            (default: every split present, concatenated; the split of each example is kept in
            ``dataset.extra["split"]``).
        x_key: the key of the examples in the flat layout (default: the first of ``images``,
            ``X``, ``x``, ``data`` present).
        labels_key: the key of the labels in the flat layout.
        class_names: names of the classes, overriding a ``class_names`` array in the file.
        max_bytes: refuse a file whose arrays claim more bytes than this (one array, or all
            the arrays read, together), before any is inflated.
        name: a dataset name recorded in ``meta["name"]``.

    Returns:
        :class:`ArrayDataset` with ``x`` as stored (e.g. uint8 ``[N, H, W]`` or
        ``[N, H, W, 3]``; float32 ``[N, D]``), or :class:`SegmentationDataset` when the file
        has ``masks``.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise DataError("file not found", source)
    keys = npz_keys(source)
    meta: dict[str, Any] = {
        "name": name or os.path.splitext(os.path.basename(source))[0],
        "file": os.path.basename(source),
        "path": source,
        "format": "npz",
    }

    medmnist = [s for s in _SPLITS if f"{s}_images" in keys]
    if medmnist:
        wanted = medmnist if split is None else ([split] if isinstance(split, str) else split)
        for s in wanted:
            if s not in medmnist:
                raise DataError(
                    f"split {s!r} not in the file; available splits: {medmnist}", source
                )
        xs, ys, tags = [], [], []
        for s in wanted:
            if f"{s}_labels" not in keys:
                raise DataError(f"'{s}_images' has no matching '{s}_labels' array", source)
        names_key = ["class_names"] if "class_names" in keys else []
        arrs = read_npz(source, [f"{s}_{part}" for s in wanted for part in ("images", "labels")]
                        + names_key, max_bytes=max_bytes)  # fmt: skip
        for s in wanted:
            x, y = arrs[f"{s}_images"], arrs[f"{s}_labels"]
            if y.ndim == 2 and y.shape[1] != 1:
                raise DataError(
                    f"'{s}_labels' has shape {y.shape}: multi-label targets are not supported "
                    "(expected one class per example)",
                    source,
                )
            if len(x) != len(y):
                raise DataError(
                    f"'{s}_images' has {len(x)} examples but '{s}_labels' has {len(y)} labels",
                    source,
                )
            xs.append(x)
            ys.append(y.reshape(len(y), -1)[:, 0] if y.ndim == 2 else y)
            tags.append(np.full(len(x), s))
        shapes = {x.shape[1:] for x in xs}
        if len(shapes) > 1:
            raise DataError(f"splits have different image shapes {sorted(shapes)}", source)
        names = _class_names(arrs.get("class_names"), class_names)
        try:
            return ArrayDataset(
                np.concatenate(xs),
                np.concatenate(ys),
                names,
                meta=meta,
                extra={"split": np.concatenate(tags)},
            )
        except DataError as err:
            raise DataError(f"labels: {err}", source) from err

    if split is not None:
        raise DataError(
            "split= applies only to the MedMNIST layout (train_images, ...); "
            f"the file holds {keys}",
            source,
        )
    xk = x_key or next((k for k in _X_KEYS if k in keys), None)
    if xk is None or xk not in keys:
        raise DataError(
            f"no examples array found: expected one of {list(_X_KEYS)} (or x_key=), "
            f"or MedMNIST 'train_images'; the file holds {keys}",
            source,
        )
    if "masks" not in keys and labels_key not in keys:
        raise DataError(f"no labels array {labels_key!r}; the file holds {keys}", source)
    arrays = read_npz(source, max_bytes=max_bytes)
    x = arrays[xk]
    n = len(x) if x.ndim else 0
    groups_key = next((k for k in _GROUP_KEYS if k in arrays), None)
    groups = arrays[groups_key] if groups_key else None
    names_arr = arrays.get("class_names")
    if "masks" in arrays:
        names = _class_names(names_arr, class_names)
        masks = arrays["masks"]
        if names is None:
            names = [str(k) for k in range(int(masks.max()) + 1 if masks.size else 1)]
        try:
            return SegmentationDataset(x, masks, names, groups, meta=meta)
        except DataError as err:
            raise DataError(str(err), source) from err
    if labels_key not in arrays:
        raise DataError(f"no labels array {labels_key!r}; the file holds {keys}", source)
    used = {xk, labels_key, "class_names", groups_key}
    extra = {k: v for k, v in arrays.items() if k not in used and v.ndim == 1 and v.shape[0] == n}
    meta["arrays"] = sorted(arrays)
    try:
        return ArrayDataset(
            x,
            arrays[labels_key],
            _class_names(names_arr, class_names),
            groups,
            meta=meta,
            extra=extra,
        )
    except DataError as err:
        raise DataError(str(err), source) from err
