"""A model-based meta-learner: SNAIL (Mishra, Rohaninejad, Chen & Abbeel, "A Simple Neural
Attentive Meta-Learner", ICLR 2018).

The learner reads an episode as a sequence: the support examples with their labels,
then a query with a null label, and predicts the query's class from its output at the
last position. Memory of the support set is held in the activations: causal temporal
convolutions (dense blocks of dilated convolutions, "TC blocks") aggregate information
from the past at growing dilations, and causal soft attention (as in Vaswani et al. 2017)
retrieves specific past positions. The few-shot architecture of the paper (appendix):

    input [f(x_t), onehot(y_t)]  (D + N channels; the query's label part is zero)
    -> Attention(key 64, value 32) -> TC(128) -> Attention(256, 128) -> TC(128)
    -> Attention(512, 256) -> 1x1 convolution to N logits

Why SNAIL rather than a MANN (Santoro et al. 2016) with an LSTM controller and
least-recently-used-access memory: the MANN writes and reads its external memory through
a recurrent controller trained by backpropagation through time, which Santoro et al.
train for 100,000 episodes and which is sensitive to optimisation settings; SNAIL's
attention can retrieve the support example that matches the query directly and trains
with ordinary feed-forward gradients, and Mishra et al. report 5-way Omniglot accuracies
far above the MANN's.

Batched over episodes, one sequence per query, computed exactly without repeating the
support: in the paper each query is classified by its own sequence ``support + [query]``.
The support positions are the same for every query of an episode, so each layer runs
once on the support stream ``[B, S, C]`` (causally) and once on the query stream
``[B, Q, C]``, whose "past" is the episode's support. The result equals running the
``B * Q`` sequences separately.

During meta-training the support order is shuffled per episode (the sampler's episodes
are class-major, and a sequence model must not learn an order), with the learner's own
seeded ``torch.Generator``, whose state :func:`~medmeta.train.meta_fit` checkpoints (see
:meth:`~medmeta.algorithms.MetaLearner.generators`), so a resumed run shuffles exactly as an
uninterrupted one.

Two choices beyond the paper make SNAIL train in tens rather than hundreds of steps:
the embeddings are layer-normalised before they enter the sequence (the attention
logits then have a scale independent of the backbone), and each attention block's query
and key projections start tied and scaled (``ATTENTION_INIT_GAIN``), so the first
attention is a sharp similarity kernel. With the paper's independent default
initialisation the attention starts uniform, the label read-out carries no signal, and
on 3-way 5-shot blood-cell episodes (Conv4-16, B=4, Adam) training sat at chance for
100-150 steps at lr 3e-3 and still at 80 steps at lr 1e-3; with both choices, at lr 1e-3
it is above chance after 40-60 steps and at 0.7-0.8 training accuracy after 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medmeta.algorithms.base import Adapted, MetaLearner, register
from medmeta.algorithms.protonet import (
    check_episode,
    check_labels,
    check_positive,
    check_task,
    deployable,
    embed_episodes,
    evaluating,
)
from medmeta.data.episodes import EpisodeBatch

Streams = tuple[torch.Tensor, torch.Tensor]  # (support [B, S, C], queries [B, Q, C])

# Query and key projections start equal and scaled by this gain (biases zero). With
# torch's default Linear init, E[W^T W] = key_size / (3 C) I, so for inputs of C channels
# with squared norm ~C (layer-normalised) the initial attention logits are about
# gain^2 sqrt(key_size) / 3 = 3 sqrt(key_size) times the inputs' cosine similarity
# (12x for key_size 16): attention already prefers similar support examples at step 0.
ATTENTION_INIT_GAIN = 3.0


class CausalAttention(nn.Module):
    """Causal soft attention block: appends ``read [.., value_size]`` to the channels.

    A support position attends to the support positions up to itself; a query attends
    to the whole support and to itself.
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(in_channels, key_size)
        self.query = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_channels = in_channels + value_size
        with torch.no_grad():  # tied, sharpened init: attention starts as a similarity kernel
            self.key.weight.mul_(ATTENTION_INIT_GAIN)
            self.query.weight.copy_(self.key.weight)
            self.key.bias.zero_()
            self.query.bias.zero_()

    def forward(self, streams: Streams) -> Streams:
        s, q = streams  # [B, S, C], [B, Q, C]
        ks, qs, vs = self.key(s), self.query(s), self.value(s)
        kq, qq, vq = self.key(q), self.query(q), self.value(q)
        S = s.shape[1]
        # support: causal attention among the support positions
        logits = (qs @ ks.transpose(1, 2)) * self.scale  # [B, S, S]
        future = torch.ones(S, S, dtype=torch.bool, device=s.device).triu(1)
        read_s = logits.masked_fill(future, float("-inf")).softmax(-1) @ vs
        # queries: the whole support, then the query itself
        to_support = (qq @ ks.transpose(1, 2)) * self.scale  # [B, Q, S]
        to_self = (qq * kq).sum(-1, keepdim=True) * self.scale  # [B, Q, 1]
        weights = torch.cat([to_support, to_self], -1).softmax(-1)
        read_q = weights[..., :S] @ vs + weights[..., S:] * vq
        return torch.cat([s, read_s], -1), torch.cat([q, read_q], -1)


