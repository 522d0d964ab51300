"""Few-shot segmentation episodes: an N-way K-shot sampler over image/label-map pairs.

The episodes follow the construction of PANet (Wang et al., ICCV 2019) and SSL-ALPNet
(Ouyang et al., ECCV 2020): an episode picks N foreground classes (organs); each class gets K
support images with a *binary* mask of that class, and Q query images are labelled with a map
in ``0..N`` (0 = background and every class outside the episode). ``ways=1, shots=1`` is the
standard 1-way 1-shot organ protocol. With patient ids (``groups``) the queries come from
patients not used by the episode's support, so a model cannot match a query to an adjacent
slice of the same volume.

Images become float32 ``[C, H, W]`` (channels-first; grayscale ``[H, W]`` gets ``C = 1``;
uint8 is scaled by 1/255 and uint16 by 1/65535, other dtypes are cast unchanged). The
conversion is done on the images of each meta-batch only, so the dataset is never copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .dataset import _to_numpy, dataset_origin
from .episodes import SeededSampler, _class_id
from .errors import DataError, check_count

__all__ = ["SegmentationEpisodeBatch", "SegmentationEpisodeSampler"]


@dataclass(frozen=True)
class SegmentationEpisodeBatch:
    """B few-shot segmentation episodes (N-way K-shot, Q queries each).

    Attributes:
        support_x: ``[B, N*K, C, H, W]`` float32 support images, class-major (K images of
            episode class 0, then K of class 1, ...).
        support_masks: ``[B, N*K, H, W]`` int64 binary masks: for support image j of episode
            class n, 1 where the pixel belongs to class n, else 0.
        support_labels: ``[B, N*K, H, W]`` int64 episode label maps of the support images
            (0 background, ``n + 1`` for episode class n, classes outside the episode -> 0).
        query_x: ``[B, Q, C, H, W]`` float32 query images.
        query_masks: ``[B, Q, H, W]`` int64 episode label maps in ``0..N`` (0 = background and
            every class not in the episode).
        classes: ``[B, N]`` int64 dataset class ids of the episode classes 1..N.
    """

    support_x: torch.Tensor
    support_masks: torch.Tensor
    support_labels: torch.Tensor
    query_x: torch.Tensor
    query_masks: torch.Tensor
    classes: torch.Tensor
    ways: int
    shots: int
    queries: int

    @property
    def batch_size(self) -> int:
        return int(self.classes.shape[0])

    def to(
        self, device: torch.device | str, non_blocking: bool = False
    ) -> SegmentationEpisodeBatch:
        """The same episodes on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            support_x=move(self.support_x),
            support_masks=move(self.support_masks),
            support_labels=move(self.support_labels),
            query_x=move(self.query_x),
            query_masks=move(self.query_masks),
            classes=move(self.classes),
        )


def _image_tensor(images: Any, mask_shape: tuple[int, ...]) -> tuple[torch.Tensor, float, bool]:
    """Images as a torch tensor in their stored dtype (no copy for numpy / CPU tensors).

    Returns ``(tensor [N, H, W] or [N, H, W, C], divisor to [0, 1], channels_last)``.
    """
    t = images if isinstance(images, torch.Tensor) else None
    if t is None:
        arr = np.asarray(images)
        if arr.dtype.kind not in "biuf":
            raise DataError(f"images must be numeric, got dtype {arr.dtype}", "images")
        if arr.dtype == np.uint16:  # torch indexes uint16 poorly: widen once, keep the scale
            arr = arr.astype(np.int32)
            scale = 65535.0
        else:
            scale = 255.0 if arr.dtype == np.uint8 else 1.0
        with warnings.catch_warnings():  # read-only arrays (np.load mmap): never written to
            warnings.filterwarnings("ignore", message=".*not writable.*")
            t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        t = t.detach().cpu()
        scale = {torch.uint8: 255.0, torch.uint16: 65535.0}.get(t.dtype, 1.0)
        if t.dtype == torch.uint16:
            t = t.to(torch.int32)
    nd = len(mask_shape)
    if t.dim() not in (nd, nd + 1) or tuple(t.shape[:nd]) != tuple(mask_shape):
        raise DataError(
            f"images must be [N, H, W] or [N, H, W, C] matching masks of shape "
            f"{tuple(mask_shape)}, got shape {tuple(t.shape)}",
            "images",
        )
    return t, scale, t.dim() == nd + 1


