"""PANet and ALPNet: the prototype pooling and score head against float64 references, the
public API (create / meta_fit / segment, fewer ways at segment time), clear errors, and
learning on real CHAOS MRI slices (Dice above the all-foreground mask by a margin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmeta import algorithms
from medmeta.algorithms._seg_prototypes import (
    class_scores,
    local_prototypes,
    pool_prototypes,
    soft_masks,
)
from medmeta.data import SegmentationDataset, SegmentationEpisodeSampler
from medmeta.eval.segmentation import evaluate_segmentation, overlap_scores
from medmeta.nn import SegEncoder
from medmeta.train import meta_fit

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")  # CC BY-NC-SA: tests only
NUCLEI = Path("/work/shared/data/dsb2018_nuclei.npz")  # CC0
SEGMENTERS = algorithms.available("segmentation")
needs_chaos = pytest.mark.skipif(not CHAOS.exists(), reason="CHAOS slices not available")
needs_nuclei = pytest.mark.skipif(not NUCLEI.exists(), reason="DSB nuclei not available")


def small_encoder(seed: int = 0) -> SegEncoder:
    torch.manual_seed(seed)
    return SegEncoder(in_channels=1, channels=(16, 32, 32), out_channels=32)


@pytest.fixture(scope="module")
def chaos64() -> SegmentationDataset:
    """CHAOS T2 slices at 64x64 (2x2 mean for images, top-left pixel for masks)."""
    z = np.load(CHAOS)
    img = z["images"].reshape(-1, 64, 2, 64, 2).mean((2, 4)).astype(np.float32) / 255
    return SegmentationDataset(
        img, z["masks"][:, ::2, ::2], list(z["class_names"]), groups=z["source_ids"]
    )


def test_registry_separates_segmentation_from_classification() -> None:
    assert SEGMENTERS == ["alpnet", "panet"]
    assert not set(SEGMENTERS) & set(algorithms.available("classification"))
    assert set(algorithms.available()) == set(SEGMENTERS) | set(
        algorithms.available("classification")
    )
    with pytest.raises(ValueError, match="task must be one of"):
        algorithms.available("detection")


# ------------------------------------------------------------- pooling and head vs float64


def test_soft_masks_are_the_class_fraction_of_each_cell() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    m = soft_masks(labels, 3, (4, 4))
    expect = F.one_hot(labels, 3).double().reshape(2, 4, 4, 4, 4, 3).mean((2, 4))
    torch.testing.assert_close(m.double(), expect.permute(0, 3, 1, 2))
    torch.testing.assert_close(m.sum(1), torch.ones(2, 4, 4))


def _local_reference(f, masks, c, window, threshold, max_local):
    """Brute force: every (shot, window) with coverage >= threshold, largest first."""
    S, _, h, w = masks.shape
    rows = []
    for s in range(S):
        for i in range(0, h, window):
            for j in range(0, w, window):
                m = torch.zeros(h, w, dtype=torch.float64)
                m[i : i + window, j : j + window] = masks[s, c, i : i + window, j : j + window]
                cells = min(window, h - i) * min(window, w - j)
                cover = float(m.sum()) / cells
                if cover >= threshold:
                    proto = (f[s] * m).sum((1, 2)) / m.sum()
                    rows.append((-cover, len(rows), proto))
    rows.sort(key=lambda r: (r[0], r[1]))
    kept = sorted(rows[:max_local], key=lambda r: r[1])
    return torch.stack([r[2] for r in kept]) if kept else torch.zeros(0, f.shape[1])


def test_local_prototypes_match_a_brute_force_float64_reference() -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 5, 10, 9, generator=g, dtype=torch.float64)
    labels = torch.zeros(2, 10, 9, dtype=torch.long)
    labels[0, 1:8, 2:9] = 1
    labels[1, 4:10, 0:5] = 1
    masks = soft_masks(labels, 2, (10, 9)).double()
    for c in (0, 1):
        for max_local in (2, 50):
            protos, owner = local_prototypes(
                f, masks, [c], window=3, threshold=0.9, max_local=max_local
            )
            ref = _local_reference(f, masks, c, 3, 0.9, max_local)
            assert len(protos) == len(ref) > 0 and (owner == c).all()
            torch.testing.assert_close(protos, ref)


def test_pool_prototypes_falls_back_to_the_class_prototype() -> None:
    f = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, ::2, ::2] = 1  # a scattered class: no window is 95% covered
    masks = soft_masks(labels, 2, (8, 8)).double()
    protos, owner = pool_prototypes(
        f, masks, global_classes=[], local_classes=[0, 1], window=4, threshold=0.95
    )
    assert owner.tolist().count(1) == 1  # the fallback class prototype
    m = masks[0, 1]
    torch.testing.assert_close(protos[owner == 1][0], (f[0] * m).sum((1, 2)) / m.sum())


def test_class_scores_are_the_softmax_weighted_cosine_of_each_class() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(5, 6, generator=g, dtype=torch.float64)
    owner = torch.tensor([0, 0, 1, 2, 2])
    got = class_scores(q, protos, owner, 3, 20.0)
    cos = F.cosine_similarity(q.permute(0, 2, 3, 1)[..., None, :], protos, dim=-1) * 20
    for c in range(3):
        s = cos[..., owner == c]
        ref = (s.softmax(-1) * s).sum(-1)
        torch.testing.assert_close(got[:, c], ref)
    bg = class_scores(q, protos[2:], owner[2:], 3, 20.0, torch.tensor(3.0, dtype=torch.float64))
    assert (bg[:, 0] == 3.0).all()


def test_class_scores_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    owner = torch.tensor([0, 1, 1])
    assert torch.autograd.gradcheck(lambda a, b: class_scores(a, b, owner, 2, 5.0), (q, p))


# ------------------------------------------------------------------------ API and errors


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segment_returns_int64_label_maps_for_fewer_ways_than_trained(name: str) -> None:
    learner = algorithms.create(name, small_encoder(), ways=2)
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(2, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 40, generator=g)
    sm = torch.zeros(2, 32, 32, dtype=torch.long)
    sm[:, 8:24, 8:24] = 1
    out = learner.segment(sx, sm, qx)
    assert out.shape == (3, 32, 40) and out.dtype == torch.int64
    assert set(out.unique().tolist()) <= {0, 1}
    adapted = learner.adapt(sx, sm)
    assert adapted.ways == 1 and adapted(qx).shape == (3, 2, 32, 40)
    torch.testing.assert_close(adapted.segment(qx), out, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda sx, sm: (sx, sm[:, :30]), "must match support_x"),
        (lambda sx, sm: (sx, torch.zeros_like(sm)), "every support mask is empty"),
        (lambda sx, sm: (sx, sm * 2), r"classes \[1\] have no pixel"),
        (lambda sx, sm: (sx, sm.float()), "integer labels"),
        (lambda sx, sm: (sx, sm - 1), "labels must be 0..N"),
        (lambda sx, sm: (sx[0], sm), "4-D"),
    ],
)
def test_bad_support_is_refused_with_a_clear_error(mutate, match) -> None:
    learner = algorithms.create("alpnet", small_encoder(), ways=1)
    sx = torch.rand(2, 1, 32, 32)
    sm = torch.zeros(2, 32, 32, dtype=torch.long)
    sm[:, 4:20, 4:20] = 1
    sx, sm = mutate(sx, sm)
    with pytest.raises((ValueError, TypeError), match=match):
        learner.segment(sx, sm, torch.rand(1, 1, 32, 32))


def test_hyperparameters_are_checked_and_rebuild_from_spec() -> None:
    with pytest.raises(ValueError, match="threshold"):
        algorithms.create("alpnet", small_encoder(), ways=1, threshold=1.5)
    with pytest.raises(ValueError, match="align_weight"):
        algorithms.create("panet", small_encoder(), ways=1, align_weight=-1.0)
    learner = algorithms.create("alpnet", small_encoder(), ways=1, foreground_threshold=True)
    spec = learner.spec()
    again = algorithms.create(spec["algorithm"], small_encoder(), spec["ways"], **spec["hparams"])
    assert again.foreground_threshold and again.threshold_score is not None


def test_overlap_scores_against_hand_counts() -> None:
    pred = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    true = torch.tensor([[0, 1, 0, 2], [2, 0, 0, 0]])
    dice, iou = overlap_scores(pred, true, 4)
    torch.testing.assert_close(dice[:2], torch.tensor([2 / 3, 0.8], dtype=torch.float64))
    torch.testing.assert_close(iou[:2], torch.tensor([0.5, 2 / 3], dtype=torch.float64))
    assert torch.isnan(dice[2]) and torch.isnan(iou[2])


# ---------------------------------------------------------------- learning on real slices


def _all_foreground_dice(ds: SegmentationDataset, classes: list[str], episodes: int) -> float:
    """Dice of predicting the whole query as the episode organ (the trivial mask), on the
    episodes :func:`evaluate_segmentation` draws with seed 100."""
    s = SegmentationEpisodeSampler(ds, 1, 1, 2, generator=100, classes=classes, min_foreground=16)
    rows = []
    for _ in range(episodes):
        b = s.sample()
        rows.append(float(overlap_scores(torch.ones_like(b.query_masks), b.query_masks, 2)[0][0]))
    return float(np.mean(rows))


@needs_chaos
@pytest.mark.parametrize("name", SEGMENTERS)
def test_learns_held_out_organs_on_chaos(name: str, chaos64: SegmentationDataset) -> None:
    """Trained on liver and spleen labels, segments the unseen kidneys (setting 1) with a
    Dice at least 0.2 above the all-foreground mask over 40 seeded 1-shot episodes."""
    torch.manual_seed(0)
    learner = algorithms.create(name, small_encoder(), ways=1)
    train = SegmentationDataset(
        chaos64.images, np.where(np.isin(chaos64.masks, [2, 3]), 0, chaos64.masks),
        chaos64.class_names, groups=chaos64.groups,
    )  # fmt: skip
    meta_fit(learner, train, ways=1, shots=1, queries=2, steps=150, meta_batch=4, seed=0,
             progress=False, lr=2e-3)  # fmt: skip
    kidneys = ["right_kidney", "left_kidney"]
    result = evaluate_segmentation(
        learner, chaos64, queries=2, episodes=40, seed=100, classes=kidneys, min_foreground=16
    )
    trivial = _all_foreground_dice(chaos64, kidneys, 40)
    assert result.dice > trivial + 0.2, (result.summary(), trivial)


@needs_nuclei
@pytest.mark.parametrize("name", SEGMENTERS)
def test_learns_nuclei_from_one_image_of_another_source(name: str) -> None:
    """DSB 2018 nuclei at 64x64: trained on 400 images, 1-shot episodes on the other 264
    (support and query from different images) reach a Dice 0.12 above the all-foreground
    mask over 40 seeded episodes."""
    z = np.load(NUCLEI)
    img = z["images"].reshape(-1, 64, 2, 64, 2, 3).mean((2, 4)).astype(np.float32) / 255
    masks, groups = z["masks"][:, ::2, ::2], z["source_ids"]
    names = list(z["class_names"])
    train = SegmentationDataset(img[:400], masks[:400], names, groups=groups[:400])
    test = SegmentationDataset(img[400:], masks[400:], names, groups=groups[400:])
    torch.manual_seed(0)
    encoder = SegEncoder(in_channels=3, channels=(16, 32, 32), out_channels=32)
    learner = algorithms.create(name, encoder, ways=1)
    meta_fit(learner, train, ways=1, shots=1, queries=2, steps=100, meta_batch=4, seed=0,
             progress=False, lr=2e-3)  # fmt: skip
    result = evaluate_segmentation(learner, test, episodes=40, seed=100, min_foreground=16)
    trivial = _all_foreground_dice(test, ["nucleus"], 40)
    assert result.dice > trivial + 0.12, (result.summary(), trivial)
