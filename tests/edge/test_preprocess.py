"""Preprocessing: raw arrays -> model inputs, checked against torch's definitions and the
training-side helpers, with clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmeta.data import apply_window, as_features, load
from medmeta.edge import Preprocessing
from medmeta.edge.resize import axis_weights, resize_images


def _images(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize(("size_in", "size_out"), [(64, 28), (28, 14), (30, 7), (28, 28), (5, 3)])
def test_shrinking_is_torch_area_interpolation(size_in, size_out):
    x = _images(0, 2, 3, size_in, size_in + 3)
    got = resize_images(x, (size_out, size_out + 1))
    want = F.interpolate(torch.from_numpy(x), size=(size_out, size_out + 1), mode="area").numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_integer_shrink_factors_are_block_means():
    x = _images(1, 1, 1, 8, 8)
    want = x.reshape(1, 1, 4, 2, 4, 2).mean((3, 5))
    np.testing.assert_allclose(resize_images(x, (4, 4)), want, atol=1e-6)


@pytest.mark.parametrize(("size_in", "size_out"), [(14, 28), (20, 28), (3, 10), (1, 4)])
def test_enlarging_is_torch_bilinear_with_half_pixel_centres(size_in, size_out):
    x = _images(2, 2, 3, size_in, size_in)
    got = resize_images(x, (size_out, size_out))
    want = F.interpolate(torch.from_numpy(x), size=(size_out, size_out), mode="bilinear",
                         align_corners=False).numpy()  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_mixed_axes_and_weights_are_normalised():
    x = _images(3, 1, 1, 40, 10)
    got = resize_images(x, (28, 28))  # shrink rows (area), enlarge columns (bilinear)
    rows = F.interpolate(torch.from_numpy(x), size=(28, 10), mode="area")
    want = F.interpolate(rows, size=(28, 28), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    for a, b in [(64, 28), (28, 64), (7, 7)]:
        np.testing.assert_allclose(axis_weights(a, b).sum(1), 1.0)


def test_uint8_channels_last_blood_images_match_training_features():
    x = load("pbc_blood").x[:10]  # uint8 [10, 28, 28, 3]
    pre = Preprocessing.for_images((3, 28, 28))
    got = pre(x)
    assert got.dtype == np.float32 and got.shape == (10, 3, 28, 28) and got.flags.c_contiguous
    np.testing.assert_allclose(got, as_features(x).numpy(), atol=1e-7)
    np.testing.assert_array_equal(pre(x[0]), got[:1])  # one image gets a batch axis
    np.testing.assert_array_equal(pre(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), got)


def test_gray_images_are_replicated_resized_and_normalised():
    mri = load("brain_tumor_mri").x[:4]  # uint8 [4, 64, 64]
    pre = Preprocessing.for_images((3, 28, 28), mean=(0.5, 0.4, 0.3), std=0.25)
    got = pre(mri)
    scaled = torch.from_numpy(mri[:, None].astype(np.float32) / 255)
    base = F.interpolate(scaled, size=(28, 28), mode="area").numpy()
    for c, m in enumerate((0.5, 0.4, 0.3)):
        np.testing.assert_allclose(got[:, c], (base[:, 0] - m) / 0.25, atol=1e-5)
    assert pre(mri[0]).shape == (1, 3, 28, 28)  # [H, W]: one gray image


def test_uint16_float_and_explicit_scale():
    x16 = np.full((2, 8, 8), 65535, np.uint16)
    np.testing.assert_allclose(Preprocessing.for_images((1, 8, 8))(x16), 1.0)
    xf = _images(4, 2, 1, 8, 8) * 7
    np.testing.assert_array_equal(Preprocessing.for_images((1, 8, 8))(xf), xf)  # floats as is
    np.testing.assert_allclose(
        Preprocessing.for_images((1, 8, 8), scale=0.5)(xf), xf * 0.5, rtol=1e-6
    )
    counts = np.arange(12, dtype=np.int64).reshape(2, 6)
    np.testing.assert_array_equal(Preprocessing.for_vectors(6)(counts), counts.astype(np.float32))


def test_ct_windowing_happens_before_everything_else():
    hu = np.array([[[-1000, 40], [240, 3000]]], np.int16)  # one 2x2 CT slice in HU
    pre = Preprocessing.for_images((1, 2, 2), window="soft_tissue")
    assert pre.window == (40.0, 400.0)
    np.testing.assert_allclose(pre(hu)[0, 0], apply_window(hu[0], "soft_tissue"))
    np.testing.assert_allclose(pre(hu)[0, 0], [[0.0, 0.5], [1.0, 1.0]])
    explicit = Preprocessing.for_images((1, 2, 2), window=(40, 400))
    assert explicit == pre


def test_vectors_and_series():
    v = Preprocessing.for_vectors(4, mean=[1, 2, 3, 4], std=2)
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    np.testing.assert_allclose(v(x), (x - [1, 2, 3, 4]) / 2)
    assert v(x[0]).shape == (1, 4)
    s = Preprocessing.for_series((1, 5))
    assert s(np.zeros((3, 5))).shape == (3, 1, 5)  # [n, L] with one channel
    assert s(np.zeros((3, 1, 5))).shape == (3, 1, 5)
    with pytest.raises(ValueError, match=r"the signal has 6 samples, the model takes 5"):
        s(np.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"shape \[n, 1, 5\]"):
        s(np.zeros((3, 2, 5)))  # two channels for a one-channel model


def test_round_trip_through_json():
    for pre in (
        Preprocessing.for_images((3, 28, 28), mean=0.5, std=(0.2, 0.3, 0.4), window="lung"),
        Preprocessing.for_vectors(20, scale=0.01),
        Preprocessing.for_series((2, 100), mean=(0.0, 1.0)),
        Preprocessing.for_images((1, 64, 64), channels="last"),
    ):
        again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
        assert again == pre and hash(again) == hash(pre)


def test_explicit_layout_resolves_ambiguous_shapes():
    x = np.zeros((2, 4, 4, 3), np.uint8)  # a 4x4 RGB image: either end could be channels
    x[..., 0] = 255
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        Preprocessing.for_images((3, 4, 4))(x)
    got = Preprocessing.for_images((3, 4, 4), channels="last")(x)
    np.testing.assert_array_equal(got[:, 0], 1.0)
    np.testing.assert_array_equal(got[:, 1:], 0.0)
    assert Preprocessing.for_images((3, 4, 4), channels="last")(x[0]).shape == (1, 3, 4, 4)
    # a 3-D array equal to the input shape is one image, unless batched=True says otherwise
    planes = np.zeros((3, 4, 4), np.float32)
    assert Preprocessing.for_images((3, 4, 4))(planes).shape == (1, 3, 4, 4)
    assert Preprocessing.for_images((3, 4, 4))(planes, batched=True).shape == (3, 3, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "audio", "input_shape": (1, 2)}, "'kind' must be one of"),
        ({"kind": "image", "input_shape": (28, 28)}, r"\(C, H, W\)"),
        ({"kind": "image", "input_shape": (3, 0, 28)}, "positive sizes"),
        ({"kind": "image", "input_shape": (3, 8, 8), "mean": (0.1, 0.2)}, "1 or 3 values"),
        ({"kind": "image", "input_shape": (3, 8, 8), "std": 0.0}, "'std' must be positive"),
        ({"kind": "image", "input_shape": (3, 8, 8), "mean": float("nan")}, "finite numbers"),
        ({"kind": "image", "input_shape": (3, 8, 8), "scale": -1}, "'scale' must be positive"),
        ({"kind": "image", "input_shape": (1, 8, 8), "window": "lung", "scale": 2}, "not both"),
        ({"kind": "vector", "input_shape": (8,), "window": "lung"}, "applies to images"),
        ({"kind": "image", "input_shape": (1, 8, 8), "window": "nope"}, "unknown window preset"),
        ({"kind": "image", "input_shape": (1, 8, 8), "channels": "middle"}, "'channels' must be"),
    ],
)
def test_invalid_specs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


def test_from_dict_refuses_unknown_or_missing_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocessing.from_dict({"kind": "vector", "input_shape": [3], "gamma": 2})
    with pytest.raises(ValueError, match="missing keys"):
        Preprocessing.from_dict({"kind": "vector"})
    with pytest.raises(TypeError, match="expected a dict"):
        Preprocessing.from_dict(["vector"])


def test_channel_mismatch_and_wrong_sizes_name_the_shapes():
    with pytest.raises(ValueError, match="images have 3 channels, the model takes 1"):
        Preprocessing.for_images((1, 28, 28))(np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected vectors of shape \[n, 4\]"):
        Preprocessing.for_vectors(4)(np.zeros((2, 5)))


def test_vector_feature_names_round_trip_and_order_named_inputs():
    pre = Preprocessing.for_vectors(3, features=["CD3E", "MS4A1", "NKG7"])
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert "features" not in Preprocessing.for_vectors(3).to_dict()  # older runtimes read it
    index = pre.feature_order(["NKG7", "GAPDH", "CD3E", "MS4A1"])
    x = np.array([[3.0, 9.0, 1.0, 2.0]])
    np.testing.assert_array_equal(x[:, index], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"lack 1 of the model's 3 features \(e.g. MS4A1\)"):
        pre.feature_order(["NKG7", "CD3E"])
    with pytest.raises(ValueError, match="names 2 features, 'input_shape' says"):
        Preprocessing.for_vectors(3, features=["a", "b"])
    with pytest.raises(ValueError, match=r"repeats \['a'\]"):
        Preprocessing.for_vectors(3, features=["a", "a", "b"])
    with pytest.raises(ValueError, match="apply to vectors"):
        Preprocessing("series", (1, 3), features=("a", "b", "c"))
    with pytest.raises(ValueError, match="stores no feature names"):
        Preprocessing.for_vectors(3).feature_order(["a"])
