"""EdgeRegressor: run an exported few-shot regressor with numpy and onnxruntime only.

The file (:func:`medmeta.export.regressor_to_onnx`) holds a bootstrap ensemble of adapted
regressors (MAML, first-order MAML, Meta-SGD, Reptile; Efron & Tibshirani 1993, ch. 6;
Lakshminarayanan et al. 2017) and computes, in the graph, for model inputs ``x [n, F]``:
the ensemble mean ``prediction [n]``, the central ``level`` interval ``lower``/``upper``
``[n]`` (``prediction ± z sqrt(member variance + noise_std²)``) and the members' spread
``member_std [n]``, all in the units of the target.

Raw inputs go through the :class:`~medmeta.edge.Preprocessing` stored in the file: table
rows (:class:`~medmeta.edge.table.TableRows`, encoded with the training table's categories
and scaling; a missing value is encoded, a column the model needs but the rows lack is an
error naming it) or vectors ``[n, F]`` (put in the model's feature order by name when their
column names are given). NaN or infinite model inputs are refused, naming the example.

Loading checks the metadata (:mod:`medmeta.edge.schema`), the graph's inputs and outputs
against it, and the SHA-256 of the weights (:mod:`medmeta.edge.weights`): a file edited
after export is refused.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.edge.preprocess import Preprocessing, model_inputs
from medmeta.edge.results import RegressionPrediction
from medmeta.edge.runtime import _check_io, check_threads, open_onnx
from medmeta.edge.schema import REGRESSION_OUTPUTS, REGRESSION_ROLES, EdgeModelError
from medmeta.edge.weights import check_weights

__all__ = ["EdgeRegressor"]


class EdgeRegressor:
    """A medmeta regression export on a device (see the module docstring).

    Args:
        path: the ``.onnx`` file written by ``medmeta export`` for a regression model.
        threads: intra-op threads of onnxruntime (``None``: its default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        EdgeModelError: the file is corrupt, not a medmeta export, not a regressor (a
            classifier loads with :class:`~medmeta.edge.EdgeModel`), its weights differ from
            the hash in its metadata, or its graph does not match its metadata.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        check_threads(threads)
        self.path = Path(path)
        source = str(self.path)
        data, self._session, self._meta = open_onnx(self.path, "path", threads)
        role = self._meta["role"]
        if role not in REGRESSION_ROLES:
            loader = "EdgeSegmenter" if self._meta.get("task") == "segmentation" else "EdgeModel"
            raise EdgeModelError(
                f"{source} is a {role}, not a regressor; load it with medmeta.edge.{loader}"
            )
        check_weights(data, self._meta, source)
        _check_io(self._session, self._meta, source)
        try:
            self.preprocessing = Preprocessing.from_dict(self._meta["preprocessing"])
        except (TypeError, ValueError) as err:
            raise EdgeModelError(f"{source}: invalid preprocessing metadata ({err})") from err
        if tuple(self.preprocessing.input_shape) != tuple(self._meta["input_shape"]):
            raise EdgeModelError(f"{source}: preprocessing input_shape differs from input_shape")

    # -- properties ----------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the file's metadata (see :mod:`medmeta.edge.schema`)."""
        return copy.deepcopy(self._meta)

    @property
    def role(self) -> str:
        return "regressor"

    @property
    def target(self) -> str:
        """The name of the predicted quantity (the training table's column)."""
        return str(self._meta["target"]["name"])

    @property
    def level(self) -> float:
        """The interval's nominal coverage."""
        return float(self._meta["interval"]["level"])

    @property
    def members(self) -> int:
        return int(self._meta["interval"]["members"])

    @property
    def noise_std(self) -> float:
        """The noise standard deviation (out-of-bag residuals of the support set)."""
        return float(self._meta["interval"]["noise_std"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._meta["input_shape"])

    # -- inference -----------------------------------------------------------------------
    def preprocess(
        self,
        raw: Any,
        *,
        preprocessed: bool = False,
        features: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Model inputs ``[n, *input_shape]`` float32 from raw inputs, or checked as given.

        Args:
            raw: table rows (a table model), vectors ``[n, F']``, or (``preprocessed=True``)
                float32 model inputs ``[n, F]``.
            features: the names of ``raw``'s columns (vectors): they are put in the model's
                order by name (:meth:`Preprocessing.feature_order`; extra columns dropped).

        Raises:
            TypeError: wrong input type or dtype.
            ValueError: wrong shape, an empty batch, NaN or infinite values, a column or
                feature the model needs that the inputs lack (named).
        """
        if features is not None:
            if preprocessed or self.preprocessing.kind != "vector":
                raise ValueError("features: names apply to raw vectors of a vector model")
            raw = np.asarray(raw)[:, self.preprocessing.feature_order(features)]
        if not preprocessed:
            return self.preprocessing(raw)
        return model_inputs(raw, self.input_shape, single=False)

    def predict(
        self,
        raw: Any,
        *,
        preprocessed: bool = False,
        features: Sequence[str] | None = None,
    ) -> RegressionPrediction:
        """Predictions with their interval for ``n`` inputs (see :class:`RegressionPrediction`
        and :meth:`preprocess` for the arguments)."""
        x = self.preprocess(raw, preprocessed=preprocessed, features=features)
        values = self._session.run(list(REGRESSION_OUTPUTS), {self._meta["input_name"]: x})
        out = dict(zip(REGRESSION_OUTPUTS, values, strict=True))
        return RegressionPrediction(
            prediction=out["prediction"], lower=out["lower"], upper=out["upper"],
            member_std=out["member_std"], level=self.level, target=self.target,
        )  # fmt: skip

    @staticmethod
    def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The validated medmeta metadata of an exported file (any role)."""
        return open_onnx(Path(path), "path", 1)[2]

    def __repr__(self) -> str:
        return (
            f"EdgeRegressor({self.path.name!r}, target={self.target!r}, members={self.members}, "
            f"level={self.level:g}, input_shape={list(self.input_shape)})"
        )
