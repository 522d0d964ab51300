"""SegmentationEpisodeSampler on real CHAOS abdominal MRI (T2-SPIR) slices and a synthetic set.

CHAOS is CC BY-NC-SA: it is read from the shared data folder in tests only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.data import (
    DataError,
    SegmentationDataset,
    SegmentationEpisodeBatch,
    SegmentationEpisodeSampler,
)

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")
MIN_FG = 32


@pytest.fixture(scope="module")
def chaos() -> SegmentationDataset:
    if not CHAOS.exists():
        pytest.skip(f"CHAOS MR T2 slices not found at {CHAOS}")
    with np.load(CHAOS) as z:
        return SegmentationDataset(
            z["images"], z["masks"], [str(c) for c in z["class_names"]], groups=z["source_ids"]
        )


@pytest.fixture(scope="module")
def chaos_index(chaos) -> dict[bytes, int]:
    """Dataset index of every CHAOS slice, keyed by its raw bytes (all 558 are distinct)."""
    index = {img.tobytes(): i for i, img in enumerate(np.asarray(chaos.images))}
    assert len(index) == len(chaos)
    return index


def _locate(index: dict[bytes, int], x: torch.Tensor) -> int:
    """The dataset index of a returned ``[1, H, W]`` float image (exactly uint8 / 255)."""
    raw = np.rint(x[0].numpy() * 255.0).astype(np.uint8)
    i = index[raw.tobytes()]
    return i


def _check_episode(
    ds: SegmentationDataset, index: dict[bytes, int], batch: SegmentationEpisodeBatch
) -> None:
    """Images, masks and labels match the dataset; support and query patients are disjoint."""
    masks, images = np.asarray(ds.masks).astype(np.int64), np.asarray(ds.images)
    N, K = batch.ways, batch.shots
    for b in range(batch.batch_size):
        cls = batch.classes[b].numpy()
        lut = np.zeros(ds.num_classes, dtype=np.int64)
        lut[cls] = np.arange(1, N + 1)
        sup = [_locate(index, x) for x in batch.support_x[b]]
        qry = [_locate(index, x) for x in batch.query_x[b]]
        for j, i in enumerate(sup):
            own = (masks[i] == cls[j // K]).astype(np.int64)
            np.testing.assert_array_equal(batch.support_masks[b, j].numpy(), own)
            assert own.sum() >= MIN_FG
            np.testing.assert_array_equal(batch.support_labels[b, j].numpy(), lut[masks[i]])
            np.testing.assert_array_equal(
                batch.support_x[b, j, 0].numpy(), images[i] / np.float32(255)
            )
        for q, i in enumerate(qry):
            np.testing.assert_array_equal(batch.query_masks[b, q].numpy(), lut[masks[i]])
            counts = np.bincount(masks[i].ravel(), minlength=ds.num_classes)
            assert counts[cls].max() >= MIN_FG
        assert len(set(sup)) == N * K and not set(sup) & set(qry)
        assert not set(ds.groups[sup].tolist()) & set(ds.groups[qry].tolist())


@pytest.mark.parametrize(("ways", "shots", "queries"), [(1, 1, 2), (2, 2, 2)])
def test_chaos_episode_shapes_and_content(chaos, chaos_index, ways, shots, queries):
    s = SegmentationEpisodeSampler(chaos, ways, shots, queries, batch_size=4, generator=7)
    batch = s.sample()
    B, NK, H, W = 4, ways * shots, 128, 128
    assert batch.support_x.shape == (B, NK, 1, H, W) and batch.support_x.dtype == torch.float32
    assert batch.support_masks.shape == (B, NK, H, W) and batch.support_masks.dtype == torch.int64
    assert batch.support_labels.shape == (B, NK, H, W) and batch.support_labels.dtype == torch.int64
    assert batch.query_x.shape == (B, queries, 1, H, W) and batch.query_x.dtype == torch.float32
    assert batch.query_masks.shape == (B, queries, H, W) and batch.query_masks.dtype == torch.int64
    assert batch.classes.shape == (B, ways) and batch.classes.dtype == torch.int64
    assert (batch.ways, batch.shots, batch.queries, batch.batch_size) == (ways, shots, queries, B)
    assert 0.0 <= float(batch.support_x.min()) and float(batch.support_x.max()) <= 1.0
    assert set(batch.support_masks.unique().tolist()) <= {0, 1}
    assert int(batch.query_masks.max()) <= ways and int(batch.query_masks.min()) >= 0
    assert (batch.classes >= 1).all() and (batch.classes < chaos.num_classes).all()
    for row in batch.classes:
        assert len(set(row.tolist())) == ways
    _check_episode(chaos, chaos_index, batch)


def test_chaos_eligible_counts(chaos):
    s = SegmentationEpisodeSampler(chaos, 1, 1, 1)
    assert chaos.class_names == ("background", "liver", "right_kidney", "left_kidney", "spleen")
    eligible = (s.pixel_counts >= MIN_FG).sum(0).tolist()
    assert eligible == [558, 456, 277, 290, 269]
    np.testing.assert_array_equal(
        s.pixel_counts[5], np.bincount(np.asarray(chaos.masks[5]).ravel(), minlength=5)
    )
    assert s.class_ids.tolist() == [1, 2, 3, 4]


def test_chaos_many_episodes_respect_patients(chaos, chaos_index):
    s = SegmentationEpisodeSampler(chaos, 2, 1, 3, batch_size=8, generator=3)
    for _ in range(3):
        batch = s.sample()
        _check_episode(chaos, chaos_index, batch)


def test_class_restriction(chaos):
    s = SegmentationEpisodeSampler(
        chaos, 1, 1, 1, batch_size=16, generator=0, classes=["liver", "spleen"]
    )
    seen = set()
    for _ in range(5):
        seen.update(s.sample().classes.flatten().tolist())
    assert seen == {1, 4}
    kidneys = SegmentationEpisodeSampler(chaos, 2, 1, 2, batch_size=8, classes=[2, 3])
    batch = kidneys.sample()
    assert sorted(set(batch.classes.flatten().tolist())) == [2, 3]


def test_reproducible_and_resumable(chaos):
    def fields(b: SegmentationEpisodeBatch) -> list[torch.Tensor]:
        return [b.support_x, b.support_masks, b.support_labels, b.query_x, b.query_masks, b.classes]

    a = SegmentationEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=11)
    b = SegmentationEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=11)
    for x, y in zip(fields(a.sample()), fields(b.sample()), strict=True):
        assert torch.equal(x, y)
    state = a.state_dict()
    expected = [a.sample() for _ in range(2)]
    c = SegmentationEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=999)
    c.load_state_dict(state)
    it = iter(c)
    for want in expected:
        for x, y in zip(fields(want), fields(next(it)), strict=True):
            assert torch.equal(x, y)
    other = SegmentationEpisodeSampler(chaos, 2, 1, 2, batch_size=3, generator=12).sample()
    assert not torch.equal(other.query_x, expected[0].query_x) or not torch.equal(
        other.classes, expected[0].classes
    )


def test_to_device_keeps_values(chaos):
    batch = SegmentationEpisodeSampler(chaos, 1, 1, 1).sample()
    moved = batch.to("cpu")
    assert torch.equal(moved.query_masks, batch.query_masks) and moved.ways == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ways": 0}, r"ways must be an int >= 1, got 0"),
        ({"shots": 0}, r"shots must be an int >= 1"),
        ({"queries": 1.5}, r"queries must be an int >= 1"),
        ({"batch_size": 0}, r"batch_size must be an int >= 1"),
        ({"min_foreground": 0}, r"min_foreground must be an int >= 1, got 0"),
        ({"classes": ["liver", "pancreas"]}, r"unknown class 'pancreas'"),
        ({"classes": [9]}, r"class id 9 out of range"),
        ({"classes": ["background", "liver"]}, r"'background' \(id 0\) is the background"),
        ({"classes": ["liver", "liver"]}, r"classes must be distinct"),
        ({"classes": []}, r"non-empty list"),
        ({"ways": 3, "classes": ["liver", "spleen"]}, r"3-way episodes need 3 foreground classes"),
        ({"ways": 5}, r"5-way episodes need 5 foreground classes"),
    ],
)
def test_argument_errors(chaos, kwargs, match):
    args = {"ways": 1, "shots": 1, "queries": 1, **kwargs}
    with pytest.raises(DataError, match=match):
        SegmentationEpisodeSampler(chaos, **args)


def test_too_few_eligible_images(chaos):
    with pytest.raises(DataError, match=r"'spleen' \(0\)") as err:
        SegmentationEpisodeSampler(chaos, 1, 1, 1, min_foreground=10**6, classes=["spleen"])
    assert "min_foreground = 1000000" in str(err.value)
    assert "shots + queries = 1 + 1 = 2" in str(err.value)
    with pytest.raises(DataError, match=r"1-way episodes need 1 foreground classes.*found 0"):
        SegmentationEpisodeSampler(chaos, 1, 1, 1, min_foreground=10**6)
    with pytest.raises(DataError, match=r"'spleen' \(269\)"):
        SegmentationEpisodeSampler(chaos, 1, 200, 100, classes=["spleen"])


def test_grouped_query_impossible_names_class():
    """Spleen in two patients; 2 shots from each leave no query patient."""
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    masks[:, :4, :4] = 1
    ds = SegmentationDataset(np.zeros((4, 8, 8)), masks, ["bg", "spleen"], groups=[0, 0, 1, 1])
    s = SegmentationEpisodeSampler(ds, 1, 3, 1, min_foreground=16)
    with pytest.raises(DataError, match=r"\['spleen'\] have only 0 eligible query images"):
        s.sample()
    alone = SegmentationDataset(np.zeros((4, 8, 8)), masks, ["bg", "spleen"], groups=[5] * 4)
    with pytest.raises(DataError, match=r"class 'spleen' come from 1 group"):
        SegmentationEpisodeSampler(alone, 1, 1, 1, min_foreground=16)
    ok = SegmentationEpisodeSampler(alone, 1, 1, 1, min_foreground=16, use_groups=False)
    assert ok.sample().query_masks.shape == (1, 1, 8, 8)


def test_synthetic_remapping_exact():
    """Three organs in known places; the episode maps classes to 1..N and others to 0."""
    n, k = 6, 4  # classes: 0 background, 1 "a", 2 "b", 3 "c"
    masks = np.zeros((n, 6, 6), dtype=np.int64)
    for i in range(n):
        masks[i, 0:2, 0:3] = 1  # class a: 6 pixels in every image
        masks[i, 3:6, 0:2] = 2 if i % 2 == 0 else 0  # class b: 6 pixels in even images
        masks[i, 3:5, 3:6] = 3  # class c: 6 pixels everywhere
    images = (np.arange(n * 6 * 6 * 3) % 251).astype(np.uint8).reshape(n, 6, 6, 3)
    ds = SegmentationDataset(images, masks, ["bg", "a", "b", "c"])
    s = SegmentationEpisodeSampler(ds, 2, 1, 2, batch_size=5, generator=2, min_foreground=6)
    for _ in range(4):
        batch = s.sample()
        assert batch.support_x.shape == (5, 2, 3, 6, 6)
        for b in range(5):
            cls = batch.classes[b].tolist()
            lut = np.zeros(k, dtype=np.int64)
            lut[cls] = [1, 2]
            for j, x in enumerate(batch.support_x[b]):
                i = _index_of(images, x)
                np.testing.assert_array_equal(batch.support_labels[b, j].numpy(), lut[masks[i]])
                np.testing.assert_array_equal(
                    batch.support_masks[b, j].numpy(), (masks[i] == cls[j]).astype(np.int64)
                )
            sup = {_index_of(images, x) for x in batch.support_x[b]}
            for q, x in enumerate(batch.query_x[b]):
                i = _index_of(images, x)
                assert i not in sup
                np.testing.assert_array_equal(batch.query_masks[b, q].numpy(), lut[masks[i]])
    # class b is only in 3 images: 1 shot + 3 queries cannot be met
    with pytest.raises(DataError, match=r"'b' \(3\)"):
        SegmentationEpisodeSampler(ds, 1, 1, 3, min_foreground=6)


def test_torch_and_readonly_inputs_match_numpy():
    """Grayscale torch tensors and read-only numpy arrays give the same episodes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    masks = np.zeros((10, 16, 16), dtype=np.uint8)
    masks[:, 2:10, 2:10] = 1 + np.arange(10)[:, None, None] % 2
    images.flags.writeable = False
    names = ["background", "organ_a", "organ_b"]
    ref = SegmentationEpisodeSampler(
        SegmentationDataset(images, masks, names), 2, 1, 2, generator=4
    )
    tds = SegmentationDataset(torch.from_numpy(images.copy()), torch.from_numpy(masks), names)
    got = SegmentationEpisodeSampler(tds, 2, 1, 2, generator=4)
    a, b = ref.sample(), got.sample()
    assert a.support_x.shape == (1, 2, 1, 16, 16)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_masks, b.query_masks)
    bad = SegmentationDataset(images, masks, names)
    bad.images = images[:, :8]
    with pytest.raises(DataError, match=r"matching masks of shape \(10, 16, 16\)"):
        SegmentationEpisodeSampler(bad, 1, 1, 1)


def _index_of(images: np.ndarray, x: torch.Tensor) -> int:
    """Which channels-last uint8 image became the channels-first float tensor ``x``."""
    raw = np.rint(x.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
    hits = [i for i in range(len(images)) if np.array_equal(images[i], raw)]
    assert len(hits) == 1
    return hits[0]
