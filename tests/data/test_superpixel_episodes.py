"""SuperpixelEpisodeSampler (SSL-ALPNet self-supervised episodes) on real CHAOS MR T2 slices,
DSB 2018 nuclei images and small synthetic sets.

CHAOS is CC BY-NC-SA: it is read from the shared data folder in tests only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason='scikit-image missing: pip install "medmeta[seg]"')

from scipy import ndimage
from skimage.segmentation import felzenszwalb

from medmeta.data import (
    DataError,
    SegmentationDataset,
    SegmentationEpisodeBatch,
    SuperpixelEpisodeSampler,
)

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")
DSB = Path("/work/shared/data/dsb2018_nuclei.npz")
#: augmentation with the intensity part switched off (geometry only).
NO_INTENSITY = {"gamma": (1.0, 1.0), "contrast": 0.0, "brightness": 0.0, "noise_std": 0.0}
#: augmentation with the geometric part switched off (intensity only).
NO_GEOMETRY = {"rotation": 0.0, "shear": 0.0, "shift": 0.0, "zoom": (1.0, 1.0), "elastic": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread avoids oversubscribing shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chaos() -> SegmentationDataset:
    if not CHAOS.exists():
        pytest.skip(f"CHAOS MR T2 slices not found at {CHAOS}")
    with np.load(CHAOS) as z:
        return SegmentationDataset(
            z["images"], z["masks"], [str(c) for c in z["class_names"]], groups=z["source_ids"]
        )


@pytest.fixture(scope="module")
def dsb() -> dict[str, np.ndarray]:
    """The first 60 fluorescence images (RGB uint8 [60, 128, 128, 3]) and their nuclei masks."""
    if not DSB.exists():
        pytest.skip(f"DSB 2018 nuclei not found at {DSB}")
    with np.load(DSB) as z:
        keep = np.flatnonzero(z["image_type"] == 0)[:60]
        return {"images": z["images"][keep], "masks": z["masks"][keep]}


def _fields(b: SegmentationEpisodeBatch) -> list[torch.Tensor]:
    return [b.support_x, b.support_masks, b.support_labels, b.query_x, b.query_masks, b.classes]


def _assert_same(a: SegmentationEpisodeBatch, b: SegmentationEpisodeBatch) -> None:
    for x, y in zip(_fields(a), _fields(b), strict=True):
        assert torch.equal(x, y)


def _body(slice_u8: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Independent SSL-ALPNet body mask: threshold, largest 8-connected component, filled."""
    x = slice_u8.astype(np.float64)
    x = (x - x.min()) / (x.max() - x.min())
    comp, _ = ndimage.label(x > threshold, structure=np.ones((3, 3)))
    largest = np.bincount(comp.ravel())[1:].argmax() + 1
    return ndimage.binary_fill_holes(comp == largest)


@pytest.mark.parametrize(("ways", "shots", "queries"), [(1, 1, 1), (2, 2, 3)])
def test_chaos_shapes_dtypes_and_labels(chaos, ways, shots, queries):
    s = SuperpixelEpisodeSampler(chaos, ways, shots, queries, batch_size=3, generator=5)
    b = s.sample()
    B, NK, H, W = 3, ways * shots, 128, 128
    assert isinstance(b, SegmentationEpisodeBatch)
    assert b.support_x.shape == (B, NK, 1, H, W) and b.support_x.dtype == torch.float32
    assert b.support_masks.shape == (B, NK, H, W) and b.support_masks.dtype == torch.int64
    assert b.support_labels.shape == (B, NK, H, W) and b.support_labels.dtype == torch.int64
    assert b.query_x.shape == (B, queries, 1, H, W) and b.query_x.dtype == torch.float32
    assert b.query_masks.shape == (B, queries, H, W) and b.query_masks.dtype == torch.int64
    assert b.classes.shape == (B, ways) and b.classes.dtype == torch.int64
    assert (b.ways, b.shots, b.queries, b.batch_size) == (ways, shots, queries, B)
    assert s.last_slices.shape == (B,)
    own = torch.arange(1, ways + 1).repeat_interleave(shots).view(1, NK, 1, 1)
    assert torch.equal(b.support_masks, (b.support_labels == own).long())
    assert (b.support_masks.sum((2, 3)) >= 1).all()  # every support keeps its superpixel
    for k, i in enumerate(s.last_slices.tolist()):
        assert set(b.support_labels[k].unique().tolist()) == set(range(ways + 1))
        assert set(b.query_masks[k].unique().tolist()) <= set(range(ways + 1))
        ids = b.classes[k].tolist()
        assert len(set(ids)) == ways and set(ids) <= set(s.candidates(i).tolist())


