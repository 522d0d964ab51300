"""The 3-D evaluation protocol of SSL-ALPNet (Ouyang et al., ECCV 2020) for 1-shot organ
segmentation, also used by ADNet (Hansen et al. 2022) and Q-Net (Shen et al. 2023).

Volumes are rebuilt from 2-D slices by patient id and slice index. For an organ, the
slices of the *support* volume that contain it are split into ``chunks`` equal parts
(``numpy.array_split`` of the sorted slice range) and the centre slice of each part,
with its organ mask, is a 1-shot support. The query volume's slices between its first
and last slice containing the organ are split the same way, and every query slice of
part i is segmented with support i. Dice is computed once over the rebuilt 3-D
prediction of that slice range (the protocol's choice: slices outside the organ's range
are not segmented, which the published numbers also assume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medmeta.data.errors import DataError

__all__ = ["Volume", "chunk_centres", "volume_dice", "volumes_from_slices"]

#: ``segment(support_x [S, C, H, W], support_masks [S, H, W], query_x [n, C, H, W])
#: -> [n, H, W]`` label maps (e.g. ``learner.segment``).
Segment = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Volume:
    """One patient's slices in order: ``images [Z, C, H, W]`` float32 in [0, 1], ``labels
    [Z, H, W]`` int64 dataset class ids, and the patient id."""

    images: torch.Tensor
    labels: torch.Tensor
    patient: Any

    def organ_slices(self, organ: int) -> np.ndarray:
        """Indices ``z`` of the slices containing ``organ``, ascending."""
        return torch.nonzero((self.labels == organ).flatten(1).any(1)).flatten().numpy()


def volumes_from_slices(
    images: Any, labels: Any, patients: Any, slice_index: Any
) -> dict[Any, Volume]:
    """Volumes by patient from slices ``images [N, H, W]`` (or ``[N, H, W, C]``; uint8 is
    scaled by 1/255), ``labels [N, H, W]``, ``patients [N]`` and ``slice_index [N]``."""
    img = np.asarray(images)
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    lab, pat, idx = np.asarray(labels), np.asarray(patients), np.asarray(slice_index)
    if not (len(img) == len(lab) == len(pat) == len(idx)):
        raise DataError(
            f"images, labels, patients and slice_index must have one entry per slice, got "
            f"{len(img)}, {len(lab)}, {len(pat)}, {len(idx)}",
            "slice_index",
        )
    out = {}
    for p in np.unique(pat):
        rows = np.nonzero(pat == p)[0]
        rows = rows[np.argsort(idx[rows], kind="stable")]
        x = torch.from_numpy(img[rows].astype(np.float32) / scale)
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x[:, None]
        key = p.item() if hasattr(p, "item") else p
        out[key] = Volume(x.contiguous(), torch.from_numpy(lab[rows].astype(np.int64)), key)
    return out


def chunk_centres(slices: np.ndarray, chunks: int) -> list[int]:
    """The centre slice of each of ``chunks`` equal parts of ``slices`` (ascending)."""
    return [int(part[len(part) // 2]) for part in np.array_split(slices, chunks) if len(part)]


def volume_dice(
    segment: Segment, support: Volume, query: Volume, organ: int, chunks: int = 3
) -> float:
    """3-D Dice of ``organ`` on ``query``'s organ range, 1-shot per chunk from ``support``
    (see the module docstring). Raises ``DataError`` when a volume lacks the organ."""
    for role, vol in (("support", support), ("query", query)):
        if not len(vol.organ_slices(organ)):
            raise DataError(
                f"the {role} volume of patient {vol.patient!r} has no slice with class {organ}",
                role,
            )
    centres = chunk_centres(support.organ_slices(organ), chunks)
    q = query.organ_slices(organ)
    span = np.arange(q.min(), q.max() + 1)
    parts = np.array_split(span, len(centres))
    inter = total = 0
    for centre, part in zip(centres, parts, strict=True):
        if not len(part):
            continue
        sx = support.images[centre : centre + 1]
        sm = (support.labels[centre : centre + 1] == organ).long()
        pred = segment(sx, sm, query.images[part]) == 1
        truth = query.labels[part] == organ
        inter += int((pred & truth).sum())
        total += int(pred.sum() + truth.sum())
    return 2 * inter / total if total else 1.0