def pixel_counts(masks: np.ndarray, num_classes: int, chunk: int = 1024) -> np.ndarray:
    """Pixels of each class in each label map: ``[N, *spatial]`` ints -> ``[N, K]`` int64.

    One ``np.bincount`` over ``image * K + label`` per chunk of ``chunk`` images (vectorised,
    bounded memory).
    """
    n = int(masks.shape[0])
    flat = masks.reshape(n, -1)
    out = np.zeros((n, num_classes), dtype=np.int64)
    for start in range(0, n, chunk):
        part = flat[start : start + chunk].astype(np.int64)
        rows = np.arange(part.shape[0], dtype=np.int64)[:, None] * num_classes
        counts = np.bincount((rows + part).ravel(), minlength=part.shape[0] * num_classes)
        out[start : start + part.shape[0]] = counts.reshape(-1, num_classes)
    return out


class SegmentationEpisodeSampler(SeededSampler):
    """Samples meta-batches of N-way K-shot few-shot segmentation episodes.

    Episodes are built as in PANet (Wang et al. 2019) and SSL-ALPNet (Ouyang et al. 2020):
    N foreground classes (never the background) are drawn; each gets K support images with
    a binary mask of that class; Q query images are labelled ``0..N``.

    Eligibility (the minimum foreground size): an image is a support candidate for class c
    only when c covers at least ``min_foreground`` pixels of its mask; an image is a query
    candidate only when at least one episode class covers at least ``min_foreground``
    pixels. Support images of one episode are distinct and never reused as its queries.
    With ``groups`` (patient ids) and ``use_groups=True`` the queries come from groups not
    used by any support image of the episode.

    Images are returned as float32 ``[C, H, W]`` (channels-first; grayscale ``[H, W]`` gets
    ``C = 1``; uint8 scaled to [0, 1] by 1/255, uint16 by 1/65535, other dtypes cast as is).

    Args:
        dataset: a :class:`~medmeta.data.SegmentationDataset` (or anything with ``images``
            ``[N, H, W]`` / ``[N, H, W, C]``, integer ``masks`` ``[N, H, W]``,
            ``class_names`` with the background at index 0, and ``groups``).
        ways, shots, queries: N (>= 1), K (>= 1) and Q (>= 1, queries per episode).
        batch_size: episodes per meta-batch B.
        generator: a ``torch.Generator`` or an int seed (``None`` -> seed 0); all randomness
            comes from it and :meth:`state_dict` saves its state for exact resumption.
        min_foreground: the minimum number of pixels of a class in an eligible image (>= 1).
        classes: restrict episodes to these foreground classes (ids or names), e.g. train on
            ``["liver", "spleen"]`` and test on the kidneys; default: every foreground class
            with at least one eligible image.
        use_groups: honour ``dataset.groups`` when present.

    Raises:
        DataError: bad arguments, unknown or background classes, a class with fewer than
            ``shots + queries`` eligible images, or (with groups) a class found in one patient.
    """

    def __init__(
        self,
        dataset: Any,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
        min_foreground: int = 32,
        classes: Sequence[int | str] | None = None,
        use_groups: bool = True,
    ) -> None:
        self.ways = check_count("ways", ways, 1)
        self.shots = check_count("shots", shots, 1)
        self.queries = check_count("queries", queries, 1)
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.min_foreground = check_count("min_foreground", min_foreground, 1)
        self.class_names = list(dataset.class_names)
        self._origin = dataset_origin(dataset)
        masks = _to_numpy(dataset.masks)
        _check_masks(masks, len(self.class_names))
        self._images, self._scale, self._channels_last = _image_tensor(dataset.images, masks.shape)
        #: ``[N, K]`` int64 pixels of each class in each mask (computed once).
        self.pixel_counts = pixel_counts(masks, len(self.class_names))
        self._masks = torch.from_numpy(masks.astype(_mask_dtype(len(self.class_names))))
        groups = getattr(dataset, "groups", None)
        self._groups: torch.Tensor | None = None
        if use_groups and groups is not None:
            codes = np.unique(_to_numpy(groups), return_inverse=True)[1].reshape(-1)
            self._groups = torch.from_numpy(codes.astype(np.int64))
        self._eligible = torch.from_numpy(self.pixel_counts >= self.min_foreground)  # [N, K]
        self.class_ids = torch.as_tensor(self._pool(classes), dtype=torch.int64)
        self._check_pool()
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            seed = 0 if generator is None else int(generator)
            self.generator = torch.Generator().manual_seed(seed)

    def _pool(self, classes: Sequence[int | str] | None) -> list[int]:
        """Dataset ids of the classes episodes draw from (validated, background refused)."""
        names = self.class_names
        if classes is None:
            counts = self._eligible[:, 1:].sum(0)
            return [k + 1 for k in torch.nonzero(counts > 0).flatten().tolist()]
        if isinstance(classes, (str, int)) or len(classes) == 0:
            raise DataError(
                f"classes must be a non-empty list of ids or names, got {classes!r}", "classes"
            )
        ids = [_class_id(c, names) for c in classes]
        if 0 in ids:
            raise DataError(
                f"class {names[0]!r} (id 0) is the background; episodes draw foreground "
                f"classes 1..{len(names) - 1}",
                "classes",
            )
        if len(set(ids)) != len(ids):
            raise DataError(f"classes must be distinct, got {list(classes)}", "classes")
        return ids

    def _check_pool(self) -> None:
        """Refuse a pool too small for the episode shape, naming classes and counts."""
        names, need = self.class_names, self.shots + self.queries
        counts = self._eligible[:, self.class_ids].sum(0).tolist()
        small = [
            f"{names[c]!r} ({n})"
            for c, n in zip(self.class_ids.tolist(), counts, strict=True)
            if n < need
        ]
        if small:
            raise DataError(
                f"{len(small)} class(es) have fewer than shots + queries = {self.shots} + "
                f"{self.queries} = {need} images with >= min_foreground = {self.min_foreground} "
                f"pixels of the class: {', '.join(small)}",
                self._origin,
            )
        if len(self.class_ids) < self.ways:
            raise DataError(
                f"{self.ways}-way episodes need {self.ways} foreground classes with >= "
                f"min_foreground = {self.min_foreground} pixels in some image, found "
                f"{len(self.class_ids)}: {[names[c] for c in self.class_ids.tolist()]}",
                "ways",
            )
        if self._groups is not None:
            for c in self.class_ids.tolist():
                patients = self._groups[self._eligible[:, c]].unique()
                if len(patients) < 2:
                    raise DataError(
                        f"all eligible images of class {names[c]!r} come from {len(patients)} "
                        "group (patient); support and query must come from different groups "
                        "(pass use_groups=False to allow it)",
                        "groups",
                    )

    def sample(self) -> SegmentationEpisodeBatch:
        """One meta-batch of ``batch_size`` episodes (see :class:`SegmentationEpisodeBatch`)."""
        B, N, K, Q = self.batch_size, self.ways, self.shots, self.queries
        g = self.generator
        pick = torch.rand(B, len(self.class_ids), generator=g).argsort(-1)[:, :N]
        chosen = self.class_ids[pick]  # [B, N] dataset ids
        drawn = [self._episode(chosen[b], g) for b in range(B)]
        support = torch.stack([s for s, _ in drawn])  # [B, N*K]
        query = torch.stack([q for _, q in drawn])  # [B, Q]
        lut = torch.zeros(B, len(self.class_names), dtype=torch.int64)
        lut.scatter_(1, chosen, torch.arange(1, N + 1).expand(B, N))
        support_labels = self._remap(support, lut)  # [B, N*K, H, W]
        own = torch.arange(1, N + 1).repeat_interleave(K).view(1, N * K, 1, 1)
        return SegmentationEpisodeBatch(
            support_x=self._features(support),
            support_masks=(support_labels == own).long(),
            support_labels=support_labels,
            query_x=self._features(query),
            query_masks=self._remap(query, lut),
            classes=chosen,
            ways=N,
            shots=K,
            queries=Q,
        )

    def _episode(
        self, chosen: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Support ``[N*K]`` (class-major) and query ``[Q]`` image indices of one episode."""
        K, Q = self.shots, self.queries
        free = torch.ones(len(self._eligible), dtype=torch.bool)
        support = []
        for c in chosen.tolist():
            cand = torch.nonzero(self._eligible[:, c] & free).flatten()
            if len(cand) < K:
                raise DataError(
                    f"class {self.class_names[c]!r} has only {len(cand)} eligible images not "
                    f"already in this episode's support, need shots = {K}",
                    self._origin,
                )
            ix = cand[torch.randperm(len(cand), generator=g)[:K]]
            free[ix] = False
            support.append(ix)
        sup = torch.cat(support)
        ok = self._eligible[:, chosen].any(1) & free
        if self._groups is not None:
            ok &= ~torch.isin(self._groups, self._groups[sup])
        cand = torch.nonzero(ok).flatten()
        if len(cand) < Q:
            names = [self.class_names[c] for c in chosen.tolist()]
            where = (
                " from groups (patients) outside the support" if self._groups is not None else ""
            )
            raise DataError(
                f"classes {names} have only {len(cand)} eligible query images{where} "
                f"(>= min_foreground = {self.min_foreground} pixels), need queries = {Q}",
                "groups" if self._groups is not None else self._origin,
            )
        return sup, cand[torch.randperm(len(cand), generator=g)[:Q]]

    def _features(self, idx: torch.Tensor) -> torch.Tensor:
        """Images at ``idx`` (``[B, M]``) as float32 ``[B, M, C, H, W]``."""
        x = self._images[idx.reshape(-1)].float()
        if self._scale != 1.0:
            x = x / self._scale
        x = x.permute(0, 3, 1, 2) if self._channels_last else x.unsqueeze(1)
        return x.reshape(*idx.shape, *x.shape[1:]).contiguous()

    def _remap(self, idx: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
        """Label maps at ``idx`` (``[B, M]``) remapped by ``lut`` ``[B, K]``: ``[B, M, H, W]``."""
        m = self._masks[idx.reshape(-1)].long().reshape(idx.shape[0], -1)
        return lut.gather(1, m).reshape(*idx.shape, *self._masks.shape[1:])


def _check_masks(masks: np.ndarray, num_classes: int) -> None:
    """Refuse masks that are not integer ``[N, H, W]`` label maps in ``0..K-1``."""
    if masks.ndim != 3:
        raise DataError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}", "masks")
    if masks.dtype.kind not in "iu":
        raise DataError(f"masks must be integer class ids, got dtype {masks.dtype}", "masks")
    if masks.size and (int(masks.min()) < 0 or int(masks.max()) >= num_classes):
        raise DataError(
            f"mask values must lie in 0..{num_classes - 1}, found "
            f"{int(masks.min())}..{int(masks.max())}",
            "masks",
        )


def _mask_dtype(num_classes: int) -> type[np.integer]:
    """The smallest integer dtype torch indexes that holds ``num_classes`` labels."""
    if num_classes <= 256:
        return np.uint8
    return np.int16 if num_classes <= 32768 else np.int64