class DenseBlock(nn.Module):
    """Dilated causal convolution (kernel 2) with a gated activation, appended to the
    channels: ``out_t = [x_t, tanh(a_t) * sigmoid(b_t)]``, ``[a_t, b_t] = W [x_{t-d}, x_t]``.

    A query's position follows the support, so its lagged input is support position
    ``S - d`` (zero when ``d > S``).
    """

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Linear(2 * in_channels, 2 * filters)
        self.dilation = dilation
        self.out_channels = in_channels + filters

    def _gate(self, lagged: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(torch.cat([lagged, current], -1)).chunk(2, dim=-1)
        return a.tanh() * b.sigmoid()

    def forward(self, streams: Streams) -> Streams:
        s, q = streams
        B, S, C = s.shape
        d = self.dilation
        lagged_s = F.pad(s, (0, 0, d, 0))[:, :S]  # x_{t-d}, zeros before the start
        if d <= S:
            lagged_q = s[:, S - d : S - d + 1].expand(B, q.shape[1], C)
        else:
            lagged_q = torch.zeros_like(q)
        return (
            torch.cat([s, self._gate(lagged_s, s)], -1),
            torch.cat([q, self._gate(lagged_q, q)], -1),
        )


class TCBlock(nn.Module):
    """Dense blocks at dilations 1, 2, 4, ... covering a sequence of ``length``."""

    def __init__(self, in_channels: int, length: int, filters: int) -> None:
        super().__init__()
        blocks = []
        channels = in_channels
        for i in range(max(1, math.ceil(math.log2(length)))):
            blocks.append(DenseBlock(channels, filters, 2**i))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, streams: Streams) -> Streams:
        for block in self.blocks:
            streams = block(streams)
        return streams


