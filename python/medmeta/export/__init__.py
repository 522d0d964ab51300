"""medmeta.export: adapted models out of PyTorch, into self-contained ONNX files.

* :func:`to_onnx` -- the classifier form (calibrated probabilities, with distances and
  embeddings where the learner has an embedding space) and the enrolment form (embedding
  network + prototype head, so a device can enrol classes), with medmeta metadata.
* :mod:`medmeta.export.metadata` -- reading the metadata back, the weights SHA-256.
* :mod:`medmeta.export.quantize` -- int8 static quantization (``to_onnx(..., int8=True)``).
* :func:`regressor_to_onnx` -- an adapted few-shot regressor (a bootstrap ensemble) with its
  predictive interval computed in the graph (:mod:`medmeta.export.regression`).
* :func:`export_segmenter` -- few-shot segmenters (PANet, ALPNet, ADNet) as an encoder and a
  prototype head with on-device enrolment (:mod:`medmeta.export.segmentation`; ``to_onnx``
  hands segmenters to it).

The files run without torch in :mod:`medmeta.edge`.
"""

from __future__ import annotations

from medmeta.export.metadata import read_metadata, verify_weights, weights_sha256
from medmeta.export.onnx import ExportError, ExportResult, export_graph, to_onnx
from medmeta.export.regression import RegressorExport, regressor_to_onnx
from medmeta.export.segmentation import SegmenterExport, export_segmenter, pooling_rule

__all__ = [
    "ExportError",
    "ExportResult",
    "RegressorExport",
    "SegmenterExport",
    "export_graph",
    "export_segmenter",
    "pooling_rule",
    "read_metadata",
    "regressor_to_onnx",
    "to_onnx",
    "verify_weights",
    "weights_sha256",
]
