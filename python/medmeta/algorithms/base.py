"""The common interface of every meta-learning method in medmeta.

A learner is an ``nn.Module`` whose parameters are the meta-parameters. It

* meta-trains on a batch of episodes: :meth:`MetaLearner.meta_loss` (a differentiable
  loss) and :meth:`MetaLearner.meta_train_step` (one optimiser step; methods whose update
  is not a gradient of a loss, like Reptile, override it);
* predicts query logits for a batch of episodes from their support sets:
  :meth:`MetaLearner.predict` -> ``[B, Q, N]``;
* adapts to one support set and returns a stand-alone classifier for deployment and
  export: :meth:`MetaLearner.adapt` -> :class:`Adapted`.

Learners are created by name with :func:`create` and rebuilt from checkpoints with
:meth:`MetaLearner.spec` (plain JSON-like data, safe to load with ``weights_only=True``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from medmeta.data.episodes import EpisodeBatch


@dataclass
class StepResult:
    """What one meta-training step reports (Python floats, detached)."""

    loss: float
    accuracy: float
    extra: dict[str, float] = field(default_factory=dict)


class Adapted(nn.Module):
    """A classifier adapted to one task: ``forward(x [n, ...]) -> logits [n, N]``.

    ``embed`` (optional) maps inputs to embeddings ``[n, D]`` and ``prototypes`` ``[N, D]``
    are set for metric learners, so export can ship an enrolment form (embedding network
    plus a prototype head) as well as the classifier.
    """

    def __init__(
        self,
        classify: nn.Module,
        ways: int,
        *,
        embed: nn.Module | None = None,
        prototypes: torch.Tensor | None = None,
        metric: str | None = None,
    ) -> None:
        super().__init__()
        self.classify = classify
        self.ways = ways
        self.embed = embed
        self.metric = metric
        if prototypes is not None:
            self.register_buffer("prototypes", prototypes.detach().clone())
        else:
            self.prototypes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)


class MetaLearner(nn.Module, ABC):
    """Base class of the methods; see the module docstring for the contract.

    Subclasses set ``name`` and call ``super().__init__(backbone, ways, **hparams)`` with
    every constructor argument besides ``backbone`` in ``hparams``, so :meth:`spec`
    can rebuild them.
    """

    name: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module, ways: int, **hparams: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.ways = ways
        self.hparams = dict(hparams)

    # -- meta-training -------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over the batch's episodes (a scalar with grad), accuracy ``[B]``)."""

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> StepResult:
        """One meta-update on a batch of episodes."""
        self.train()
        optimizer.zero_grad(set_to_none=True)
        loss, accuracy = self.meta_loss(batch)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), float(accuracy.detach().float().mean()))

    # -- inference -------------------------------------------------------------------
    @abstractmethod
    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, Q, N]`` of the queries ``[B, Q, ...]`` given support sets
        ``support_x [B, S, ...]`` with labels ``support_y [B, S]`` in ``[0, N)``."""

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Adapted:
        """A stand-alone classifier for one task: ``support_x [S, ...]``, ``support_y [S]``."""

    # -- persistence -----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What rebuilds this learner (with :func:`create`): name, ways and hyper-parameters."""
        return {"algorithm": self.name, "ways": self.ways, "hparams": dict(self.hparams)}


_REGISTRY: dict[str, type[MetaLearner]] = {}


def register(cls: type[MetaLearner]) -> type[MetaLearner]:
    """Class decorator adding a learner to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a name")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered learners."""
    _import_all()
    return sorted(_REGISTRY)


def create(name: str, backbone: nn.Module, ways: int, **hparams: Any) -> MetaLearner:
    """A learner by name, e.g. ``create("protonet", Conv4(3), ways=5)``."""
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](backbone, ways, **hparams)


def shape_arguments(
    backbone: nn.Module, input_shape: Sequence[int], num_classes: int | None = None
) -> dict[str, Any]:
    """The shape arguments methods may need, computed by running ``backbone`` once on zeros.

    ``embedding_dim`` / ``feature_dim`` (D of the embeddings), ``input_shape``, ``num_classes``
    (when given) and, for a backbone ending in ``Flatten`` (e.g. Conv4),
    ``feature_shape`` ``(C, H, W)`` of its last feature maps (Relation Networks' conv module).
    """
    from medmeta.nn.layers import Flatten

    was_training = backbone.training
    backbone.eval()
    p = next(backbone.parameters(), None)
    probe = torch.zeros(2, *input_shape, dtype=p.dtype if p is not None else None,
                        device=p.device if p is not None else None)  # fmt: skip
    args: dict[str, Any] = {"input_shape": [int(s) for s in input_shape]}
    try:
        with torch.no_grad():
            children = list(backbone.children())
            if (
                children
                and isinstance(children[-1], Flatten)
                and isinstance(backbone, nn.Sequential)
            ):
                maps = probe
                for layer in children[:-1]:
                    maps = layer(maps)
                if maps.dim() == 4:
                    args["feature_shape"] = [int(s) for s in maps.shape[1:]]
                dim = int(maps[0].numel())
            else:
                dim = int(backbone(probe).shape[-1])
    finally:
        backbone.train(was_training)
    args["embedding_dim"] = args["feature_dim"] = dim
    if num_classes is not None:
        args["num_classes"] = int(num_classes)
    return args


def build(
    name: str,
    backbone: nn.Module,
    ways: int,
    *,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    **hparams: Any,
) -> MetaLearner:
    """:func:`create` with the shape arguments the method takes filled in from the backbone
    (see :func:`shape_arguments`); explicit ``hparams`` win.

    ``num_classes`` (the number of training classes) is needed by the supervised baseline.
    """
    import inspect

    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    accepted = inspect.signature(_REGISTRY[name]).parameters
    shapes = shape_arguments(backbone, input_shape, num_classes)
    if "num_classes" in accepted and "num_classes" not in hparams and num_classes is None:
        raise ValueError(f"{name} needs num_classes (the number of training classes)")
    kwargs = {k: v for k, v in shapes.items() if k in accepted}
    return create(name, backbone, ways, **(kwargs | hparams))


def _import_all() -> None:
    import medmeta.algorithms  # noqa: F401  (the package imports every method module)
