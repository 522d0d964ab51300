"""The SSL-ALPNet 3-D chunk protocol: chunk centres, volume rebuilding, and Dice against
hand-computed values with a scripted segmenter; clear errors for a missing organ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmeta.data import DataError
from medmeta.eval.volume_protocol import chunk_centres, volume_dice, volumes_from_slices


def test_chunk_centres_split_the_range_in_equal_parts() -> None:
    assert chunk_centres(np.arange(10, 19), 3) == [11, 14, 17]
    assert chunk_centres(np.array([4, 5]), 3) == [4, 5]  # fewer slices than chunks


def _slices() -> tuple[np.ndarray, ...]:
    """Two patients, 6 slices each, shuffled; organ 1 on slices 1..4 of each volume."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 8, 8), dtype=np.uint8)
    labels = np.zeros((12, 8, 8), dtype=np.int64)
    patients = np.repeat([7, 9], 6)
    index = np.tile(np.arange(6), 2)
    for i in range(12):
        if 1 <= index[i] <= 4:
            labels[i, 2:6, 2:6] = 1
    order = rng.permutation(12)
    return images[order], labels[order], patients[order], index[order]


def test_volumes_are_rebuilt_in_slice_order() -> None:
    images, labels, patients, index = _slices()
    vols = volumes_from_slices(images, labels, patients, index)
    assert sorted(vols) == [7, 9]
    v = vols[9]
    rows = np.nonzero(patients == 9)[0][np.argsort(index[patients == 9])]
    torch.testing.assert_close(v.images[:, 0], torch.from_numpy(images[rows] / 255).float())
    assert v.organ_slices(1).tolist() == [1, 2, 3, 4]


def test_volume_dice_uses_the_chunk_centre_supports_and_the_organ_range() -> None:
    images, labels, patients, index = _slices()
    vols = volumes_from_slices(images, labels, patients, index)
    calls = []

    def segment(sx, sm, qx):  # predicts the top half of the organ square only
        calls.append((sx.shape[0], int(sm.sum()), qx.shape[0]))
        out = torch.zeros(qx.shape[0], 8, 8, dtype=torch.long)
        out[:, 2:4, 2:6] = 1
        return out

    dice = volume_dice(segment, vols[7], vols[9], organ=1, chunks=3)
    # 4 organ slices in 3 chunks (2, 1, 1 slices); each support is one 16-pixel mask
    assert calls == [(1, 16, 2), (1, 16, 1), (1, 16, 1)]
    assert dice == pytest.approx(2 * 8 * 4 / (8 * 4 + 16 * 4))


def test_a_volume_without_the_organ_is_a_clear_error() -> None:
    images, labels, patients, index = _slices()
    vols = volumes_from_slices(images, labels, patients, index)
    with pytest.raises(DataError, match="support volume of patient 7 has no slice with class 2"):
        volume_dice(lambda *a: None, vols[7], vols[9], organ=2)