def test_unaugmented_episode_is_the_slice_and_its_superpixels(chaos):
    s = SuperpixelEpisodeSampler(chaos, 2, 2, 2, batch_size=4, generator=3, augment=False)
    b = s.sample()
    images = np.asarray(chaos.images)
    for k, i in enumerate(s.last_slices.tolist()):
        x = torch.from_numpy(images[i] / np.float32(255))
        assert all(torch.equal(v[0], x) for v in [*b.support_x[k], *b.query_x[k]])
        # independent pseudo-labels: Felzenszwalb (SSL-ALPNet: scale 1, sigma 1, min_size
        # 400 at 256 px -> 100 at 128 px) on the rescaled slice, inside the body mask
        rescaled = (images[i] - images[i].min()) / float(np.ptp(images[i]))
        seg = felzenszwalb(rescaled, scale=1.0, sigma=1.0, min_size=100) + 1
        body = _body(images[i])
        air = ~body
        assert air.mean() > 0.1  # the slice really has excluded air
        for n, c in enumerate(b.classes[k].tolist()):
            expected = (seg == c) & body
            assert expected.sum() >= 32
            for j in range(n * 2, n * 2 + 2):
                np.testing.assert_array_equal(b.support_masks[k, j].numpy(), expected)
                assert not (b.support_masks[k, j].numpy().astype(bool) & air).any()
            for q in range(2):
                np.testing.assert_array_equal(b.query_masks[k, q].numpy() == n + 1, expected)
        assert not (b.query_masks[k].numpy()[:, air] != 0).any()


def test_superpixels_are_coherent_regions(chaos):
    """A superpixel varies much less in intensity than the body it was cut from."""
    s = SuperpixelEpisodeSampler(chaos, 1, 1, 1, batch_size=24, generator=2, augment=False)
    b = s.sample()
    images = np.asarray(chaos.images, dtype=np.float64)
    ratios = []
    for k, i in enumerate(s.last_slices.tolist()):
        inside = b.support_masks[k, 0].numpy().astype(bool)
        ratios.append(images[i][inside].std() / images[i][s.superpixels(i) > 0].std())
    assert np.mean(ratios) < 0.55 and np.median(ratios) < 0.5


def test_augmented_labels_follow_the_image(chaos):
    """Geometry only: each warped superpixel still covers the same tissue (its mean intensity
    matches the original superpixel's), with an area changed as zoom allows."""
    s = SuperpixelEpisodeSampler(chaos, 2, 2, 2, batch_size=6, generator=1, **NO_INTENSITY)
    b = s.sample()
    images = np.asarray(chaos.images) / np.float32(255)
    diffs = []
    for k, i in enumerate(s.last_slices.tolist()):
        sp = s.superpixels(i)
        views = torch.cat([b.support_x[k, :, 0], b.query_x[k, :, 0]]).numpy()
        labels = torch.cat([b.support_labels[k], b.query_masks[k]]).numpy()
        assert not any(np.array_equal(v, images[i]) for v in views)  # really warped
        for v, lab in zip(views, labels, strict=True):
            for n, c in enumerate(b.classes[k].tolist()):
                region = lab == n + 1
                if region.any():
                    diffs.append(abs(v[region].mean() - images[i][sp == c].mean()))
                    assert 0.4 < region.sum() / (sp == c).sum() < 1.8
                    diffs[-1] /= images[i].std()
    assert max(diffs) < 0.4 and np.mean(diffs) < 0.06


def test_intensity_augmentation_is_monotone_and_varies(chaos):
    """Intensity only: views are increasing functions of the slice, all different."""
    s = SuperpixelEpisodeSampler(
        chaos, 1, 2, 2, batch_size=2, generator=4, noise_std=0.0, **NO_GEOMETRY
    )
    b = s.sample()
    images = np.asarray(chaos.images) / np.float32(255)
    plain = SuperpixelEpisodeSampler(chaos, 1, 2, 2, batch_size=2, augment=False)
    for k, i in enumerate(s.last_slices.tolist()):
        sp = plain.superpixels(i)
        views = torch.cat([b.support_x[k, :, 0], b.query_x[k, :, 0]]).numpy()
        order = np.argsort(images[i].ravel(), kind="stable")
        for v in views:  # non-decreasing in the slice (1e-3: gamma < 1 amplifies float noise)
            assert np.diff(v.ravel()[order]).min() > -1e-3
            assert abs(np.corrcoef(v.ravel(), images[i].ravel())[0, 1]) > 0.9
        assert len({v.tobytes() for v in views}) == 4
        np.testing.assert_array_equal(b.support_masks[k, 0].numpy(), sp == int(b.classes[k, 0]))


