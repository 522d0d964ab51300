"""Small labelled containers over numpy arrays or torch tensors.

:class:`ArrayDataset` holds ``x`` (``[N, ...]``) and integer labels ``y`` (``[N]``, values in
``0..K-1``) with class names and optional per-example ``groups`` (patient / source ids, used to
keep correlated examples on one side of a split). :class:`SegmentationDataset` holds images and
integer masks. Both validate their inputs and raise :class:`~medmeta.data.errors.DataError`
with the argument name and what is wrong.

This module imports neither torch nor any optional dependency: tensors are recognised by type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DataError, SkippedFile

__all__ = ["ArrayDataset", "SegmentationDataset", "check_class_sizes", "dataset_origin"]


def _is_torch(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach")


def _to_numpy(obj: Any) -> np.ndarray:
    if _is_torch(obj):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def _describe(arr: Any) -> str:
    dtype = str(arr.dtype).replace("torch.", "")
    return f"{dtype}[{', '.join(str(int(s)) for s in arr.shape)}]"


def _check_labels(y: Any, n: int, num_classes: int | None, name: str) -> np.ndarray:
    labels = _to_numpy(y)
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores labels as [N, 1]
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"labels must have shape [N], got shape {tuple(labels.shape)}", name)
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {labels.dtype}", name)
    if labels.shape[0] != n:
        raise DataError(f"{n} examples but {labels.shape[0]} labels", name)
    if labels.size:
        bad = np.flatnonzero(labels < 0)
        if num_classes is not None:
            bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            i = int(bad[0])
            limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise DataError(
                f"label {int(labels[i])} at index {i} is out of range (expected {limit}; "
                f"{bad.size} labels out of range)",
                name,
            )
    return labels.astype(np.int64, copy=False)


def _check_groups(groups: Any, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = _to_numpy(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise DataError(f"groups must have shape [{n}], got shape {tuple(g.shape)}", "groups")
    return g


def _check_extra(extra: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in (extra or {}).items():
        arr = _to_numpy(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise DataError(
                f"per-example field must have length {n}, got shape {tuple(arr.shape)}",
                f"extra[{key!r}]",
            )
        out[key] = arr
    return out


def _check_finite(x: Any, name: str) -> None:
    if _is_torch(x):
        if x.is_floating_point():
            finite = x.reshape(x.shape[0], -1).isfinite().all(dim=1).cpu().numpy()
        else:
            return
    else:
        if x.dtype.kind not in "fc":
            return
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    bad = np.flatnonzero(~finite)
    if bad.size:
        raise DataError(
            f"example {int(bad[0])} contains NaN or infinite values ({bad.size} examples affected)",
            name,
        )


class _Labelled:
    """Shared behaviour of the labelled containers (class names, groups, subsets)."""

    class_names: tuple[str, ...]
    groups: np.ndarray | None
    meta: dict[str, Any]
    extra: dict[str, np.ndarray]
    skipped: tuple[SkippedFile, ...]

    def _init_common(
        self,
        n: int,
        class_names: Sequence[str] | None,
        num_classes: int,
        groups: Any,
        meta: Mapping[str, Any] | None,
        extra: Mapping[str, Any] | None,
        skipped: Iterable[SkippedFile],
    ) -> None:
        if class_names is None:
            self.class_names = tuple(str(k) for k in range(num_classes))
        else:
            self.class_names = tuple(str(c) for c in class_names)
        self.groups = _check_groups(groups, n)
        self.meta = dict(meta or {})
        self.extra = _check_extra(extra, n)
        self.skipped = tuple(skipped)

    @property
    def classes(self) -> list[str]:
        """Class names, indexed by label."""
        return list(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_by_class(self) -> dict[int, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name (for segmentation: images containing the class)."""
        by_class = self.indices_by_class()
        return {name: int(by_class[k].size) for k, name in enumerate(self.class_names)}

    def _subset_common(self, idx: np.ndarray) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "groups": None if self.groups is None else self.groups[idx],
            "meta": self.meta,
            "extra": {k: v[idx] for k, v in self.extra.items()},
        }


def _index_array(indices: Any, n: int) -> np.ndarray:
    idx = _to_numpy(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise DataError(f"boolean mask must have shape [{n}], got {idx.shape}", "indices")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise DataError(
            f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}", "indices"
        )
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise DataError(f"indices must lie in [0, {n}), got {idx.min()}..{idx.max()}", "indices")
    return idx


