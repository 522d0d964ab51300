"""The common interface of every meta-learning method in medmeta.

A learner is an ``nn.Module`` whose parameters are the meta-parameters. It

* meta-trains on a batch of episodes: :meth:`MetaLearner.meta_loss` (a differentiable
  loss) and :meth:`MetaLearner.meta_train_step` (one optimiser step; methods whose update
  is not a gradient of a loss, like Reptile, override it);
* predicts query logits for a batch of episodes from their support sets:
  :meth:`MetaLearner.predict` -> ``[B, Q, N]``;
* adapts to one support set and returns a stand-alone classifier for deployment and
  export: :meth:`MetaLearner.adapt` -> :class:`Adapted`.

Methods listing ``"regression"`` in :attr:`MetaLearner.tasks` (the MAML family) also learn
few-shot regression when built with ``task="regression"``: float targets, predictions
``[B, Q]`` and an :class:`~medmeta.algorithms.regressor.AdaptedRegressor` (see
:mod:`medmeta.algorithms.regressor`).

Learners are created by name with :func:`create` and rebuilt from checkpoints with
:meth:`MetaLearner.spec` (plain JSON-like data, safe to load with ``weights_only=True``).
"""

from __future__ import annotations

import inspect
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
    #: What the method learns: ``"classification"`` (episodes of :class:`EpisodeBatch`,
    #: logits ``[B, Q, N]``), ``"segmentation"`` (see :mod:`medmeta.algorithms.segmenter`)
    #: or ``"regression"`` (float targets, predictions ``[B, Q]``; see
    #: :mod:`medmeta.algorithms.regressor`). A method supporting several tasks takes a
    #: ``task`` hyper-parameter and sets this on the instance.
    task: str = "classification"
    #: Every task the method supports (:func:`available` lists it under each). Defaults to
    #: ``(task,)`` of the class that sets ``task``.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: True for methods with an N-way output layer (the MAML family, SNAIL): they classify
    #: up to ``ways`` classes (fewer by using the first n outputs); metric methods take
    #: any N from the episode.
    fixed_ways: ClassVar[bool] = False
    #: Hyper-parameters sized from the backbone's output, at least one of which the method
    #: needs (:func:`create` fills them in from ``input_shape``).
    shape_hparams: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "task" in cls.__dict__ and "tasks" not in cls.__dict__:
            cls.tasks = (cls.task,)

    def __init__(self, backbone: nn.Module, ways: int, **hparams: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.ways = ways
        self.hparams = dict(hparams)

    # -- episode size --------------------------------------------------------------------
    def task_ways(self, support_y: torch.Tensor) -> int:
        """N of the episodes with support labels ``support_y [..., S]`` in ``[0, N)``: one
        more than the largest label (a device sync on CUDA).

        Metric methods classify any N; a method with an N-way output layer
        (:attr:`fixed_ways`) refuses N above the ``ways`` it was built for, and for fewer
        ways uses its first N outputs (the absent classes' outputs are sliced off, so
        logits are always ``[..., N]``).
        """
        n = int(support_y.max()) + 1 if support_y.numel() else 0
        if n < 1:
            raise ValueError(f"{self.name}: the support set is empty or its labels are negative")
        self.check_ways(n)
        return n

    def check_ways(self, n: int) -> None:
        """Refuse ``n``-way episodes a fixed-width method cannot classify."""
        if self.fixed_ways and n > self.ways:
            raise ValueError(
                f"{self.name} was built for {self.ways}-way tasks (its output layer has "
                f"{self.ways} classes) and cannot classify {n} classes; use at most "
                f"{self.ways} classes or train a {n}-way model"
            )

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

    def generators(self) -> dict[str, torch.Generator]:
        """Every ``torch.Generator`` the learner or a submodule holds as an attribute, by
        dotted path (e.g. SNAIL's support shuffling). Their states are training state:
        :func:`~medmeta.train.meta_fit` saves and restores them for an exact resume."""
        return {
            f"{prefix}.{attr}" if prefix else attr: value
            for prefix, module in self.named_modules()
            for attr, value in vars(module).items()
            if isinstance(value, torch.Generator)
        }

    def generator_states(self) -> dict[str, torch.Tensor]:
        """The states of :meth:`generators` (``uint8`` tensors)."""
        return {name: g.get_state() for name, g in self.generators().items()}

    def load_generator_states(self, states: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`generator_states` returned; the names must match."""
        generators = self.generators()
        if set(states) != set(generators):
            raise ValueError(
                f"{self.name}: generator states for {sorted(states)}, the learner has "
                f"{sorted(generators)}"
            )
        for name, state in states.items():
            generators[name].set_state(state.cpu())


_REGISTRY: dict[str, type[MetaLearner]] = {}


def register(cls: type[MetaLearner]) -> type[MetaLearner]:
    """Class decorator adding a learner to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a name")
    _REGISTRY[cls.name] = cls
    return cls


TASKS = ("classification", "segmentation", "regression")


def available(task: str | None = None) -> list[str]:
    """Names of the registered learners, all or those supporting one ``task`` (see
    :data:`TASKS` and :attr:`MetaLearner.tasks`)."""
    _import_all()
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return sorted(n for n, cls in _REGISTRY.items() if task is None or task in cls.tasks)


def create(
    name: str,
    backbone: nn.Module,
    ways: int,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    **hparams: Any,
) -> MetaLearner:
    """A learner by name: ``create("protonet", Conv4(3), ways=5)``.

    Methods that size a layer from the backbone's output (the MAML family's head, Relation
    Networks' relation module, SNAIL's sequence model, the supervised baseline's head;
    see ``shape_hparams``) need the shape of one input, ``input_shape`` (no batch axis,
    e.g. ``(3, 28, 28)``): the backbone is run once on zeros to fill in their shape
    arguments (:func:`shape_arguments`). It may be passed to any method. ``num_classes``
    (the number of training classes) is needed by the supervised baseline. Explicit
    ``hparams`` win over what is filled in. ``task="regression"`` (with ``ways=1``) builds
    a regressor of a method that supports it (:func:`available`), e.g.
    ``create("maml", MLP(50, batch_norm=False), ways=1, task="regression",
    input_shape=(50,))``.
    """
    cls = _lookup(name)
    accepted = inspect.signature(cls).parameters
    if "task" in hparams:
        task = hparams["task"]
        if task not in cls.tasks:
            raise ValueError(
                f"{name} does not support task={task!r} (it supports {cls.tasks}); methods "
                f"for {task!r}: {', '.join(available(task)) if task in TASKS else 'none'}"
            )
        if "task" not in accepted:  # a single-task method: the task is implied
            hparams = {k: v for k, v in hparams.items() if k != "task"}
    if input_shape is not None:
        shapes = shape_arguments(backbone, input_shape, num_classes)
        hparams = {k: v for k, v in shapes.items() if k in accepted} | hparams
    elif num_classes is not None and "num_classes" in accepted:
        hparams = {"num_classes": num_classes} | hparams
    if cls.shape_hparams and not any(hparams.get(k) is not None for k in cls.shape_hparams):
        raise ValueError(
            f"{name} sizes its layers from the backbone's output: give the shape of one "
            f"input, e.g. create({name!r}, backbone, ways={ways}, input_shape=(3, 28, 28)) "
            f"(or pass {' or '.join(cls.shape_hparams)})"
        )
    if "num_classes" in accepted and accepted["num_classes"].default is inspect.Parameter.empty:
        if "num_classes" not in hparams:
            raise ValueError(
                f"{name} needs num_classes (the number of training classes), e.g. "
                f"create({name!r}, backbone, ways={ways}, input_shape=..., num_classes=10)"
            )
    return cls(backbone, ways, **hparams)


def _lookup(name: str) -> type[MetaLearner]:
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


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
    """:func:`create` with ``input_shape`` required (kept for existing callers)."""
    return create(name, backbone, ways, input_shape=input_shape, num_classes=num_classes, **hparams)


def _import_all() -> None:
    import medmeta.algorithms  # noqa: F401  (the package imports every method module)