def test_views_come_from_their_own_slice():
    """On distinct smooth random textures each augmented view correlates with its slice only."""
    rng = np.random.default_rng(0)
    tex = ndimage.gaussian_filter(rng.standard_normal((12, 64, 64)), sigma=(0, 3, 3))
    s = SuperpixelEpisodeSampler(
        tex.astype(np.float32), 1, 2, 3, batch_size=6, generator=9, body_threshold=None
    )
    b = s.sample()
    flat = tex.reshape(12, -1)
    flat = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    for k, i in enumerate(s.last_slices.tolist()):
        views = torch.cat([b.support_x[k, :, 0], b.query_x[k, :, 0]]).reshape(5, -1).numpy()
        views = (views - views.mean(1, keepdims=True)) / views.std(1, keepdims=True)
        corr = views @ flat.T / flat.shape[1]  # [5, 12]
        assert (corr.argmax(1) == i).all() and corr[:, i].min() > 0.4
        others = np.delete(corr, i, axis=1)
        assert np.abs(others).max() < 0.35


def test_seeded_determinism_and_seeds_differ(chaos):
    a = SuperpixelEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=11)
    b = SuperpixelEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=11)
    _assert_same(a.sample(), b.sample())
    c = SuperpixelEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=12)
    first_a, first_c = a.sample(), c.sample()
    assert not torch.equal(first_a.support_x, first_c.support_x)
    assert not torch.equal(first_a.classes, first_c.classes)
    g = torch.Generator().manual_seed(11)
    d = SuperpixelEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=g)
    assert d.generator is g
    _assert_same(
        d.sample(), SuperpixelEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=11).sample()
    )


def test_exact_resume_independent_of_cache(chaos):
    a = SuperpixelEpisodeSampler(chaos, 1, 2, 1, batch_size=3, generator=21)
    for _ in range(2):
        a.sample()
    state = a.state_dict()
    expected = [a.sample() for _ in range(3)]
    # fresh sampler, other seed, no cache at all: the stream continues identically
    b = SuperpixelEpisodeSampler(chaos, 1, 2, 1, batch_size=3, generator=999, cache_bytes=0)
    b.load_state_dict(state)
    for e in expected:
        _assert_same(e, b.sample())
    assert len(b._cache) == 0
    # a tiny cache (two label maps) evicts but keeps the stream too
    c = SuperpixelEpisodeSampler(chaos, 1, 2, 1, batch_size=3, cache_bytes=2 * 128 * 128 * 2 + 512)
    c.load_state_dict(state)
    for e in expected:
        _assert_same(e, c.sample())
    assert 1 <= len(c._cache) <= 2


def test_dsb_nuclei_superpixels_lie_in_nuclei(dsb):
    """Fluorescence: Otsu body mask without the largest-component step keeps superpixels on
    nuclei; the annotated nuclei (never given to the sampler) confirm it."""
    s = SuperpixelEpisodeSampler(
        dsb["images"],
        1,
        1,
        1,
        batch_size=16,
        generator=0,
        body_threshold="otsu",
        largest_body=False,
        min_size=30,
        augment=False,
    )
    b = s.sample()
    assert b.support_x.shape == (16, 1, 3, 128, 128)
    inside = [
        dsb["masks"][i][b.support_masks[k, 0].numpy().astype(bool)].mean()
        for k, i in enumerate(s.last_slices.tolist())
    ]
    assert np.mean(inside) > 0.85 and min(inside) > 0.6
    aug = SuperpixelEpisodeSampler(
        dsb["images"], 2, 1, 2, batch_size=2, body_threshold="otsu", largest_body=False
    )
    ab = aug.sample()
    assert ab.support_x.shape == (2, 2, 3, 128, 128) and ab.query_x.shape == (2, 2, 3, 128, 128)
    assert (ab.support_masks.sum((2, 3)) >= 1).all()


def test_inputs_masks_ignored_and_dtypes(chaos):
    images = np.asarray(chaos.images)
    ref = SuperpixelEpisodeSampler(images, 1, 1, 1, batch_size=2, generator=8).sample()
    scrambled = SegmentationDataset(images, np.zeros_like(chaos.masks), ["background", "x"])
    _assert_same(ref, SuperpixelEpisodeSampler(chaos, 1, 1, 1, batch_size=2, generator=8).sample())
    _assert_same(
        ref, SuperpixelEpisodeSampler(scrambled, 1, 1, 1, batch_size=2, generator=8).sample()
    )
    _assert_same(
        ref,
        SuperpixelEpisodeSampler(
            torch.from_numpy(images), 1, 1, 1, batch_size=2, generator=8
        ).sample(),
    )
    wide = SuperpixelEpisodeSampler(
        images.astype(np.uint16) * 257, 1, 1, 1, batch_size=2, generator=8, augment=False
    )
    narrow = SuperpixelEpisodeSampler(images, 1, 1, 1, batch_size=2, generator=8, augment=False)
    w, n = wide.sample(), narrow.sample()
    assert torch.equal(w.classes, n.classes) and torch.equal(w.query_masks, n.query_masks)
    torch.testing.assert_close(w.support_x, n.support_x)


