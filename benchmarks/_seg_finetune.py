"""The supervised baseline of the segmentation protocol: fine-tune an encoder and a 1x1
per-pixel classifier on the K labelled support slices alone (cross-entropy, flips and
small shifts as augmentation), then segment the queries. The encoder starts from the
meta-trained one, so the baseline sees the same weights and the same labels as the
prototype methods and differs only in how it adapts."""

from __future__ import annotations

import copy
import hashlib

import torch
import torch.nn.functional as F
from torch import nn


class FineTuneSegmenter:
    """``segment(support_x [S, C, H, W], support_masks [S, H, W], query_x) -> [n, H, W]``
    by fine-tuning a copy of ``encoder`` plus a 1x1 head for ``steps`` Adam steps."""

    def __init__(self, encoder: nn.Module, steps: int = 100, lr: float = 1e-3, seed: int = 0):
        self.encoder, self.steps, self.lr, self.seed = encoder, steps, lr, seed
        self._fitted: dict[str, nn.Module] = {}  # one fine-tune per distinct support set

    def _augment(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        if bool(torch.rand((), generator=g) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=g))
        return x.roll((dy, dx), (-2, -1)), y.roll((dy, dx), (-2, -1))

    def fit(self, support_x: torch.Tensor, support_masks: torch.Tensor) -> nn.Module:
        """The fine-tuned network ``x -> logits [n, N+1, H, W]``."""
        classes = int(support_masks.max()) + 1
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        enc = copy.deepcopy(self.encoder).train()
        head = nn.Conv2d(enc.out_channels, classes, 1)
        net = nn.Sequential(enc, head)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        fg = support_masks.float().mean().clamp(0.01, 0.99)
        weight = torch.ones(classes)
        weight[0] = float(fg / (1 - fg)) ** 0.5  # soften the background's majority
        for _ in range(self.steps):
            x, y = self._augment(support_x, support_masks, g)
            logits = F.interpolate(net(x), size=y.shape[-2:], mode="bilinear")
            loss = F.cross_entropy(logits, y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return net.eval()

    @torch.no_grad()
    def segment(
        self, support_x: torch.Tensor, support_masks: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        key = hashlib.sha1(support_x.numpy().tobytes() + support_masks.numpy().tobytes())
        net = self._fitted.get(key.hexdigest())
        if net is None:
            with torch.enable_grad():
                net = self._fitted[key.hexdigest()] = self.fit(support_x, support_masks)
        logits = F.interpolate(net(query_x), size=query_x.shape[-2:], mode="bilinear")
        return logits.argmax(1)
