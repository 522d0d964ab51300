"""Reports of a run as HTML and Markdown with PNG figures and a JSON twin.

:func:`write_report` takes a :class:`ReportData` (title, summary lines, training history,
evaluations, embeddings of an adapted task, export and latency results, notes, versions)
and writes ``report.html``, ``report.md``, ``report.json`` and ``plots/*.png``. The 2-D
map of embeddings is a PCA (:func:`pca_map`).
"""

from medmeta.report.data import ReportData, ReportPaths, check_report_data
from medmeta.report.embedding import EmbeddingMap, pca_map
from medmeta.report.writer import report_dict, write_report

__all__ = [
    "EmbeddingMap",
    "ReportData",
    "ReportPaths",
    "check_report_data",
    "pca_map",
    "report_dict",
    "write_report",
]
