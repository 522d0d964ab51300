"""EdgeModel on real blood-cell images: parity with eager PyTorch, on-device enrolment equal
to medmeta.ops.prototypes, OOD flags, explanations, persistence and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medmeta import ops
from medmeta.data import load
from medmeta.edge import EdgeModel, EdgeModelError

TEMPERATURE = 1.5
PARITY = 1e-5


@pytest.fixture(scope="module")
def eager(protonet, task, preprocessing):
    """Eager PyTorch: the adapted model and its calibrated probabilities on the queries."""
    adapted = protonet.adapt(
        torch.from_numpy(preprocessing(task.support_raw)), torch.from_numpy(task.support_y)
    )
    with torch.no_grad():
        probs = torch.softmax(
            adapted(torch.from_numpy(preprocessing(task.query_raw))) / TEMPERATURE, -1
        )
    return adapted, probs.numpy()


@pytest.fixture(scope="module")
def classifier(exported) -> EdgeModel:
    return EdgeModel(exported.classifier)


@pytest.fixture
def embedder(exported) -> EdgeModel:
    return EdgeModel(exported.embedder)  # fresh per test: tests enrol


def test_raw_uint8_images_give_the_eager_probabilities(classifier, embedder, eager, task):
    _, want = eager
    for model in (classifier, embedder):
        got = model.predict_proba(task.query_raw)  # uint8 [60, 28, 28, 3], channels last
        assert got.dtype == np.float32 and got.shape == (60, 3)
        np.testing.assert_allclose(got, want, atol=PARITY, rtol=0)
    assert want.max(1).mean() > 0.6 and (want.argmax(1) == task.query_y).mean() > 0.6


def test_batch_sizes_single_images_and_preprocessed_inputs(classifier, eager, task, preprocessing):
    _, want = eager
    np.testing.assert_allclose(classifier.predict_proba(task.query_raw[0]), want[:1], atol=PARITY)
    np.testing.assert_allclose(classifier.predict_proba(task.query_raw[:7]), want[:7], atol=PARITY)
    x = preprocessing(task.query_raw[:7])
    np.testing.assert_allclose(
        classifier.predict_proba(x, preprocessed=True), want[:7], atol=PARITY
    )
    np.testing.assert_allclose(
        classifier.predict_proba(x[0], preprocessed=True), want[:1], atol=PARITY
    )


def test_predict_reports_labels_names_and_ood(classifier, task):
    pred = classifier.predict(task.query_raw)
    assert pred.classes == tuple(task.class_names)
    np.testing.assert_array_equal(pred.labels, pred.probabilities.argmax(1))
    assert pred.ood is not None and pred.ood.dtype == bool and pred.ood_threshold > 0
    np.testing.assert_array_equal(pred.ood, pred.distance > pred.ood_threshold)
    for i, name in enumerate(pred.class_names):
        assert name == (None if pred.ood[i] else task.class_names[pred.labels[i]])
    assert pred.ood.mean() < 0.25  # in-distribution queries are mostly accepted


def test_metadata_and_properties(classifier, embedder, task, preprocessing):
    assert classifier.role == "classifier" and embedder.role == "embedder"
    assert classifier.class_names == embedder.class_names == task.class_names
    assert classifier.preprocessing == preprocessing == embedder.preprocessing
    assert classifier.temperature == TEMPERATURE
    assert classifier.input_shape == (3, 28, 28)
    meta = EdgeModel.read_metadata(classifier.path)
    assert meta == classifier.metadata and meta["evaluation"]["ci95"] == 0.01
    assert "EdgeModel('blood.onnx', role='classifier', classes=3" in repr(classifier)


def test_enrolment_equals_ops_prototypes_and_the_classifier(exported, eager, task, preprocessing):
    adapted, want = eager
    device = EdgeModel(exported.embedder)
    device.enrol(task.support_raw, task.support_y, class_names=task.class_names, replace=True)
    with torch.no_grad():
        z = adapted.embed(torch.from_numpy(preprocessing(task.support_raw)))
        reference = ops.prototypes(z[None], torch.from_numpy(task.support_y)[None], 3)[0]
    np.testing.assert_allclose(device.prototypes, reference.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(device.predict_proba(task.query_raw), want, atol=PARITY, rtol=0)


def test_enrolling_a_new_class_on_the_device(embedder, task, preprocessing, eager):
    adapted, _ = eager
    before = embedder.predict(task.new_query_raw)
    assert before.probabilities.shape == (20, 3)  # monocytes, forced into 3 other types
    embedder.enrol(task.new_support_raw, [task.new_class_name] * 5)
    assert embedder.class_names == [*task.class_names, task.new_class_name]
    assert list(embedder.enrolment.counts) == [5, 5, 5, 5]
    # the new prototype is the mean embedding of its support images
    with torch.no_grad():
        z = adapted.embed(torch.from_numpy(preprocessing(task.new_support_raw))).numpy()
    np.testing.assert_allclose(embedder.prototypes[3], z.mean(0), atol=1e-5, rtol=1e-5)
    after = embedder.predict(task.new_query_raw)
    assert after.probabilities.shape == (20, 4)
    assert (after.labels == 3).mean() > 0.45  # the new type is recognised (chance: 0.25)
    # adding more examples to a class averages over all of them; replace drops the old ones
    embedder.enrol(task.new_query_raw[:5], [3] * 5)
    assert embedder.enrolment.counts[3] == 10
    embedder.enrol(task.new_query_raw[:5], [3] * 5, replace=True)
    assert embedder.enrolment.counts[3] == 5
    with torch.no_grad():
        z = adapted.embed(torch.from_numpy(preprocessing(task.new_query_raw[:5]))).numpy()
    np.testing.assert_allclose(embedder.prototypes[3], z.mean(0), atol=1e-5, rtol=1e-5)


def test_explain_names_the_nearest_support_examples(embedder, task, eager, preprocessing):
    adapted, _ = eager
    why = embedder.explain(task.query_raw[:4], k=3)
    assert len(why) == 4
    with torch.no_grad():
        zq = adapted.embed(torch.from_numpy(preprocessing(task.query_raw[:4])))
        zs = adapted.embed(torch.from_numpy(preprocessing(task.support_raw)))
    d = ((zq[:, None] - zs[None]) ** 2).sum(-1).numpy()  # sqeuclidean, protonet's metric
    pred = embedder.predict(task.query_raw[:4])
    for i, e in enumerate(why):
        assert [n.index for n in e.neighbours] == list(np.argsort(d[i], kind="stable")[:3])
        np.testing.assert_allclose(
            [n.distance for n in e.neighbours], np.sort(d[i])[:3], rtol=1e-4, atol=1e-5
        )
        assert all(n.class_name == task.class_names[task.support_y[n.index]] for n in e.neighbours)
        assert e.label == pred.labels[i] and e.class_name == pred.class_names[i]
        assert set(e.prototype_distances) == set(task.class_names)
        assert e.ood == bool(pred.ood[i])
    with pytest.raises(ValueError, match="k: expected a positive int"):
        embedder.explain(task.query_raw[:1], k=0)


def test_images_of_another_modality_are_flagged_out_of_distribution(exported, blood):
    """Brain MRI (gray 64x64, resized and replicated to 3 channels) against blood-cell
    queries, over several 5-shot tasks enrolled on the device: the leave-one-out 0.95
    quantile rule flags about 5% of in-distribution queries and over half the MRI images
    (the rates depend on the trained model's floating-point path: 0.59 on an AVX2 CPU)."""
    mri = load("brain_tumor_mri").x[::20][:120]
    device = EdgeModel(exported.embedder)
    rng = np.random.default_rng(0)
    rates = []
    for classes in ([0, 1, 2], [3, 4, 5], [5, 6, 7], [0, 4, 7]):
        support, query = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(blood.y == c))
            support.append(idx[:5])
            query.append(idx[5:45])
        names = [blood.class_names[c] for c in classes]
        device.enrol(blood.x[np.concatenate(support)], np.repeat(np.arange(3), 5), class_names=names,
                     replace=True)  # fmt: skip
        in_dist = device.predict(blood.x[np.concatenate(query)])
        other = device.predict(mri)
        assert all(n is None for n, flag in zip(other.class_names, other.ood, strict=True) if flag)
        rates.append((in_dist.ood.mean(), other.ood.mean()))
    in_rate, mri_rate = np.mean(rates, axis=0)
    assert in_rate <= 0.15 and mri_rate >= 0.5 and mri_rate - in_rate >= 0.4, rates


