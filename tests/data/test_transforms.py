"""Torch transforms on real images: exact values, shapes, and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmeta.data import DataError, apply_window, load, read_dicom
from medmeta.data.transforms import (
    Compose,
    Normalize,
    RandomFlip,
    RandomIntensity,
    RandomRot90,
    RandomRotate,
    Resize,
    Window,
    to_tensor,
)


@pytest.fixture(scope="module")
def blood_batch():
    return to_tensor(load("pbc_blood").x[:16])


def test_to_tensor_layouts():
    pbc = load("pbc_blood").x[:4]
    t = to_tensor(pbc)
    assert t.shape == (4, 3, 28, 28) and t.dtype == torch.float32
    np.testing.assert_allclose(t[1, 2].numpy(), pbc[1, :, :, 2] / 255.0, rtol=1e-6)
    gray = to_tensor(load("brain_tumor_mri").x[:2])
    assert gray.shape == (2, 1, 64, 64)
    t16 = to_tensor(pbc.astype(np.uint16) * 257)
    np.testing.assert_allclose(t16.numpy(), t.numpy(), atol=1e-6)


def test_same_seed_same_output(blood_batch):
    aug = Compose(
        [RandomFlip(axis="both"), RandomRot90(), RandomRotate(15.0), RandomIntensity(0.1, 0.1)]
    )
    a = aug(blood_batch, generator=torch.Generator().manual_seed(123))
    b = aug(blood_batch, generator=torch.Generator().manual_seed(123))
    c = aug(blood_batch, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == blood_batch.shape


def test_flips_and_rot90_are_exact(blood_batch):
    g = torch.Generator().manual_seed(0)
    assert torch.equal(RandomFlip(p=1.0)(blood_batch, generator=g), blood_batch.flip(3))
    assert torch.equal(
        RandomFlip(p=1.0, axis="vertical")(blood_batch, generator=g), blood_batch.flip(2)
    )
    assert torch.equal(RandomFlip(p=0.0)(blood_batch, generator=g), blood_batch)
    out = RandomRot90()(blood_batch, generator=torch.Generator().manual_seed(1))
    ks = []
    for i in range(len(out)):
        match = [
            k for k in range(4) if torch.equal(out[i], torch.rot90(blood_batch[i], k, dims=(1, 2)))
        ]
        assert match
        ks.append(match[0])
    assert len(set(ks)) > 1  # several rotations drawn across the batch


def test_small_rotation(blood_batch):
    same = RandomRotate(0.0)(blood_batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, blood_batch, atol=1e-5, rtol=0)
    rot = RandomRotate(20.0)(blood_batch, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(rot, blood_batch)
    assert rot.min() >= blood_batch.min() - 1e-6 and rot.max() <= blood_batch.max() + 1e-6


def test_window_resize_normalize(ct_path):
    hu = read_dicom(ct_path).pixels  # [1, 128, 128] in HU
    x = torch.from_numpy(hu)[None]  # [1, 1, 128, 128]
    for preset in ("lung", "bone"):
        np.testing.assert_allclose(
            Window(preset)(x)[0].numpy(), apply_window(hu, preset), atol=1e-6
        )
    small = Resize(64)(x)
    assert small.shape == (1, 1, 64, 64)
    const = Resize((10, 20))(torch.full((2, 3, 28, 28), 0.25))
    torch.testing.assert_close(const, torch.full((2, 3, 10, 20), 0.25))
    norm = Normalize([0.5, 0.4, 0.3], [0.1, 0.2, 0.3])(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(norm[0, :, 0, 0], torch.tensor([5.0, 3.0, 7.0 / 3.0]))
    single = Normalize(0.5, 0.5)(torch.ones(3, 4, 4))
    assert single.shape == (3, 4, 4)


def test_transform_errors():
    with pytest.raises(DataError, match="floating-point"):
        RandomFlip()(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="std must be > 0"):
        Normalize(0.0, 0.0)
    with pytest.raises(DataError, match="mean has 2 values for 3 channels"):
        Normalize([0.1, 0.2], 1.0)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(DataError, match="unknown window preset"):
        Window("spleen-ish")
