"""EdgeSegmenter on real abdominal MRI slices (CHAOS T2-SPIR) and nuclei (DSB 2018): numpy
enrolment equals ``learner.adapt`` (soft masks bit for bit, the same class and local
prototypes in the same order, ALPNet's window selection with its ties, cap and fallback)
and its label maps equal ``learner.segment`` -- checked in a process where torch cannot be
imported -- plus incremental enrolment, the export without a support set, and the errors of
bad support inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_edge import tamper_weights
from medmeta import algorithms
from medmeta.algorithms import SegmentationLearner, _seg_prototypes
from medmeta.cli._torchfree import BLOCK_TORCH
from medmeta.edge import EdgeModelError, EdgeSegmenter, PoolingRule, Preprocessing
from medmeta.edge import segmenter as edge_seg
from medmeta.export import SegmenterExport, export_segmenter
from medmeta.nn import SegEncoder

CHAOS = Path("/work/shared/data/chaos_mr_t2.npz")
NUCLEI = Path("/work/shared/data/dsb2018_nuclei.npz")
#: |numpy + onnxruntime - eager PyTorch| logits (they lie in [-20, 20]); measured ~1.5e-5.
PARITY = 2e-4
#: prototypes: numpy (float64 sums) vs the native masked_prototypes kernel (float32).
PROTOTYPES = 1e-5
METHODS = ("panet", "alpnet", "adnet")
NAMES = ["background", "liver", "spleen"]


@dataclass
class Slices:
    """Raw uint8 slices ``[n, 128, 128]`` with label maps (0 background, 1 liver, 2 spleen):
    3 support slices of one patient, 4 queries of another, and 2 slices of the first patient
    with the right kidney as label 3 (a class enrolled later on the device)."""

    support_raw: np.ndarray
    support_masks: np.ndarray
    query_raw: np.ndarray
    kidney_raw: np.ndarray
    kidney_masks: np.ndarray
    pre: Preprocessing

    def x(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.pre(raw))


@pytest.fixture(scope="module")
def slices() -> Slices:
    if not CHAOS.exists():
        pytest.skip(f"{CHAOS} is not available")
    with np.load(CHAOS) as z:
        images, masks, patients = z["images"], z["masks"], z["source_ids"]
    has = [(masks == k).any((1, 2)) for k in range(5)]
    both = np.flatnonzero(has[1] & has[4])
    first, other = patients[both[0]], patients[both[-1]]
    support = both[patients[both] == first][::2][:3]
    query = both[patients[both] == other][:4]
    kidney = np.flatnonzero(has[2] & (patients == first) & ~has[4])[:2]
    labels = np.select([masks == 1, masks == 4], [1, 2], 0).astype(np.int64)
    kidney_masks = np.where(masks[kidney] == 2, 3, labels[kidney])
    pre = Preprocessing.for_images((1, 128, 128), mean=0.2, std=0.25)
    return Slices(images[support], labels[support], images[query], images[kidney],
                  kidney_masks, pre)  # fmt: skip


def make_learner(method: str, slices: Slices) -> SegmentationLearner:
    """A randomly initialised small SegEncoder (seed 0) under ``method``; ADNet's threshold
    is set so that about 30% of the query pixels are foreground."""
    torch.manual_seed(0)
    encoder = SegEncoder(1, channels=(16, 32, 32, 32), out_channels=32)
    name, extra = ("alpnet", {"foreground_threshold": True}) if method == "adnet" else (method, {})
    learner = algorithms.create(name, encoder, ways=2, **extra).eval()
    if method == "adnet":
        with torch.no_grad():
            adapted = learner.adapt(slices.x(slices.support_raw),
                                    torch.from_numpy(slices.support_masks))  # fmt: skip
            fg = adapted(slices.x(slices.query_raw))[:, 1:].amax(1)
            learner.threshold_score.fill_(float(torch.quantile(fg.flatten(), 0.7)))
    return learner


@pytest.fixture(scope="module")
def exported(slices, tmp_path_factory) -> dict[str, tuple[SegmentationLearner, SegmenterExport]]:
    out = {}
    for method in METHODS:
        learner = make_learner(method, slices)
        out[method] = learner, export_segmenter(
            learner, tmp_path_factory.mktemp(method) / "organs.onnx",
            support_x=slices.x(slices.support_raw), support_masks=slices.support_masks,
            class_names=NAMES, preprocessing=slices.pre, exporter="torchscript",
        )  # fmt: skip
    return out


def _torch_reference(learner: SegmentationLearner, support_x, support_masks, query_x):
    """(prototypes, classes, logits, labels) of eager PyTorch."""
    adapted = learner.adapt(support_x, torch.from_numpy(np.asarray(support_masks)))
    with torch.no_grad():
        logits = adapted(query_x)
    return (adapted.prototypes.numpy(), adapted.prototype_classes.numpy(), logits.numpy(),
            learner.segment(support_x, torch.from_numpy(np.asarray(support_masks)), query_x)
            .numpy())  # fmt: skip


def _assert_parity(got: dict[str, np.ndarray], want: tuple, what: str) -> None:
    protos, classes, logits, labels = want
    np.testing.assert_array_equal(got["classes"], classes, err_msg=what)
    np.testing.assert_allclose(got["prototypes"], protos, rtol=0, atol=PROTOTYPES, err_msg=what)
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=PARITY, err_msg=what)
    assert got["labels"].dtype == np.int64 and got["labels"].shape == labels.shape
    assert (got["labels"] == labels).mean() >= 0.999, what
    assert 0.05 < (labels > 0).mean() < 0.95, what  # a map with background and organs


# ---------------------------------------------------------------- numpy pooling vs torch


@pytest.mark.parametrize("size", [(128, 128, 16, 16), (100, 77, 13, 10), (37, 50, 13, 10),
                                  (8, 8, 16, 16), (130, 128, 17, 16)])  # fmt: skip
def test_soft_masks_are_adaptive_avg_pool_bit_for_bit(size):
    H, W, h, w = size
    labels = np.random.default_rng(H * W).integers(0, 4, (3, H, W))
    want = _seg_prototypes.soft_masks(torch.from_numpy(labels), 4, (h, w)).numpy()
    got = edge_seg.soft_masks(labels, 4, (h, w))
    assert got.dtype == np.float32 and got.shape == (3, 4, h, w)
    np.testing.assert_array_equal(got, want)


def _blocky_labels(rng: np.random.Generator) -> np.ndarray:
    """Label maps ``[3, 128, 128]``: large rectangles (many fully covered windows: ties at
    coverage 1 and more than max_local of them), partial edges, and class 3 as a sliver
    that no window covers (the class-prototype fallback)."""
    labels = np.zeros((3, 128, 128), np.int64)
    for s in range(3):
        r, c = rng.integers(0, 40, 2)
        labels[s, r : r + 70 + 5 * s, c : c + 60] = 1
        labels[s, 90:, 100 - 10 * s :] = 2
        labels[s, 5:9, 100:120] = 3
    return labels


@pytest.mark.parametrize("rule", [
    PoolingRule("all", "none"),
    PoolingRule("foreground", "all"),
    PoolingRule("foreground", "all", window=3, threshold=0.6, max_local=5),
    PoolingRule("foreground", "all", window=2, threshold=1.0, max_local=7),
    PoolingRule("foreground", "none"),
])  # fmt: skip
def test_pooling_equals_seg_prototypes(rule):
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((3, 8, 16, 16)).astype(np.float32)
    masks = edge_seg.soft_masks(_blocky_labels(rng), 4, (16, 16))
    chosen = list(range(0 if rule.background_prototypes else 1, 4))
    glob = chosen if rule.global_classes == "all" else [c for c in chosen if c > 0]
    want_p, want_o = _seg_prototypes.pool_prototypes(
        torch.from_numpy(feats), torch.from_numpy(masks), global_classes=glob,
        local_classes=chosen if rule.local_classes == "all" else [], window=rule.window,
        threshold=rule.threshold, max_local=rule.max_local,
    )  # fmt: skip
    got_p, got_o = rule.pool(feats, masks, list(range(4)))
    np.testing.assert_array_equal(got_o, want_o.numpy())
    np.testing.assert_allclose(got_p, want_p.numpy(), rtol=0, atol=PROTOTYPES)
    if rule.local_classes == "all":  # the cases the test is about happened
        counts = np.bincount(got_o, minlength=4)
        assert counts[3] == 1, counts  # no window: the class prototype instead
        if rule.max_local < 20:  # more windows qualify than the cap (ties at coverage 1)
            assert counts[:3].max() == rule.max_local + (0 if counts.argmax() == 0 else 1)


# ------------------------------------------------------------ parity without torch

CHILD = BLOCK_TORCH + textwrap.dedent(
    """
    import numpy as np
    from medmeta.edge import EdgeSegmenter

    folder = sys.argv[1]
    data = np.load(f"{folder}/inputs.npz")
    names = [str(n) for n in data["names"]]
    out = {}
    for method in [str(m) for m in data["methods"]]:
        seg = EdgeSegmenter.load(f"{folder}/{method}/organs.encoder.onnx")
        seg.enrol(data["support"], data["masks"], names, replace=True)
        out[f"{method}.prototypes"] = seg.prototypes
        out[f"{method}.classes"] = seg.prototype_classes
        out[f"{method}.logits"] = seg.logits(data["queries"])
        out[f"{method}.labels"] = seg.predict(data["queries"])
        out[f"{method}.proba"] = seg.predict_proba(data["queries"])
        # a class added on the device: its images join the enrolled support set
        seg.enrol(list(data["kidney"]), list(data["kidney_masks"]), [*names, "right_kidney"])
        out[f"{method}.kidney.prototypes"] = seg.prototypes
        out[f"{method}.kidney.classes"] = seg.prototype_classes
        out[f"{method}.kidney.logits"] = seg.logits(data["queries"])
        out[f"{method}.kidney.labels"] = seg.predict(data["queries"])
    assert "torch" not in sys.modules
    np.savez(f"{folder}/outputs.npz", **out)
    print("torch-free segmentation ok")
    """
)


def test_enrolment_and_label_maps_equal_pytorch_without_torch(exported, slices, tmp_path):
    for method, (_, result) in exported.items():
        (tmp_path / method).mkdir()
        for path in (result.encoder, result.head):
            (tmp_path / method / path.name).write_bytes(path.read_bytes())
    np.savez(tmp_path / "inputs.npz", methods=np.array(METHODS), names=np.array(NAMES),
             support=slices.support_raw, masks=slices.support_masks.astype(np.uint8),
             queries=slices.query_raw, kidney=slices.kidney_raw,
             kidney_masks=slices.kidney_masks.astype(np.uint8))  # fmt: skip
    (tmp_path / "child.py").write_text(CHILD)
    run = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch-free segmentation ok" in run.stdout
    out = np.load(tmp_path / "outputs.npz")
    sx, qx = slices.x(slices.support_raw), slices.x(slices.query_raw)
    union_x = torch.cat([sx, slices.x(slices.kidney_raw)])
    union_masks = np.concatenate([slices.support_masks, slices.kidney_masks])
    for method, (learner, _) in exported.items():
        got = {k: out[f"{method}.{k}"] for k in ("prototypes", "classes", "logits", "labels")}
        want = _torch_reference(learner, sx, slices.support_masks, qx)
        _assert_parity(got, want, method)
        np.testing.assert_allclose(out[f"{method}.proba"].sum(1), 1.0, atol=1e-5)
        got = {
            k: out[f"{method}.kidney.{k}"] for k in ("prototypes", "classes", "logits", "labels")
        }
        want = _torch_reference(learner, union_x, union_masks, qx)
        _assert_parity(got, want, f"{method} + right kidney")
        assert set(np.unique(want[1])) == {0, 1, 2, 3} - ({0} if method == "adnet" else set())


# ------------------------------------------------------------------- device behaviour


def test_loaded_enrolment_predicts_like_the_export(exported, slices):
    learner, result = exported["alpnet"]
    seg = EdgeSegmenter.load(result.encoder)
    assert seg.class_names == NAMES and seg.input_shape == (1, 128, 128)
    assert seg.rule == PoolingRule("foreground", "all")
    assert list(seg.enrolment.support_images) == [3, 3, 3]
    want = _torch_reference(learner, slices.x(slices.support_raw), slices.support_masks,
                            slices.x(slices.query_raw))  # fmt: skip
    np.testing.assert_array_equal(seg.prototypes, want[0])  # the exported numbers themselves
    labels = seg.predict(slices.query_raw[0])  # one raw image [H, W]
    assert labels.shape == (1, 128, 128) and (labels == want[3][:1]).mean() >= 0.999
    x = slices.pre(slices.query_raw)
    np.testing.assert_array_equal(seg.predict(x, preprocessed=True), seg.predict(slices.query_raw))
    assert "EdgeSegmenter('organs.encoder.onnx', algorithm='alpnet'" in repr(seg)


def test_replace_drops_earlier_images_of_the_classes_it_names(exported, slices):
    seg = EdgeSegmenter.load(exported["alpnet"][1].encoder)
    seg.enrol(slices.kidney_raw, slices.kidney_masks, [*NAMES, "right_kidney"])
    assert list(seg.enrolment.support_images) == [5, 5, 3, 2]  # no spleen in those slices
    liver_only = np.where(slices.support_masks[:1] == 1, 1, 0)
    seg.enrol(slices.support_raw[:1], liver_only, replace=True)
    # background and liver: this image only; spleen and kidney keep their images
    assert list(seg.enrolment.support_images) == [1, 1, 3, 2]
    assert seg.enrolment.features.shape[0] == 6  # every earlier image still holds a class
    assert set(seg.prototype_classes.tolist()) == {0, 1, 2, 3}


def test_an_export_without_support_keeps_its_prototypes_until_replaced(exported, slices, tmp_path):
    learner, _ = exported["panet"]
    result = export_segmenter(learner, tmp_path / "p.onnx", support_x=slices.x(slices.support_raw),
                              support_masks=slices.support_masks, preprocessing=slices.pre,
                              include_support=False, exporter="torchscript")  # fmt: skip
    seg = EdgeSegmenter.load(result.encoder)
    assert len(seg.enrolment.features) == 0 and seg.enrolment.fixed_classes == {0, 1, 2}
    with pytest.raises(ValueError, match=r"exported without their support images.*replace=True"):
        seg.enrol(slices.support_raw, slices.support_masks)
    seg.enrol(slices.support_raw[:2], np.where(slices.support_masks[:2] == 2, 2, 0), replace=True)
    assert seg.enrolment.fixed_classes == {1}  # liver keeps its exported prototype
    assert seg.prototype_classes.tolist() == [0, 2, 1]


def test_rgb_nuclei_channels_last_enrol_like_pytorch(tmp_path):
    if not NUCLEI.exists():
        pytest.skip(f"{NUCLEI} is not available")
    with np.load(NUCLEI) as z:
        keep = np.flatnonzero(z["image_type"] == 2)[:5]  # stained colour images
        raw, masks = z["images"][keep], (z["masks"][keep] > 0).astype(np.uint8)
    pre = Preprocessing.for_images((3, 128, 128), mean=0.5, std=0.25)
    torch.manual_seed(1)
    learner = algorithms.create("alpnet", SegEncoder(3, channels=(16, 32, 32, 32),
                                                     out_channels=32), ways=1).eval()  # fmt: skip
    x = torch.from_numpy(pre(raw))
    result = export_segmenter(learner, tmp_path / "n.onnx", support_x=x[:3],
                              support_masks=masks[:3], class_names=["nucleus"],
                              preprocessing=pre, exporter="torchscript")  # fmt: skip
    seg = EdgeSegmenter.load(result.encoder)
    seg.enrol(raw[:3], masks[:3].astype(bool), ["background", "nucleus"], replace=True)
    got = {"prototypes": seg.prototypes, "classes": seg.prototype_classes,
           "logits": seg.logits(raw[3:]), "labels": seg.predict(raw[3:])}  # fmt: skip
    _assert_parity(got, _torch_reference(learner, x[:3], masks[:3], x[3:]), "nuclei")


def test_masks_pool_at_their_own_resolution(exported, slices):
    """A mask of a raw image larger than the model input is area-pooled onto the grid from
    its own pixels: the soft masks of ``_seg_prototypes.soft_masks`` at that size."""
    seg = EdgeSegmenter.load(exported["panet"][1].encoder)
    big = np.repeat(np.repeat(slices.support_raw, 2, 1), 2, 2)  # [3, 256, 256]
    big_masks = np.repeat(np.repeat(slices.support_masks, 2, 1), 2, 2)
    seg.enrol(big, big_masks, replace=True)
    want = F.adaptive_avg_pool2d(
        F.one_hot(torch.from_numpy(big_masks), 3).permute(0, 3, 1, 2).float(), (16, 16)
    )
    np.testing.assert_array_equal(seg.enrolment.masks, want.numpy())


@pytest.mark.parametrize(
    "images, masks, names, error, match",
    [
        ("support", "half", None, ValueError,
         r"support_masks\[0\]: shape \[64, 64\] differs from the size of its image"),
        ("support", "seven", None, ValueError, r"support_masks\[1\]: label 7 is outside the "
         r"class list 0..2 \(background, liver, spleen\)"),
        ("support", "empty", None, ValueError, r"support_masks\[2\] is empty \(background only\)"),
        ("support", "float", None, TypeError, r"support_masks\[0\]: expected integer class"),
        ("two", "support", None, ValueError, "support_masks: 3 label maps for 2 support images"),
        ("support", "support", ["bg", "liver", "spleen"], ValueError,
         r"class_names\[0\] must be the background"),
        ("support", "support", [*NAMES, "kidney"], ValueError,
         "class 'kidney' has no pixel in any support mask"),
        ("support", "support", "liver", TypeError, "class_names: expected a sequence"),
    ],
)  # fmt: skip
def test_bad_support_inputs_are_named(exported, slices, images, masks, names, error, match):
    seg = EdgeSegmenter.load(exported["panet"][1].encoder)
    before = seg.enrolment
    m = slices.support_masks.copy()
    mask_arg = {
        "support": m, "half": list(m[:, ::2, ::2]), "float": m.astype(np.float32),
        "seven": np.where(np.arange(3)[:, None, None] == 1, np.where(m == 2, 7, m), m),
        "empty": np.where(np.arange(3)[:, None, None] == 2, 0, m),
    }[masks]  # fmt: skip
    image_arg = slices.support_raw if images == "support" else slices.support_raw[:2]
    with pytest.raises(error, match=match):
        seg.enrol(image_arg, mask_arg, names)
    assert seg.enrolment is before  # nothing changed


def test_an_encoder_with_edited_weights_is_refused(exported, tmp_path):
    _, result = exported[METHODS[0]]
    (tmp_path / result.head.name).write_bytes(result.head.read_bytes())
    tamper_weights(result.encoder, tmp_path / result.encoder.name)
    with pytest.raises(EdgeModelError, match="weights do not match the weights_sha256"):
        EdgeSegmenter(tmp_path / result.encoder.name)
