"""Segmentation data on the command line (torch-free): images with label maps from an
embedded dataset, an ``.npz`` (``images``, ``masks``, ``class_names``), NIfTI volumes with
label maps, or a folder of images and masks (:mod:`medmeta.cli._segfiles`); class
selections; and the conversion to model inputs (the model's preprocessing for the images,
an area-majority resize for the masks)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.cli._segfiles import LAYOUT_HELP, class_names_from, find_pairs, is_nifti, label_map
from medmeta.data import DataError, SegmentationDataset
from medmeta.edge.cli.classes import parse_classes
from medmeta.edge.images import IMAGE_EXTENSIONS, read_image
from medmeta.edge.resize import resize_images

__all__ = [
    "SEG_DATA_HELP",
    "SegData",
    "Volume",
    "data_line",
    "keep_classes",
    "load_segdata",
    "model_inputs",
    "parse_seg_classes",
    "resize_masks",
    "sampler_dataset",
    "split_groups",
]

SEG_DATA_HELP = (
    "an embedded segmentation dataset (e.g. dsb_nuclei), an .npz with images/masks/"
    f"class_names, NIfTI volumes with label maps, or {LAYOUT_HELP}"
)


@dataclass(frozen=True)
class Volume:
    """A NIfTI input: its file and the rows ``start : start + count`` of its axial slices."""

    path: Path
    start: int
    count: int


@dataclass
class SegData:
    """Raw images with optional label maps.

    Attributes:
        images: ``[N, H, W]`` / ``[N, H, W, C]`` as stored, or a list of ``[H, W(, C)]``
            arrays when sizes differ.
        masks: int label maps ``[N, H, W]`` (or a list) in ``0..K-1``; None when unlabelled.
        class_names: ``K`` names, the background first.
        groups: ``[N]`` image / volume ids (support and query come from different groups).
        ids: ``[N]`` a name per image (its file, or ``dataset[i]``).
        source: the data's name or path, for messages.
        volumes: the NIfTI volumes the slices came from (empty for 2-D images).
    """

    images: np.ndarray | list[np.ndarray]
    masks: np.ndarray | list[np.ndarray] | None
    class_names: list[str]
    groups: np.ndarray
    ids: list[str]
    source: str
    volumes: list[Volume] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Any) -> SegData:
        """The images at ``idx`` (volumes are dropped)."""
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        pick = (lambda a: a[idx]) if isinstance(self.images, np.ndarray) else (
            lambda a: [a[i] for i in idx]
        )  # fmt: skip
        masks = None
        if self.masks is not None:
            masks = self.masks[idx] if isinstance(self.masks, np.ndarray) else [
                self.masks[i] for i in idx
            ]  # fmt: skip
        return replace(self, images=pick(self.images), masks=masks, groups=self.groups[idx],
                       ids=[self.ids[i] for i in idx], volumes=[])  # fmt: skip

    def pixel_counts(self) -> np.ndarray:
        """``[N, K]`` pixels of each class in each mask."""
        if self.masks is None:
            raise DataError("the data has no masks", self.source)
        k = len(self.class_names)
        return np.stack([np.bincount(np.asarray(m).ravel(), minlength=k)[:k] for m in self.masks])


def _stack(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    same = len({(a.shape, a.dtype) for a in arrays}) == 1
    return np.stack(arrays) if same else arrays


def _from_dataset(ds: SegmentationDataset, source: str) -> SegData:
    n = len(ds)
    groups = np.asarray(ds.groups) if ds.groups is not None else np.arange(n)
    name = str(ds.meta.get("name") or source)
    return SegData(np.asarray(ds.images), np.asarray(ds.masks).astype(np.int64),
                   list(ds.class_names), groups, [f"{name}[{i}]" for i in range(n)], source)  # fmt: skip


def _from_npz(path: Path) -> SegData:
    from medmeta.data.formats.npz import load_npz, npz_keys, read_npz

    keys = npz_keys(str(path))
    if "masks" in keys:
        ds = load_npz(path)
        assert isinstance(ds, SegmentationDataset)
        return _from_dataset(ds, str(path))
    if "labels" in keys:
        raise DataError("holds class labels, not masks: segmentation needs 'images' with "
                        "'masks' (and 'class_names')", path)  # fmt: skip
    key = next((k for k in ("images", "X", "x") if k in keys), None)
    if key is None:
        raise DataError(f"no 'images' array (the file holds {keys})", path)
    images = read_npz(path, [key])[key]
    n = len(images)
    return SegData(images, None, ["background"], np.arange(n),
                   [f"{path.name}[{i}]" for i in range(n)], str(path))  # fmt: skip


def _from_embedded(name: str) -> SegData:
    from medmeta.data import registry

    infos = registry.list_datasets()
    segs = [d.name for d in infos if d.kind == "segmentation"]
    if name not in [d.name for d in infos]:
        raise DataError(f"no such file or folder, and not an embedded dataset (embedded "
                        f"segmentation sets: {', '.join(segs)})", name)  # fmt: skip
    if name not in segs:
        raise DataError(f"holds class labels, not masks; embedded segmentation sets: "
                        f"{', '.join(segs)}", name)  # fmt: skip
    return _from_dataset(registry.load(name), name)


def _from_nifti(pairs: list[tuple[Path, Path | None]], root: Path, flag: str | None) -> SegData:
    from medmeta.data.formats.nifti import load_nifti_segmentation, nifti_slices

    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    volumes: list[Volume] = []
    groups: list[str] = []
    top, worst = 0, pairs[0][0]
    for image, labels in pairs:
        if labels is None:
            slices = nifti_slices(image)
        else:
            ds = load_nifti_segmentation(image, labels)
            slices, m = np.asarray(ds.images), np.asarray(ds.masks)
            masks += list(m)
            if m.size and int(m.max()) > top:
                top, worst = int(m.max()), labels
        volumes.append(Volume(image, len(images), len(slices)))
        images += list(slices)
        groups += [image.name] * len(slices)
    ids = [f"{v.path}[{i}]" for v in volumes for i in range(v.count)]
    names = class_names_from(flag, root, top, str(worst))
    return SegData(_stack(images), _stack(masks) if masks else None, names,
                   np.asarray(groups), ids, str(root), volumes)  # fmt: skip


def _from_files(spec: str, flag: str | None) -> SegData:
    path = Path(spec)
    root = path if path.is_dir() else path.parent
    pairs = find_pairs(path)
    if is_nifti(pairs[0][0]):
        return _from_nifti(pairs, root, flag)
    images, masks, top, worst = [], [], 0, pairs[0][0]
    for image_file, mask_file in pairs:
        image = read_image(image_file)
        images.append(image)
        if mask_file is not None:
            masks.append(label_map(read_image(mask_file), mask_file, image.shape[:2]))
            if int(masks[-1].max()) > top:
                top, worst = int(masks[-1].max()), mask_file
    names = class_names_from(flag, root, top, str(worst))
    return SegData(_stack(images), _stack(masks) if masks else None, names,
                   np.arange(len(images)), [str(p) for p, _ in pairs], str(spec))  # fmt: skip


def load_segdata(spec: str, *, class_names: str | None = None) -> SegData:
    """The images (and masks, when there are any) named or located by ``spec`` (see
    :data:`SEG_DATA_HELP`); ``class_names`` is the ``--class-names`` flag (files only)."""
    path = Path(spec)
    is_image = path.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(path)
    if path.is_dir() or (path.is_file() and is_image):
        return _from_files(spec, class_names)
    if class_names:
        raise DataError("--class-names names the labels of image/NIfTI files; this data "
                        "has its own class names", spec)  # fmt: skip
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise DataError("file not found", spec)
        return _from_npz(path)
    if path.exists():
        raise DataError(f"expected an .npz file, NIfTI volumes or {LAYOUT_HELP}", spec)
    return _from_embedded(spec)


# ------------------------------------------------------------------------- class choices


def parse_seg_classes(data: SegData, spec: str | None, option: str) -> list[int] | None:
    """Foreground class ids chosen by ``spec`` (ids or names; None: all); the background is
    refused."""
    try:
        ids = parse_classes(spec, data.class_names)
    except DataError as err:
        raise DataError(err.problem, option) from None
    if ids is not None and 0 in ids:
        raise DataError(f"class {data.class_names[0]!r} (id 0) is the background; choose "
                        f"foreground classes 1..{len(data.class_names) - 1}", option)  # fmt: skip
    return ids


def keep_classes(data: SegData, ids: list[int], *, remap: bool) -> SegData:
    """Label maps with only the classes ``ids`` (the others become background); with
    ``remap`` class ``ids[k]`` becomes ``k + 1`` and the names follow."""
    if data.masks is None:
        return data
    lut = np.zeros(len(data.class_names), dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1) if remap else ids
    masks = [lut[m] for m in data.masks]
    names = ["background", *(data.class_names[c] for c in ids)] if remap else data.class_names
    return replace(data, masks=_stack(masks), class_names=list(names))


# ------------------------------------------------------------------------- model inputs


def resize_masks(masks: Any, size: tuple[int, int], classes: int, chunk: int = 64) -> np.ndarray:
    """Label maps (``[N, H, W]`` or a list) -> ``[N, *size]`` int64: each pixel gets the class
    covering most of it (one-hot maps resized with area / bilinear weights, then argmax)."""
    out = []
    items = list(masks)
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        if len({m.shape for m in part}) == 1 and part[0].shape == tuple(size):
            out.append(np.stack(part).astype(np.int64))
            continue
        for m in part:
            onehot = (np.asarray(m)[None] == np.arange(classes)[:, None, None]).astype(np.float32)
            out.append(resize_images(onehot, size).argmax(0)[None].astype(np.int64))
    return np.concatenate(out) if out else np.zeros((0, *size), np.int64)


def model_inputs(data: SegData, pre: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images [N, C, H, W] float32 through the preprocessing ``pre``, masks [N, H, W]
    int64 at the model's size or None)``."""
    if isinstance(data.images, np.ndarray):
        x = pre(data.images, batched=True)
    else:
        x = np.concatenate([pre(im, batched=False) for im in data.images])
    masks = None
    if data.masks is not None:
        masks = resize_masks(data.masks, tuple(pre.input_shape[1:]), len(data.class_names))
    return x, masks