def test_support_keeps_its_superpixel_under_extreme_warps(chaos):
    """Shifts up to a full side lose the superpixel often: re-drawn, else left unwarped."""
    s = SuperpixelEpisodeSampler(
        chaos, 1, 4, 1, batch_size=6, generator=0, shift=1.0, max_retries=0, **NO_INTENSITY
    )
    b = s.sample()
    assert (b.support_masks.sum((2, 3)) >= 1).all()
    images = np.asarray(chaos.images) / np.float32(255)
    unwarped = [
        np.allclose(b.support_x[k, j, 0].numpy(), images[i], atol=1e-6)
        for k, i in enumerate(s.last_slices.tolist())
        for j in range(4)
    ]
    assert any(unwarped) and not all(unwarped)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ways": 0}, r"ways must be an int >= 1, got 0"),
        ({"shots": 1.5}, r"shots must be an int >= 1, got 1.5"),
        ({"batch_size": True}, r"batch_size must be an int >= 1"),
        ({"max_fraction": 0.0}, r"max_fraction must be a number in \(0.0, 1.0\], got 0.0"),
        ({"zoom": (1.2, 0.9)}, r"zoom must be a pair \(low, high\) with 0 < low <= high"),
        ({"gamma": (0.0, 1.0)}, r"gamma must be a pair"),
        ({"body_threshold": "mean"}, r"body_threshold must be a number in \[0.0, 1.0\]"),
        ({"scale": 0}, r"scale must be a number in \(0.0, inf\]"),
        ({"min_size": 0}, r"min_size must be an int >= 1, got 0"),
        ({"rotation": -1.0}, r"rotation must be a number in \[0.0, 180.0\]"),
        ({"min_foreground": 9000}, r"min_foreground = 9000 pixels exceeds max_fraction"),
    ],
)
def test_argument_errors(kwargs, match):
    images = np.zeros((2, 128, 128), dtype=np.uint8)
    args = {"ways": 1, "shots": 1, "queries": 1}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(DataError, match=match) as err:
        SuperpixelEpisodeSampler(images, args["ways"], args["shots"], args["queries"], **kwargs)
    assert err.value.source == match.split(" ")[0]


def test_image_errors():
    with pytest.raises(DataError, match=r"at least 16 x 16 pixels.*got 12 x 40") as err:
        SuperpixelEpisodeSampler(np.zeros((3, 12, 40), dtype=np.uint8))
    assert err.value.source == "images"
    with pytest.raises(DataError, match=r"\[N, H, W\] or \[N, H, W, C\].*got shape \(64, 64\)"):
        SuperpixelEpisodeSampler(np.zeros((64, 64)))
    with pytest.raises(DataError, match=r"must be numeric, got dtype <U1"):
        SuperpixelEpisodeSampler(np.full((2, 32, 32), "a"))
    flat = SuperpixelEpisodeSampler(np.full((3, 32, 32), 7, dtype=np.uint8))
    with pytest.raises(DataError, match=r"no slice has ways = 1 candidate superpixel.*3 slice"):
        flat.sample()
    with pytest.raises(DataError, match=r"no slice has ways"):
        flat.precompute()
    bad = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    bad[1, 3, 3] = np.nan
    with pytest.raises(DataError, match=r"slice 1 has NaN or infinite pixels"):
        SuperpixelEpisodeSampler(bad, body_threshold=None).candidates(1)


def test_few_eligible_slices_found_by_scan():
    """One textured slice among 80 blank ones: random draws miss it, the scan finds it."""
    images = np.zeros((81, 32, 32), dtype=np.uint8)
    images[40] = (np.random.default_rng(1).random((32, 32)) > 0.5) * 200 + 40
    s = SuperpixelEpisodeSampler(images, batch_size=3, min_size=40, body_threshold=None)
    assert s.precompute() == 1
    b = s.sample()
    assert s.last_slices.tolist() == [40, 40, 40]
    assert (b.support_masks.sum((2, 3)) >= 1).all()


def test_missing_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r'pip install "medmeta\[seg\]"'):
        SuperpixelEpisodeSampler(np.zeros((2, 32, 32), dtype=np.uint8))
