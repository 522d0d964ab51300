"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching
Networks for One Shot Learning", NeurIPS 2016).

A query is classified by attention over the labelled support set:

    a(x, x_i) = softmax_i(cos(f(x, S), g(x_i, S)) / T)
    P(y = n | x, S) = sum_i a(x, x_i) [y_i = n]

and trained by the negative log-likelihood of the query labels. The cosine similarities
come from :func:`medmeta.ops.pairwise_distance` (``cosine`` = ``1 - cos``); the class
log-probabilities are a masked log-sum-exp of the log attention, so they stay finite when
an attention weight underflows. Logits returned by :meth:`MatchingNetworks.predict` are
these log-probabilities (their softmax is ``P``).

With full-context embeddings (``fce=True``, paper §2.1.2 and appendix) the support
embeddings are re-read by a bidirectional LSTM over the support set,

    g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i),

and each query embedding by an attention LSTM with K read steps over g(S):

    h_hat_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
    h_k = h_hat_k + f'(x)
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)
    f(x, S) = h_K,

both batched over the B episodes (the LSTMs run on ``[B, S, D]`` and ``[B*Q, D]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmeta import ops
from medmeta.algorithms.base import Adapted, MetaLearner, register
from medmeta.algorithms.protonet import (
    check_episode,
    check_labels,
    check_positive,
    check_task,
    deployable,
    distance,
    embed_episodes,
    evaluating,
)
from medmeta.data.episodes import EpisodeBatch


def class_log_probs(similarity: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``log P(y = n | x, S)`` ``[B, Q, N]`` from attention logits ``similarity [B, Q, S]``
    and support labels ``[B, S]`` (every class must occur in the support)."""
    log_attention = similarity.log_softmax(-1)  # [B, Q, S]
    member = F.one_hot(labels, n_way).to(torch.bool)  # [B, S, N]
    masked = log_attention.unsqueeze(-1).masked_fill(~member.unsqueeze(1), float("-inf"))
    return masked.logsumexp(-2)  # [B, Q, N]


def lstm_step(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM update from pre-activation ``gates [..., 4D]`` (input, forget, cell,
    output) and the cell ``c [..., D]``; returns ``(h, c)``."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


class SupportEncoder(nn.Module):
    """Full-context support embedding g: a bidirectional LSTM over the support set with a
    skip connection, ``[B, S, D] -> [B, S, D]``.

    Written as an explicit loop over the S support positions (batched over episodes):
    torch's fused CPU LSTM (oneDNN) is ~20x slower than this at few-shot sizes, and the
    loop exports to ONNX as plain ops.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.input = nn.Linear(dim, 8 * dim)  # input-to-gates of both directions
        self.forward_hidden = nn.Linear(dim, 4 * dim, bias=False)
        self.backward_hidden = nn.Linear(dim, 4 * dim, bias=False)

    def _run(self, gates_in: torch.Tensor, hidden: nn.Linear, reverse: bool) -> torch.Tensor:
        S = gates_in.shape[1]
        h = gates_in.new_zeros(gates_in.shape[0], gates_in.shape[2] // 4)
        c = torch.zeros_like(h)
        out: list[torch.Tensor] = [h] * S
        for t in reversed(range(S)) if reverse else range(S):
            h, c = lstm_step(gates_in[:, t] + hidden(h), c)
            out[t] = h
        return torch.stack(out, 1)  # [B, S, D]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        fwd_in, bwd_in = self.input(z).chunk(2, dim=-1)  # [B, S, 4D] each
        fwd = self._run(fwd_in, self.forward_hidden, reverse=False)
        bwd = self._run(bwd_in, self.backward_hidden, reverse=True)
        return fwd + bwd + z


class QueryEncoder(nn.Module):
    """Full-context query embedding f: an LSTM that reads the support K times with
    content-based attention, ``queries [B, Q, D]``, ``support [B, S, D] -> [B, Q, D]``.

    The LSTM's recurrent state is ``[h, r]`` (paper appendix), so its gates are an affine
    function of ``[f'(x), h_{k-1}, r_{k-1}]``.
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.gates = nn.Linear(3 * dim, 4 * dim)

    def read(self, h: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``r = sum_i softmax_i(h . g_i) g_i`` for ``h [B, Q, D]``, ``support [B, S, D]``."""
        attention = (h @ support.transpose(1, 2)).softmax(-1)  # [B, Q, S]
        return attention @ support

    def forward(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        h = queries  # h_0 = f'(x): h_hat_0 = 0
        c = torch.zeros_like(queries)
        r = self.read(h, support)
        for _ in range(self.steps):
            h_hat, c = lstm_step(self.gates(torch.cat([queries, h, r], -1)), c)
            h = h_hat + queries
            r = self.read(h, support)
        return h


class MatchingHead(nn.Module):
    """Deployable matching classifier for one support set: embeds ``x [n, ...]`` and
    attends over the stored (full-context) support embeddings; plain torch ops only."""

    def __init__(
        self,
        embed: nn.Module,
        support: torch.Tensor,
        labels: torch.Tensor,
        n_way: int,
        temperature: float,
        query_encoder: QueryEncoder | None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.query_encoder = query_encoder
        self.register_buffer("support", support.detach().clone())  # [S, D] (g(S) with FCE)
        self.register_buffer("labels", labels.detach().clone())  # [S]
        self.n_way = n_way
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)  # [n, D]
        if self.query_encoder is not None:
            z = self.query_encoder(z[None], self.support[None])[0]
        similarity = (1 - distance(z, self.support, "cosine")) / self.temperature
        return class_log_probs(similarity[None], self.labels[None], self.n_way)[0]


@register
class MatchingNetworks(MetaLearner):
    """Matching Networks (Vinyals et al. 2016).

    Args:
        backbone: embedding network (f' = g'), ``[n, ...] -> [n, D]``.
        ways: N for :meth:`predict` / :meth:`adapt`; :meth:`meta_loss` uses the batch's.
        fce: full-context embeddings (bidirectional support LSTM and attention LSTM over
            the queries); needs ``embedding_dim``.
        embedding_dim: D, the backbone's output size (required with ``fce``).
        read_steps: K, attention read steps of the query LSTM.
        temperature: divides the cosine similarities before the attention softmax.
            The paper uses the raw cosine (1); cosines of ReLU features span little of
            [-1, 1], so that attention is nearly uniform and learns slowly (on 3-way
            5-shot blood-cell episodes 40 steps raise held-out-image accuracy from 0.54
            to ~0.62 with 1 but to ~0.75 with 0.1). Chen et al. (2019) scale by 100.
    """

    name = "matching"

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        *,
        fce: bool = False,
        embedding_dim: int | None = None,
        read_steps: int = 3,
        temperature: float = 0.1,
    ) -> None:
        if not isinstance(fce, bool):
            raise TypeError(f"matching: 'fce' must be a bool, got {type(fce).__name__}")
        if fce and embedding_dim is None:
            raise ValueError(
                "matching: fce=True needs 'embedding_dim', the backbone's output size "
                "(medmeta.nn.embedding_dim(backbone, input_shape))"
            )
        if embedding_dim is not None:
            embedding_dim = check_positive(self.name, "embedding_dim", embedding_dim, True)
        read_steps = check_positive(self.name, "read_steps", read_steps, integer=True)
        temperature = check_positive(self.name, "temperature", temperature)
        super().__init__(
            backbone,
            ways,
            fce=fce,
            embedding_dim=embedding_dim,
            read_steps=read_steps,
            temperature=temperature,
        )
        self.fce = fce
        self.temperature = temperature
        self.support_encoder = SupportEncoder(embedding_dim) if fce else None
        self.query_encoder = QueryEncoder(embedding_dim, read_steps) if fce else None

    def _log_probs(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        n_way: int,
    ) -> torch.Tensor:
        check_episode(self.name, support_x, support_y, query_x)
        support_y = check_labels(self.name, "support_y", support_y, n_way, every_class=True)
        zs, zq = embed_episodes(self.backbone, support_x, query_x)  # [B,S,D], [B,Q,D]
        if self.fce:
            zs = self.support_encoder(zs)  # g(x_i, S)
            zq = self.query_encoder(zq, zs)  # f(x, S)
        similarity = (1 - ops.pairwise_distance(zq, zs, "cosine")) / self.temperature
        return class_log_probs(similarity, support_y, n_way)  # [B, Q, N]

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query NLL over the B episodes, and the query accuracy ``[B]``."""
        log_p = self._log_probs(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        targets = check_labels(self.name, "query_y", batch.query_y, batch.ways)
        loss = F.nll_loss(log_p.flatten(0, 1), targets.flatten())
        accuracy = (log_p.argmax(-1) == targets).float().mean(-1)
        return loss, accuracy.detach()

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Class log-probabilities ``[B, Q, N]`` of the queries."""
        check_episode(self.name, support_x, support_y, query_x)
        return self._log_probs(support_x, support_y, query_x, self.task_ways(support_y))

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """A :class:`MatchingHead` holding the support set's (full-context) embeddings.

        Runs in eval mode and returns an eval-mode copy (see ``protonet.adapt``)."""
        check_task(self.name, support_x, support_y)
        n_way = self.task_ways(support_y)
        labels = check_labels(self.name, "support_y", support_y[None], n_way, every_class=True)
        with evaluating(self):
            zs, _ = embed_episodes(self.backbone, support_x[None], support_x[None, :0])
            if self.fce:
                zs = self.support_encoder(zs)
        head = MatchingHead(
            deployable(self.backbone),
            zs[0],
            labels[0],
            n_way,
            self.temperature,
            deployable(self.query_encoder) if self.fce else None,
        )
        return Adapted(head, n_way).eval()