def sampler_dataset(
    x: np.ndarray, masks: np.ndarray, data: SegData, name: str | None = None
) -> SegmentationDataset:
    """A :class:`SegmentationDataset` of model inputs ``x [N, C, H, W]`` (stored
    channels-last, as the episode samplers read images) with ``masks [N, H, W]``."""
    meta = {"name": name or data.source, "path": data.source}
    return SegmentationDataset(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), masks,
                               data.class_names, data.groups, meta=meta)  # fmt: skip


def data_line(spec: str, data: SegData, pre: Any) -> str:
    """One line on the data a command is about to use: images, the classes and how many
    images hold each, the stored size and what the preprocessing changes."""
    line = f"data: {spec}: {len(data)} images"
    if data.masks is None:
        line += " without masks"
    else:
        held = (data.pixel_counts() > 0).sum(0)
        line += "; " + ", ".join(f"{n} in {k}" for n, k in zip(data.class_names[1:], held[1:],
                                                               strict=True))  # fmt: skip
    sizes = sorted({tuple(np.shape(im)) for im in data.images})
    h, w = sizes[0][:2]
    c = sizes[0][2] if len(sizes[0]) == 3 else 1
    line += f"; images {h}x{w}" + (" and other sizes" if len(sizes) > 1 else "")
    line += f" with {c} channel{'s' if c > 1 else ''}"
    mc, mh, mw = pre.input_shape
    changes = [f"resized to {mh}x{mw}"] if len(sizes) > 1 or (h, w) != (mh, mw) else []
    if mc != min(c, 3):
        changes.append("gray to RGB" if mc == 3 else "RGB to gray")
    first = np.asarray(data.images[0])
    if pre.window is not None:
        changes.append(f"windowed at center {pre.window[0]:g}, width {pre.window[1]:g}")
    elif first.dtype.kind == "f" and (first.min() < 0 or first.max() > 1):
        changes.append(
            f"values {first.min():.4g}..{first.max():.4g} used as they are (no --window)"
        )
    return line + ("; " + ", ".join(changes) if changes else "")


def split_groups(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept rows, held-out rows)``: ``fraction`` of the groups (at least one, at most all
    but one) held out, chosen with ``seed``."""
    unique = np.unique(groups)
    if len(unique) < 2:
        return np.arange(len(groups)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held = np.isin(groups, rng.permutation(unique)[:n])
    return np.flatnonzero(~held), np.flatnonzero(held)