class SNAILCore(nn.Module):
    """The sequence model: ``(support [B, S, D + N], queries [B, Q, D + N]) -> [B, Q, N]``."""

    def __init__(
        self, in_channels: int, ways: int, length: int, key_size: int, value_size: int, filters: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, scale in enumerate((1, 4, 8)):
            layers.append(CausalAttention(channels, key_size * scale, value_size * scale))
            channels = layers[-1].out_channels
            if i < 2:
                layers.append(TCBlock(channels, length, filters))
                channels = layers[-1].out_channels
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(channels, ways)

    def forward(self, support: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        streams = (support, queries)
        for layer in self.layers:
            streams = layer(streams)
        return self.classifier(streams[1])


def sequence_inputs(
    support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int
) -> Streams:
    """``[f(x), onehot(y)]`` for the support and ``[f(x), 0]`` for the queries."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)  # [B, S, N]
    null = queries.new_zeros(*queries.shape[:2], ways)
    return torch.cat([support, one_hot], -1), torch.cat([queries, null], -1)


class SNAILHead(nn.Module):
    """Deployable SNAIL classifier for one n-way support set: ``x [.., ...] -> logits
    [.., n]`` (the first n of the core's outputs)."""

    def __init__(
        self, embed: nn.Module, core: SNAILCore, support: torch.Tensor, n_way: int
    ) -> None:
        super().__init__()
        self.embed = embed
        self.core = core
        self.n_way = n_way
        self.register_buffer("support", support.detach().clone())  # [S, D + ways] inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)  # [n, D]
        ways = self.support.shape[-1] - z.shape[-1]
        queries = torch.cat([z, z.new_zeros(z.shape[0], ways)], -1)
        return self.core(self.support[None], queries[None])[0, :, : self.n_way]


@register
class SNAIL(MetaLearner):
    """SNAIL (Mishra et al. 2018), batched over episodes.

    Args:
        backbone: embedding network, ``[n, ...] -> [n, D]``.
        ways: N: the size of the label input and of the output; episodes may have fewer
            ways (the first n logits are used), not more.
        embedding_dim: D, the backbone's output size.
        shots: K the TC blocks are sized for: their depth is ``ceil(log2(N*K + 1))`` so
            the receptive field covers the sequence; other K still work.
        key_size, value_size: of the first attention block; the second and third use 4x
            and 8x (the paper: 64/32, 256/128, 512/256).
        filters: channels added by each dense block (128 in the paper).
        shuffle: shuffle the support order of each training episode.
        seed: seeds the shuffling generator.
    """

    name = "snail"
    fixed_ways = True
    shape_hparams = ("embedding_dim",)

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        embedding_dim: int,
        shots: int = 1,
        key_size: int = 64,
        value_size: int = 32,
        filters: int = 128,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        embedding_dim = check_positive(self.name, "embedding_dim", embedding_dim, integer=True)
        shots = check_positive(self.name, "shots", shots, integer=True)
        key_size = check_positive(self.name, "key_size", key_size, integer=True)
        value_size = check_positive(self.name, "value_size", value_size, integer=True)
        filters = check_positive(self.name, "filters", filters, integer=True)
        if not isinstance(shuffle, bool):
            raise TypeError(f"snail: 'shuffle' must be a bool, got {type(shuffle).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"snail: 'seed' must be an int, got {type(seed).__name__}")
        super().__init__(
            backbone,
            ways,
            embedding_dim=embedding_dim,
            shots=shots,
            key_size=key_size,
            value_size=value_size,
            filters=filters,
            shuffle=shuffle,
            seed=seed,
        )
        self.embedding_dim = embedding_dim
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.norm = nn.LayerNorm(embedding_dim)
        self.core = SNAILCore(
            embedding_dim + ways, ways, ways * shots + 1, key_size, value_size, filters
        )

    def _logits(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        n_way: int,
        shuffle: bool,
    ) -> torch.Tensor:
        check_episode(self.name, support_x, support_y, query_x)
        support_y = check_labels(self.name, "support_y", support_y, n_way)
        zs, zq = embed_episodes(self.backbone, support_x, query_x)  # [B,S,D], [B,Q,D]
        if zs.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"snail: the backbone gives {zs.shape[-1]} features per example, "
                f"embedding_dim is {self.embedding_dim}"
            )
        zs, zq = self.norm(zs), self.norm(zq)
        if shuffle:
            B, S = support_y.shape
            order = torch.rand(B, S, generator=self.generator).argsort(-1).to(zs.device)
            zs = zs.gather(1, order.unsqueeze(-1).expand_as(zs))
            support_y = support_y.gather(1, order)
        support, queries = sequence_inputs(zs, support_y, zq, self.ways)
        return self.core(support, queries)[..., :n_way]  # [B, Q, N]

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query cross-entropy over the B episodes, and the query accuracy ``[B]``."""
        self.check_ways(batch.ways)
        logits = self._logits(
            batch.support_x, batch.support_y, batch.query_x, batch.ways, self.shuffle
        )
        targets = check_labels(self.name, "query_y", batch.query_y, batch.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        accuracy = (logits.argmax(-1) == targets).float().mean(-1)
        return loss, accuracy.detach()

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, Q, N]`` (N from the support labels, at most ``ways``); the support
        is read in the given order."""
        check_episode(self.name, support_x, support_y, query_x)
        n_way = self.task_ways(support_y)
        return self._logits(support_x, support_y, query_x, n_way, shuffle=False)

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """A :class:`SNAILHead` holding the support sequence's inputs (eval mode)."""
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        labels = check_labels(self.name, "support_y", support_y[None], n_way)
        with evaluating(self):
            zs, _ = embed_episodes(self.backbone, support_x[None], support_x[None, :0])
            zs = self.norm(zs)
        support, _ = sequence_inputs(zs, labels, zs[:, :0], self.ways)
        embed = nn.Sequential(deployable(self.backbone), deployable(self.norm))
        head = SNAILHead(embed, deployable(self.core), support[0], n_way)
        return Adapted(head, n_way).eval()
