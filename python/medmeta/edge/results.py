"""What the edge runtime returns: predictions with OOD flags, explanations, and regression
predictions with their intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Explanation", "Neighbour", "Prediction", "RegressionPrediction"]


@dataclass(frozen=True)
class Prediction:
    """Predictions for ``n`` inputs over ``N`` classes.

    Attributes:
        labels: ``[n]`` int64 index of the most probable class.
        class_names: ``[n]`` names of those classes (``None`` where ``ood`` is True: an
            input far from every prototype gets no forced label).
        probabilities: ``[n, N]`` float32 calibrated class probabilities.
        classes: the ``N`` class names, in column order of ``probabilities``.
        ood: ``[n]`` bool, True where the input is out of distribution; ``None`` when the
            model has no distance output (OOD detection unavailable, see ``ood_threshold``).
        distance: ``[n]`` float32 distance to the nearest prototype (the OOD score) or None.
        ood_threshold: the distance threshold used (None: not available).
    """

    labels: np.ndarray
    class_names: list[str | None]
    probabilities: np.ndarray
    classes: tuple[str, ...]
    ood: np.ndarray | None
    distance: np.ndarray | None
    ood_threshold: float | None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Neighbour:
    """One enrolled support example near an input."""

    index: int  # position in the enrolled support set (enrolment order)
    label: int
    class_name: str
    distance: float


@dataclass(frozen=True)
class Explanation:
    """Why one input got its prediction: its nearest support examples and prototypes.

    Attributes:
        label, class_name: the prediction (as :meth:`EdgeModel.predict`; name None if OOD).
        probability: the predicted class's probability.
        neighbours: the ``k`` nearest enrolled support examples, nearest first.
        prototype_distances: ``{class name: distance}`` to every prototype.
        ood: whether the input was flagged out of distribution (None: unavailable).
    """

    label: int
    class_name: str | None
    probability: float
    neighbours: list[Neighbour]
    prototype_distances: dict[str, float]
    ood: bool | None


@dataclass(frozen=True)
class RegressionPrediction:
    """Predictions of a regressor (:class:`~medmeta.edge.EdgeRegressor`) for ``n`` inputs,
    in the units of the target.

    Attributes:
        prediction: ``[n]`` float32, the ensemble's mean.
        lower, upper: ``[n]`` float32 bounds of the central ``level`` predictive interval
            (``prediction ± z sd``; ``sd²`` = the members' variance + the noise variance).
        member_std: ``[n]`` float32 spread of the ensemble members (model uncertainty).
        level: the interval's nominal coverage (e.g. 0.9).
        target: the name of the predicted quantity (the training table's column).
    """

    prediction: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    member_std: np.ndarray
    level: float
    target: str

    def __len__(self) -> int:
        return len(self.prediction)
