"""medmeta.edge: run exported models on a device with numpy and onnxruntime only.

Importing this package never imports torch (a test runs it where ``import torch`` fails).

* :class:`EdgeModel` -- load a medmeta ONNX file, preprocess raw inputs, predict calibrated
  probabilities with out-of-distribution flags, enrol classes on the device, explain
  predictions by their nearest support examples, save/restore the enrolment.
* :class:`EdgeRegressor` -- load an exported few-shot regressor and predict a number with
  its predictive interval (:class:`RegressionPrediction`) from table rows or vectors.
* :class:`EdgeSegmenter` -- load a few-shot segmenter (encoder + prototype head), enrol
  classes from support images with label maps on the device, predict label maps.
* :class:`Preprocessing` -- the raw-input -> model-input spec shared with training.
* :func:`read_metadata` -- the metadata of an exported file.

Example::

    from medmeta.edge import EdgeModel

    model = EdgeModel("blood.embed.onnx")
    model.enrol(support_images, ["basophil"] * 5 + ["eosinophil"] * 5)   # uint8 [10, 28, 28, 3]
    pred = model.predict(images)               # labels, names, probabilities, ood flags
    why = model.explain(images[:1], k=3)       # nearest support examples and distances
    model.save("device-enrolment.npz")
"""

from __future__ import annotations

import os
from typing import Any

from medmeta.edge.enrol import Enrolment
from medmeta.edge.kernels import NativeCoreError
from medmeta.edge.preprocess import Preprocessing
from medmeta.edge.regressor import EdgeRegressor
from medmeta.edge.results import Explanation, Neighbour, Prediction, RegressionPrediction
from medmeta.edge.runtime import EdgeModel
from medmeta.edge.schema import EdgeError, EdgeModelError
from medmeta.edge.segmenter import EdgeSegmenter, PoolingRule, SegmentationEnrolment

__all__ = [
    "EdgeError",
    "EdgeModel",
    "EdgeModelError",
    "EdgeRegressor",
    "EdgeSegmenter",
    "Enrolment",
    "Explanation",
    "NativeCoreError",
    "Neighbour",
    "PoolingRule",
    "Prediction",
    "Preprocessing",
    "RegressionPrediction",
    "SegmentationEnrolment",
    "read_metadata",
]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated medmeta metadata of an exported ONNX file (see :mod:`.schema`)."""
    return EdgeModel.read_metadata(path)