def test_the_classifier_flags_like_the_embedder(classifier, embedder, task):
    mri = load("brain_tumor_mri").x[::20][:120]  # every tumour class, as in the test above
    for inputs in (task.query_raw, mri):
        a, b = classifier.predict(inputs), embedder.predict(inputs)
        assert a.ood_threshold == pytest.approx(b.ood_threshold, rel=1e-5)
        np.testing.assert_allclose(a.distance, b.distance, rtol=1e-4, atol=1e-4)
        clear = np.abs(a.distance - a.ood_threshold) > 1e-3 * a.ood_threshold
        np.testing.assert_array_equal(a.ood[clear], b.ood[clear])
    assert classifier.predict(mri).ood.mean() > classifier.predict(task.query_raw).ood.mean()


def test_enrolment_survives_a_restart(exported, task, tmp_path):
    device = EdgeModel(exported.embedder)
    device.enrol(task.new_support_raw, [task.new_class_name] * 5)
    path = device.save(tmp_path / "enrolment.npz")
    restored = EdgeModel(exported.embedder, enrolment=path)
    assert restored.class_names == device.class_names
    np.testing.assert_array_equal(restored.prototypes, device.prototypes)
    assert restored.ood_threshold == device.ood_threshold
    np.testing.assert_array_equal(
        restored.predict_proba(task.query_raw), device.predict_proba(task.query_raw)
    )