class ArrayDataset(_Labelled):
    """Labelled examples held in memory.

    Args:
        x: examples, numpy array or torch tensor of shape ``[N, ...]`` (images ``[N, H, W]`` or
            ``[N, H, W, C]`` as stored, features ``[N, D]``, series ``[N, C, L]``).
        y: integer labels of shape ``[N]`` (``[N, 1]`` is accepted) with values in ``0..K-1``.
        class_names: ``K`` names; if omitted, ``K = max(y) + 1`` and names are ``"0".."K-1"``.
        groups: optional ``[N]`` ids of the patient / volume / source of each example.
        meta: dataset-level information (name, source, license, spacing, ...).
        extra: optional per-example arrays of length ``N`` (e.g. the original split).
        skipped: inputs skipped by a loader under ``on_error="skip"``.
        check_finite: refuse floating-point ``x`` with NaN/inf (default ``True``).

    ``ds[i]`` returns ``(x[i], y[i])``; ``y`` has the array library of ``x``.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        class_names: Sequence[str] | None = None,
        groups: Any = None,
        *,
        meta: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        skipped: Iterable[SkippedFile] = (),
        check_finite: bool = True,
    ) -> None:
        if not _is_torch(x):
            x = np.asarray(x)
            if x.dtype == object:
                raise DataError("x must be a numeric array, got dtype object", "x")
        if x.ndim < 1:
            raise DataError(f"x must have shape [N, ...], got a scalar of shape {x.shape}", "x")
        n = int(x.shape[0])
        k = None if class_names is None else len(class_names)
        if class_names is not None and len(set(map(str, class_names))) != len(class_names):
            raise DataError(f"class names must be unique, got {list(class_names)}", "class_names")
        labels = _check_labels(y, n, k, "y")
        if check_finite and n:
            _check_finite(x, "x")
        num_classes = k if k is not None else (int(labels.max()) + 1 if labels.size else 0)
        self.x = x
        self._labels = labels
        if _is_torch(x):
            import torch

            self.y = torch.from_numpy(labels.copy()).to(x.device)
        else:
            self.y = labels
        self._init_common(n, class_names, num_classes, groups, meta, extra, skipped)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        return self.x[index], self.y[index]

    @property
    def labels(self) -> np.ndarray:
        """Labels as a numpy ``int64`` array ``[N]`` (whatever the array library of ``x``)."""
        return self._labels

    def indices_by_class(self) -> dict[int, np.ndarray]:
        """``{label: sorted indices of its examples}`` for every class, empty ones included."""
        order = np.argsort(self._labels, kind="stable")
        bounds = np.searchsorted(self._labels[order], np.arange(self.num_classes + 1))
        return {k: order[bounds[k] : bounds[k + 1]] for k in range(self.num_classes)}

    def subset(self, indices: Any) -> ArrayDataset:
        """A new dataset with the examples at ``indices`` (labels and class names unchanged)."""
        idx = _index_array(indices, len(self))
        sel = idx
        if _is_torch(self.x):
            import torch

            sel = torch.from_numpy(idx).to(self.x.device)
        return ArrayDataset(
            self.x[sel], self._labels[idx], check_finite=False, **self._subset_common(idx)
        )

    def __repr__(self) -> str:
        name = self.meta.get("name")
        head = f"name={name!r}, " if name else ""
        groups = "None" if self.groups is None else f"{len(np.unique(self.groups))} ids"
        return (
            f"ArrayDataset({head}n={len(self)}, x={_describe(self.x)}, "
            f"classes={self.num_classes}, groups={groups})"
        )


class SegmentationDataset(_Labelled):
    """Images with integer label maps.

    Args:
        images: ``[N, *spatial]`` or ``[N, *spatial, C]`` numpy array or torch tensor.
        masks: integer ``[N, *spatial]`` with values in ``0..K-1`` (0 = background).
        class_names: ``K`` names including the background at index 0.
        groups: optional ``[N]`` patient / volume ids (slices of one volume are correlated).
        meta, extra, skipped: as for :class:`ArrayDataset`.

    ``ds[i]`` returns ``(images[i], masks[i])``.
    """

    def __init__(
        self,
        images: Any,
        masks: Any,
        class_names: Sequence[str],
        groups: Any = None,
        *,
        meta: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        skipped: Iterable[SkippedFile] = (),
    ) -> None:
        if not _is_torch(images):
            images = np.asarray(images)
        m = _to_numpy(masks)
        if m.ndim < 2:
            raise DataError(f"masks must have shape [N, *spatial], got {tuple(m.shape)}", "masks")
        if tuple(images.shape[: m.ndim]) != tuple(m.shape):
            raise DataError(
                f"masks of shape {tuple(m.shape)} do not match images of shape "
                f"{tuple(images.shape)}",
                "masks",
            )
        if m.dtype.kind not in "iu":
            raise DataError(f"masks must be integer class ids, got dtype {m.dtype}", "masks")
        k = len(class_names)
        if m.size:
            lo, hi = int(m.min()), int(m.max())
            if lo < 0 or hi >= k:
                raise DataError(
                    f"mask values must lie in 0..{k - 1} ({k} class names), found {lo}..{hi}",
                    "masks",
                )
        self.images = images
        self.masks = masks if _is_torch(masks) else m
        n = int(m.shape[0])
        present = np.zeros((n, k), dtype=bool)
        flat = m.reshape(n, -1)
        for i in range(n):
            present[i, np.unique(flat[i])] = True
        self._present = present
        self._init_common(n, class_names, k, groups, meta, extra, skipped)

    def __len__(self) -> int:
        return int(self._present.shape[0])

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        return self.images[index], self.masks[index]

    @property
    def present(self) -> np.ndarray:
        """``[N, K]`` bool: whether class ``k`` occurs in the mask of example ``i``."""
        return self._present

    def indices_by_class(self) -> dict[int, np.ndarray]:
        """``{label: indices of the examples whose mask contains that class}``."""
        return {k: np.flatnonzero(self._present[:, k]) for k in range(self.num_classes)}

    def subset(self, indices: Any) -> SegmentationDataset:
        idx = _index_array(indices, len(self))
        sel = idx
        if _is_torch(self.images):
            import torch

            sel = torch.from_numpy(idx).to(self.images.device)
        masks = self.masks[sel] if _is_torch(self.masks) else self.masks[idx]
        return SegmentationDataset(self.images[sel], masks, **self._subset_common(idx))

    def __repr__(self) -> str:
        name = self.meta.get("name")
        head = f"name={name!r}, " if name else ""
        groups = "None" if self.groups is None else f"{len(np.unique(self.groups))} ids"
        return (
            f"SegmentationDataset({head}n={len(self)}, images={_describe(self.images)}, "
            f"classes={self.num_classes}, groups={groups})"
        )


def check_class_sizes(
    dataset: Any,
    min_per_class: int | None = None,
    *,
    shots: int | None = None,
    queries: int | None = None,
    classes: Sequence[int | str] | None = None,
) -> dict[str, int]:
    """Check that every class has enough examples for an episode.

    Give either ``min_per_class`` or ``shots`` and ``queries`` (then ``min = shots + queries``).
    ``classes`` restricts the check to some labels or class names (default: all classes).
    Works with any container that has ``indices_by_class()`` and ``class_names``.

    Returns ``{class name: count}`` for the checked classes; raises
    :class:`DataError` naming every class that is too small.
    """
    if min_per_class is None:
        if shots is None or queries is None:
            raise DataError("give min_per_class, or both shots and queries", "min_per_class")
        need = int(shots) + int(queries)
        why = f"shots + queries = {shots} + {queries} = {need}"
    else:
        if shots is not None or queries is not None:
            raise DataError("give min_per_class or shots/queries, not both", "min_per_class")
        need = int(min_per_class)
        why = f"min_per_class = {need}"
    if need < 1:
        raise DataError(f"the number of examples needed per class must be >= 1, got {need}")
    names = list(dataset.class_names)
    by_class = dataset.indices_by_class()
    if classes is None:
        wanted = list(range(len(names)))
    else:
        wanted = []
        for c in classes:
            if isinstance(c, str):
                if c not in names:
                    raise DataError(f"unknown class {c!r}; classes are {names}", "classes")
                wanted.append(names.index(c))
            else:
                if not 0 <= int(c) < len(names):
                    raise DataError(f"label {c} out of range 0..{len(names) - 1}", "classes")
                wanted.append(int(c))
    counts = {names[k]: int(by_class[k].size) for k in wanted}
    small = [(k, names[k], counts[names[k]]) for k in wanted if counts[names[k]] < need]
    if small:
        parts = [f"class {name!r} (label {k}) has only {n} examples" for k, name, n in small]
        raise DataError(f"{'; '.join(parts)}; need {why} per class", dataset_origin(dataset))
    return counts


def dataset_origin(dataset: object) -> str:
    """Where a dataset came from, for error messages: its file or folder, else its name."""
    meta = getattr(dataset, "meta", None) or {}
    return str(meta.get("path") or meta.get("name") or "the dataset")
