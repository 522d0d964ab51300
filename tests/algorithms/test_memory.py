"""SNAIL: shapes, gradients, the two-stream computation against running each query's
sequence separately (causal attention and dilated causal convolutions written out),
causality, support shuffling, the adapted classifier, persistence, determinism, input
errors, and learning on real blood-cell images."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import metric_helpers as mh
from medmeta.algorithms import create
from medmeta.algorithms.memory import (
    CausalAttention,
    DenseBlock,
    SNAILCore,
    TCBlock,
    sequence_inputs,
)

SMALL = {"embedding_dim": 16, "shots": 2, "key_size": 8, "value_size": 8, "filters": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with mh.single_thread():
        yield


def _sequence_forward(core: SNAILCore, seq: torch.Tensor) -> torch.Tensor:
    """The paper's SNAIL on whole sequences ``[n, T, C]``: output of the last position."""
    x = seq
    for layer in core.layers:
        blocks = layer.blocks if isinstance(layer, TCBlock) else [layer]
        for block in blocks:
            if isinstance(block, CausalAttention):
                T = x.shape[1]
                logits = block.query(x) @ block.key(x).transpose(1, 2) * block.scale
                mask = torch.ones(T, T, dtype=torch.bool).triu(1)
                read = logits.masked_fill(mask, float("-inf")).softmax(-1) @ block.value(x)
                x = torch.cat([x, read], -1)
            else:
                assert isinstance(block, DenseBlock)
                # kernel-2 dilated causal conv1d over time, as a Conv1d
                w = block.conv.weight  # [2F, 2C]: columns [lagged | current]
                C = x.shape[-1]
                kernel = torch.stack([w[:, :C], w[:, C:]], -1)  # [2F, C, 2]
                y = F.conv1d(
                    F.pad(x.transpose(1, 2), (block.dilation, 0)),
                    kernel,
                    block.conv.bias,
                    dilation=block.dilation,
                )
                a, b = y.transpose(1, 2).chunk(2, -1)
                x = torch.cat([x, a.tanh() * b.sigmoid()], -1)
    return core.classifier(x[:, -1])


def test_streams_equal_one_sequence_per_query(gen):
    ways, D = 3, 5
    with mh.seeded(0):
        core = SNAILCore(D + ways, ways, length=7, key_size=4, value_size=3, filters=6).double()
    B, S, Q = 2, 6, 4
    zs = torch.randn(B, S, D, generator=gen, dtype=torch.float64)
    zq = torch.randn(B, Q, D, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, ways, (B, S), generator=gen)
    support, queries = sequence_inputs(zs, labels, zq, ways)
    got = core(support, queries)  # [B, Q, N]
    for b in range(B):
        seqs = torch.cat([support[b].expand(Q, S, -1), queries[b][:, None]], 1)  # [Q, S+1, C]
        torch.testing.assert_close(got[b], _sequence_forward(core, seqs))
    # dilations larger than the support (d > S) see zero padding, as in the sequence
    short = core(support[:, :2], queries)
    for b in range(B):
        seqs = torch.cat([support[b, :2].expand(Q, 2, -1), queries[b][:, None]], 1)
        torch.testing.assert_close(short[b], _sequence_forward(core, seqs))


def test_tc_block_receptive_field_covers_the_sequence():
    for length in (2, 4, 6, 16, 26):
        block = TCBlock(3, length, 2)
        dilations = [d.dilation for d in block.blocks]
        assert dilations == [2**i for i in range(max(1, math.ceil(math.log2(length))))]
        assert 1 + sum(dilations) >= length


def test_shapes_gradients_and_accuracy():
    learner = mh.build("snail", **SMALL, shuffle=False)
    batch = mh.episodes(ways=3, shots=2, queries=3, batch_size=2)
    mh.check_shapes(learner, batch)
    mh.check_gradients(learner, batch)
    mh.check_accuracy_matches_predict(learner, batch)


def test_queries_do_not_see_each_other():
    learner = mh.build("snail", **SMALL).eval()
    batch = mh.episodes(batch_size=1, queries=3)
    with torch.no_grad():
        full = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        for q in range(batch.query_x.shape[1]):
            one = learner.predict(batch.support_x, batch.support_y, batch.query_x[:, q : q + 1])
            torch.testing.assert_close(one[0, 0], full[0, q])


def test_shuffle_changes_the_order_reproducibly():
    batch = mh.episodes(batch_size=2)
    a = mh.build("snail", **SMALL, seed=5).eval()
    b = mh.build("snail", **SMALL, seed=5).eval()
    c = mh.build("snail", **SMALL, seed=5, shuffle=False).eval()
    with torch.no_grad():
        la, lb, lc = (m.meta_loss(batch)[0] for m in (a, b, c))
    assert float(la) == float(lb)  # the same seed shuffles the same way
    assert float(la) != float(lc)  # the order matters to a sequence model


def test_fewer_ways_in_training_batches():
    learner = mh.build("snail", **{**SMALL, "shots": 1}, ways=5)
    loss, accuracy = learner.meta_loss(mh.episodes(ways=3, batch_size=2))
    assert accuracy.shape == (2,) and bool(torch.isfinite(loss))


def test_adapt_matches_predict():
    mh.check_adapt_matches_predict(mh.build("snail", **SMALL), mh.episodes(shots=2, batch_size=1))


def test_episodes_are_independent_in_eval_mode():
    mh.check_episodes_independent(mh.build("snail", **SMALL), mh.episodes(batch_size=3))


def test_spec_roundtrip():
    mh.check_roundtrip(mh.build("snail", **SMALL, shuffle=False), mh.episodes(), mh.tiny_conv4)


def test_deterministic_given_seeds():
    mh.check_deterministic(lambda: mh.build("snail", **SMALL, seed=3))


def test_bad_inputs_raise_clear_errors():
    learner = mh.build("snail", **SMALL)
    batch = mh.episodes(batch_size=2)
    bad_y = batch.support_y.clone()
    bad_y[1, 2] = 7
    with pytest.raises(ValueError, match=r"snail was built for 3-way tasks .* cannot classify 8"):
        learner.predict(batch.support_x, bad_y, batch.query_x)
    with pytest.raises(ValueError, match="snail was built for 3-way tasks"):
        learner.meta_loss(mh.episodes(ways=4))
    bad_q = batch.query_y.clone()
    bad_q[0, 0] = 3
    with pytest.raises(ValueError, match=r"snail: 'query_y' must be in \[0, 3\), found 3"):
        learner.meta_loss(dataclasses.replace(batch, query_y=bad_q))
    wrong = create("snail", mh.tiny_conv4(), 3, embedding_dim=32)
    with pytest.raises(ValueError, match="backbone gives 16 features"):
        wrong.predict(batch.support_x, batch.support_y, batch.query_x)
    with pytest.raises(TypeError, match="'embedding_dim' must be an int"):
        create("snail", mh.tiny_conv4(), 3, embedding_dim=16.0)


def test_adapted_classifier_exports():
    batch = mh.episodes(shots=2, batch_size=1)
    adapted = mh.build("snail", **SMALL).adapt(batch.support_x[0], batch.support_y[0])
    mh.check_exportable(adapted, batch.query_x[0])


def test_learns_on_blood_cells():
    hparams = {**SMALL, "shots": 5, "key_size": 16, "value_size": 16, "filters": 32}
    result = mh.train_and_evaluate(mh.build("snail", **hparams), shots=5, steps=80)
    print(result)
    result.check(ways=3, seen_gain=0.15)
