"""Prototype pooling and the prototype score head of the few-shot segmenters.

Shared by PANet (Wang et al., ICCV 2019) and ALPNet (Ouyang et al., ECCV 2020), and
mirrored in numpy by :mod:`medmeta.edge.segmenter` for on-device enrolment:

* label maps ``[S, H, W]`` (0 = background, 1..N) become *soft* masks on the encoder grid,
  ``[S, N+1, h, w]``: the fraction of each feature cell covered by each class (area pooling);
* a **class prototype** is the masked average of the support features with the class's soft
  mask (``ops.masked_prototypes``);
* **local prototypes** (ALPNet's adaptive local prototype pooling) are masked averages over
  ``window x window`` cells of the grid, kept where the class covers at least
  ``threshold`` of the window, at most ``max_local`` per class (those of the largest
  coverage, ties in (shot, window) order);
* the **score** of class c at a query cell is the softmax-weighted mean of the scaled cosine
  similarities ``s_p = scale * cos(f, p)`` to the class's prototypes,
  ``sum_p e^{s_p} s_p / sum_p e^{s_p}`` (ALPNet; a single prototype gives ``s_p``, PANet),
  computed with one ``ops.pairwise_distance`` over all ``n*h*w`` query positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medmeta import ops

__all__ = ["class_scores", "local_prototypes", "pool_prototypes", "soft_masks"]


def soft_masks(labels: torch.Tensor, classes: int, size: tuple[int, int]) -> torch.Tensor:
    """Label maps ``[S, H, W]`` (ints in ``0..classes-1``) -> class coverage of each cell of
    an ``h x w`` grid, ``[S, classes, h, w]`` float32 (area pooling; sums to 1 over classes).
    """
    one_hot = F.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, size)


def _window_masks(h: int, w: int, window: int, device: torch.device) -> torch.Tensor:
    """Indicator of each ``window x window`` block of an ``h x w`` grid: ``[G, h, w]``."""
    rows = torch.arange(h, device=device) // window
    cols = torch.arange(w, device=device) // window
    gw = -(-w // window)
    block = rows[:, None] * gw + cols[None, :]  # [h, w]
    G = -(-h // window) * gw
    return (block[None] == torch.arange(G, device=device)[:, None, None]).float()


def local_prototypes(
    features: torch.Tensor,
    masks: torch.Tensor,
    classes: list[int],
    *,
    window: int,
    threshold: float,
    max_local: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALPNet's local prototypes of ``classes``.

    Args:
        features: ``[S, D, h, w]`` support features.
        masks: ``[S, C, h, w]`` soft masks (:func:`soft_masks`).
        classes: the classes given local prototypes.
        window, threshold, max_local: pooling window (cells), the minimum coverage of a
            kept window, and the most local prototypes per class.

    Returns:
        ``(prototypes [P, D], owner [P])`` (``P = 0`` when no window qualifies).
    """
    S, _, h, w = masks.shape
    cells = _window_masks(h, w, window, masks.device).to(masks.dtype)  # [G, h, w]
    size = cells.sum((1, 2))  # [G] cells per window (edge windows are smaller)
    chosen_masks, owners = [], []
    for c in classes:
        cover = torch.einsum("shw,ghw->sg", masks[:, c], cells) / size  # [S, G]
        flat = cover.flatten()
        keep = torch.nonzero(flat >= threshold).flatten()
        if len(keep) > max_local:  # the largest coverage first; stable in (shot, window)
            order = torch.sort(flat[keep], descending=True, stable=True).indices
            keep = keep[order[:max_local]].sort().values
        for k in keep.tolist():
            s, g = divmod(k, cells.shape[0])
            m = torch.zeros(S, h, w, device=masks.device, dtype=masks.dtype)
            m[s] = masks[s, c] * cells[g]
            chosen_masks.append(m)
            owners.append(c)
    if not owners:
        return features.new_zeros(0, features.shape[1]), torch.zeros(0, dtype=torch.long)
    m = torch.stack(chosen_masks, 1)  # [S, P, h, w]
    protos = ops.masked_prototypes(features[None], m[None])[0]  # [P, D]
    return protos, torch.tensor(owners, dtype=torch.long, device=features.device)


def pool_prototypes(
    features: torch.Tensor,
    masks: torch.Tensor,
    *,
    global_classes: list[int],
    local_classes: list[int] = (),
    window: int = 4,
    threshold: float = 0.95,
    max_local: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes of ``global_classes`` plus local prototypes of ``local_classes``.

    ``features [S, D, h, w]``, ``masks [S, C, h, w]`` -> ``(prototypes [P, D], owner [P])``.
    A class in ``local_classes`` but not in ``global_classes`` whose windows all fall
    below ``threshold`` gets its class prototype instead, so every class listed has one.
    """
    protos, owners = [], []
    if local_classes:
        p, o = local_prototypes(
            features, masks, list(local_classes),
            window=window, threshold=threshold, max_local=max_local,
        )  # fmt: skip
        protos.append(p)
        owners.append(o)
        missing = set(local_classes) - set(o.tolist()) - set(global_classes)
    else:
        missing = set()
    wanted = sorted(set(global_classes) | missing)
    if wanted:
        m = masks[:, wanted]  # [S, G, h, w]
        protos.append(ops.masked_prototypes(features[None], m[None])[0])
        owners.append(torch.tensor(wanted, dtype=torch.long, device=features.device))
    return torch.cat(protos), torch.cat(owners).to(features.device)


def class_scores(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    owner: torch.Tensor,
    classes: int,
    scale: float | torch.Tensor,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores ``[n, classes, h, w]`` of query features ``[n, D, h, w]``.

    Class c's score is the softmax-weighted mean of ``scale * cos(f, p)`` over its
    prototypes (``owner == c``). With ``background`` (a scalar tensor, ADNet's learned
    threshold), class 0 has no prototypes and scores ``background`` everywhere.
    """
    n, D, h, w = features.shape
    q = features.permute(0, 2, 3, 1).reshape(1, n * h * w, D)
    sim = scale * (1 - ops.pairwise_distance(q, prototypes[None], "cosine")[0])  # [nhw, P]
    one_hot = F.one_hot(owner, classes).to(sim.dtype)  # [P, classes]
    e = torch.exp(sim - sim.max(-1, keepdim=True).values.detach())
    den = e @ one_hot
    score = (e * sim) @ one_hot / den.clamp_min(torch.finfo(sim.dtype).tiny)
    if background is not None:
        score = torch.cat([background.to(score.dtype).expand(n * h * w, 1), score[:, 1:]], 1)
    return score.reshape(n, h, w, classes).permute(0, 3, 1, 2)