def test_enrolment_files_of_another_model_or_tampered_are_refused(exported, task, tmp_path):
    device = EdgeModel(exported.embedder)
    path = device.save(tmp_path / "e.npz")
    with np.load(path) as z:
        fields = dict(z)
    np.savez(tmp_path / "other.npz", **{**fields, "weights_sha256": np.array("0" * 64)})
    with pytest.raises(EdgeModelError, match="another embedder"):
        device.load_enrolment(tmp_path / "other.npz")
    np.savez(tmp_path / "bad.npz", **{**fields, "labels": fields["labels"] + 7})
    with pytest.raises(EdgeModelError, match="inconsistent enrolment"):
        device.load_enrolment(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgeModelError, match="not a readable enrolment"):
        device.load_enrolment(tmp_path / "junk.npz")


def _run_threads(target, n: int) -> list[BaseException]:
    """Run ``target(i)`` on ``n`` threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as err:  # surfaced to the test
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("which", ["classifier", "embedder"])
def test_concurrent_predictions_equal_single_threaded_results(which, request, task):
    model = request.getfixturevalue(which)
    batches = [task.query_raw[i : i + 6] for i in range(0, 60, 6)]
    want = [model.predict_proba(b) for b in batches]
    got: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        got[i] = [model.predict_proba(b) for _ in range(2) for b in batches]

    assert not _run_threads(work, 8)
    for i in range(8):
        for a, b in zip(got[i], want * 2, strict=True):
            np.testing.assert_array_equal(a, b)


def test_concurrent_enrolment_and_prediction_never_mix_states(exported, task):
    """While one thread switches the enrolment between two states, predictions from other
    threads must each equal the single-threaded result of one of the two states."""
    device = EdgeModel(exported.embedder)
    state_a = (task.support_raw, task.support_y)
    four = np.array([0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13])  # 4 of the 5 per class
    state_b = (task.support_raw[four], task.support_y[four])
    names = task.class_names
    device.enrol(*state_b, class_names=names, replace=True)
    want_b = device.predict_proba(task.query_raw)
    device.enrol(*state_a, class_names=names, replace=True)
    want_a = device.predict_proba(task.query_raw)
    assert np.abs(want_a - want_b).max() > 1e-3  # the two states differ visibly
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = {"a": 0, "b": 0}

    def enrol() -> None:
        try:
            for i in range(12):
                device.enrol(*(state_b if i % 2 == 0 else state_a), class_names=names, replace=True)
        except BaseException as err:
            errors.append(err)
        finally:
            stop.set()

    def predict() -> None:
        try:
            while not stop.is_set():
                p = device.predict_proba(task.query_raw)
                if np.array_equal(p, want_a):
                    seen["a"] += 1
                elif np.array_equal(p, want_b):
                    seen["b"] += 1
                else:
                    raise AssertionError("a prediction mixed two enrolment states")
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=predict) for _ in range(3)] + [
        threading.Thread(target=enrol)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[0]
    assert seen["a"] + seen["b"] > 0
    assert list(device.enrolment.counts) == [5, 5, 5]  # the last enrolment was state a


def test_ood_quantile_override_moves_the_threshold(exported, task):
    strict = EdgeModel(exported.embedder, ood_quantile=0.5)
    default = EdgeModel(exported.embedder)
    assert strict.ood_threshold < default.ood_threshold
    assert strict.predict(task.query_raw).ood.mean() > default.predict(task.query_raw).ood.mean()
    assert default.enrolment.ood_quantile == 0.95 and default.enrolment.ood_rule == "leave-one-out"
