"""Matching Networks: shapes, gradients, attention read-out against a direct computation,
full-context embeddings, the adapted classifier, persistence, determinism, input errors,
and learning on real blood-cell images with and without FCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.matching import QueryEncoder, SupportEncoder, class_log_probs

FCE = {"fce": True, "embedding_dim": 16, "read_steps": 2}
CONFIGS = [pytest.param({}, id="plain"), pytest.param(FCE, id="fce")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


@pytest.mark.parametrize("hparams", CONFIGS)
def test_shapes_gradients_and_accuracy(hparams):
    learner = mh.build("matching", **hparams)
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)  # with FCE: both LSTMs get gradients too
    mh.check_accuracy_matches_predict(learner, batch)


def test_class_log_probs_are_the_attention_label_distribution(gen):
    sim = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64) * 5
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 0, 0, 1]])
    log_p = class_log_probs(sim, labels, 3)
    expected = (sim.softmax(-1) @ F.one_hot(labels, 3).double()).log()
    torch.testing.assert_close(log_p, expected)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2, 4, dtype=torch.float64))
    # stays finite where the probability underflows in the direct form
    far = class_log_probs(torch.tensor([[[0.0, -2000.0]]]), torch.tensor([[0, 1]]), 2)
    assert bool(torch.isfinite(far).all()) and float(far[0, 0, 1]) < -1000


def test_plain_predict_equals_cosine_attention():
    learner = mh.build("matching", temperature=0.25).double().eval()
    batch = mh.episodes(batch_size=2)
    sx, qx = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        logits = learner.predict(sx, batch.support_y, qx)
        for b in range(2):
            zs, zq = learner.backbone(sx[b]), learner.backbone(qx[b])
            cos = F.cosine_similarity(zq[:, None], zs[None], dim=-1)  # [Q, S]
            p = (cos / 0.25).softmax(-1) @ F.one_hot(batch.support_y[b], 3).double()
            torch.testing.assert_close(logits[b], p.log())


def test_plain_predict_is_invariant_to_support_order():
    learner = mh.build("matching").eval()
    batch = mh.episodes(batch_size=1, shots=3)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        b = learner.predict(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x)
    torch.testing.assert_close(a, b)


def test_fce_support_encoder_is_a_bidirectional_lstm(gen):
    """The looped encoder equals torch's bidirectional LSTM with the same weights, plus
    the skip connection."""
    with mh.seeded(0):
        enc = SupportEncoder(5).double()
    ref = torch.nn.LSTM(5, 5, batch_first=True, bidirectional=True).double()
    w_fwd, w_bwd = enc.input.weight.chunk(2, 0)
    b_fwd, b_bwd = enc.input.bias.chunk(2, 0)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_fwd)
        ref.weight_ih_l0_reverse.copy_(w_bwd)
        ref.bias_ih_l0.copy_(b_fwd)
        ref.bias_ih_l0_reverse.copy_(b_bwd)
        ref.weight_hh_l0.copy_(enc.forward_hidden.weight)
        ref.weight_hh_l0_reverse.copy_(enc.backward_hidden.weight)
        ref.bias_hh_l0.zero_()
        ref.bias_hh_l0_reverse.zero_()
    z = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    out, _ = ref(z)
    torch.testing.assert_close(enc(z), out[..., :5] + out[..., 5:] + z)


def test_fce_query_encoder_reads_the_support(gen):
    with mh.seeded(0):
        enc = QueryEncoder(4, steps=2).double()
    q = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    s = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    out = enc(q, s)
    assert out.shape == q.shape
    # a query's embedding depends on its own episode's support only
    s2 = s.clone()
    s2[1] += 1.0
    out2 = enc(q, s2)
    torch.testing.assert_close(out2[0], out[0])
    assert not torch.allclose(out2[1], out[1])
    # queries are embedded independently of each other
    torch.testing.assert_close(enc(q[:, :1], s), out[:, :1])


@pytest.mark.parametrize("hparams", CONFIGS)
def test_adapt_matches_predict(hparams):
    batch = mh.episodes(shots=3, batch_size=1)
    mh.check_adapt_matches_predict(mh.build("matching", **hparams), batch)


@pytest.mark.parametrize("hparams", CONFIGS)
def test_episodes_are_independent_in_eval_mode(hparams):
    mh.check_episodes_independent(mh.build("matching", **hparams), mh.episodes(batch_size=3))


@pytest.mark.parametrize("hparams", CONFIGS)
def test_spec_roundtrip(hparams):
    learner = mh.build("matching", **hparams)
    mh.check_roundtrip(learner, mh.episodes(), mh.tiny_conv4)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: mh.build("matching", seed=3, **FCE))


def test_bad_inputs_raise_clear_errors():
    learner = mh.build("matching")
    batch = mh.episodes(batch_size=2)
    bad_y = batch.support_y.clone()
    bad_y[1, 0] = 3
    # predict takes N from the labels: a label 3 makes a 4-way episode with a class missing
    with pytest.raises(ValueError, match="matching: episode 0, class 3 has no support example"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    no_two = batch.support_y.clone()
    no_two[1, no_two[1] == 2] = 0
    with pytest.raises(ValueError, match="episode 1, class 2 has no support example"):
        learner.predict(batch.support_x, no_two, batch.query_x)
    with pytest.raises(TypeError, match="integer class indices"):
        learner.predict(batch.support_x, batch.support_y.float(), batch.query_x)
    with pytest.raises(ValueError, match="fce=True needs 'embedding_dim'"):
        create("matching", mh.tiny_conv4(), 3, fce=True)
    with pytest.raises(ValueError, match="'read_steps' must be positive"):
        create("matching", mh.tiny_conv4(), 3, fce=True, embedding_dim=16, read_steps=0)


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = mh.build("matching", **FCE).adapt(batch.support_x[0], batch.support_y[0])
    mh.check_exportable(adapted, batch.query_x[0])


@pytest.mark.parametrize("hparams", CONFIGS)
def test_learns_on_blood_cells(hparams):
    result = mh.train_and_evaluate(mh.build("matching", **hparams), shots=5, steps=40)
    print(result)
    result.check(ways=3, seen_gain=0.1)
