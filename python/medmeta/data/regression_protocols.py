"""Two few-shot regression protocols on the embedded real data.

**Expression** (:func:`expression_tasks`, ``pbmc68k_celltypes``): predict a held-out gene's
expression in a new cell type from a fixed panel of other genes, given K labelled cells.
A task is (cell type, target gene); x = the input genes' log-normalised expression of
cells of that type, y = the target gene's. Meta-training uses four cell types (T cells and
dendritic cells) and 60% of the target genes; meta-testing the other three cell types
(monocytes, B cells, NK cells) and the other 40% of the target genes, so both the
population and the predicted gene are new at test time.

**Thyroid labs** (:func:`thyroid_lab_tasks`, ``thyroid``): predict one thyroid lab value
(log TSH, T3, TT4 or T4U) of a patient from the other labs, age, sex and the clinical flags,
at a new referral source (clinic), given K labelled patients of that clinic. A task is
(clinic, lab). Meta-training uses the three large clinics, meta-testing the two small ones.
The lab to predict is blanked in the inputs (its ``__missing`` indicator is set), FTI is
left out (it is TT4 / T4U, so it would give two of the targets away) and so is TBG (96%
missing). Grouping by diagnosis instead (``group_by="diagnosis"``) is available but is a
poor few-shot problem: the diagnosis groups are defined from these lab values, which
truncates the relations between them within a group (see ``docs/few_shot_regression.md``).

Inputs are standardised with statistics of the meta-training rows only (no test row enters);
targets are left in their units (the learners standardise them per episode with the support
set's statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .formats.table import TableEncoder
from .regression_tasks import RegressionTask, RegressionTasks

__all__ = [
    "EXPRESSION_TEST_TYPES",
    "EXPRESSION_TRAIN_TYPES",
    "THYROID_LABS",
    "THYROID_TEST_CLINICS",
    "THYROID_TRAIN_CLINICS",
    "RegressionSplit",
    "expression_tasks",
    "thyroid_lab_tasks",
]

#: Meta-training cell types of the expression protocol (each has >= 43 cells).
EXPRESSION_TRAIN_TYPES = (
    "CD4+/CD25 T Reg",
    "CD8+ Cytotoxic T",
    "CD8+/CD45RA+ Naive Cytotoxic",
    "Dendritic",
)
#: Meta-test cell types: other lineages, each with >= 31 cells (K = 20 plus 10 queries).
EXPRESSION_TEST_TYPES = ("CD14+ Monocyte", "CD19+ B", "CD56+ NK")

#: The thyroid labs, predicted (log scale) one at a time from the others.
THYROID_LABS = ("TSH", "T3", "TT4", "T4U")
#: Meta-training and meta-test referral sources (clinics) of the thyroid protocol; "WEST"
#: (3 patients) is too small for an episode.
THYROID_TRAIN_CLINICS = ("other", "SVI", "SVHC")
THYROID_TEST_CLINICS = ("STMW", "SVHD")


@dataclass(frozen=True)
class RegressionSplit:
    """Meta-training and meta-test tasks of a protocol and how they were made."""

    train: RegressionTasks
    test: RegressionTasks
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- expression


def _gene_order(x_train: np.ndarray) -> np.ndarray:
    """Genes from most to least often detected in the meta-training cells (ties: higher
    mean expression first)."""
    detected = (x_train > 0).mean(0)
    return np.lexsort((-x_train.mean(0), -detected))


def expression_tasks(
    dataset: Any = None,
    *,
    inputs: int = 50,
    targets: int = 100,
    test_fraction: float = 0.4,
    seed: int = 0,
    train_types: Sequence[str] = EXPRESSION_TRAIN_TYPES,
    test_types: Sequence[str] = EXPRESSION_TEST_TYPES,
) -> RegressionSplit:
    """The expression protocol (see the module docstring).

    Genes are ranked by how often they are detected in the meta-training cells; the first
    ``inputs`` form the fixed input panel, the next ``targets`` are the target genes (all
    detected in most cells, so their expression is a continuous quantity, not mostly zeros),
    split at random (``seed``) into meta-train and meta-test targets (``test_fraction``).
    Inputs are standardised with the meta-training cells' mean and standard deviation.

    Args:
        dataset: ``load("pbmc68k_celltypes")`` (default) or a dataset like it (``x
            [cells, genes]``, ``labels``, ``class_names``, ``meta["gene_names"]``).
    """
    from .registry import load

    ds = load("pbmc68k_celltypes") if dataset is None else dataset
    x = np.asarray(ds.x, dtype=np.float32)
    labels = np.asarray(ds.labels)
    names = list(ds.class_names)
    genes = [str(g) for g in ds.meta.get("gene_names", [f"gene_{i}" for i in range(x.shape[1])])]
    for t in (*train_types, *test_types):
        if t not in names:
            raise DataError(f"unknown cell type {t!r}; the types are {names}", "cell types")
    if set(train_types) & set(test_types):
        raise DataError("meta-train and meta-test cell types overlap", "cell types")
    if not 0 < test_fraction < 1 or inputs < 1 or targets < 2 or inputs + targets > x.shape[1]:
        raise DataError(
            f"need 0 < test_fraction < 1, inputs >= 1, targets >= 2 and inputs + targets <= "
            f"{x.shape[1]} genes; got {test_fraction}, {inputs}, {targets}",
            "expression_tasks",
        )
    train_rows = np.isin(labels, [names.index(t) for t in train_types])
    order = _gene_order(x[train_rows])
    panel, target_genes = order[:inputs], order[inputs : inputs + targets]
    shuffled = np.random.default_rng(seed).permutation(target_genes)
    n_test = max(1, round(test_fraction * targets))
    test_genes, train_genes = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
    mean = x[train_rows][:, panel].mean(0)
    std = x[train_rows][:, panel].std(0)
    features = (x[:, panel] - mean) / np.where(std > 0, std, 1.0)

    def make(types: Sequence[str], gene_ids: Sequence[int], part: str) -> RegressionTasks:
        tasks = []
        for t in types:
            rows = labels == names.index(t)
            xt = torch.from_numpy(features[rows])
            for g in gene_ids:
                tasks.append(RegressionTask(f"{t} / {genes[g]}", xt, torch.from_numpy(x[rows, g]),
                                            group=t, target=genes[g]))  # fmt: skip
        feature_names = [genes[g] for g in panel]
        return RegressionTasks(tasks, feature_names=feature_names, name=f"pbmc68k {part}")

    info = {
        "dataset": "pbmc68k_celltypes",
        "input_genes": [genes[g] for g in panel],
        "train_target_genes": [genes[g] for g in train_genes],
        "test_target_genes": [genes[g] for g in test_genes],
        "train_types": list(train_types),
        "test_types": list(test_types),
        "seed": seed,
    }
    return RegressionSplit(make(train_types, train_genes, "meta-train"),
                           make(test_types, test_genes, "meta-test"), info)  # fmt: skip


# ------------------------------------------------------------------------ thyroid


def _log_labs(frame: Any, labs: Sequence[str]) -> Any:
    """``frame`` with the lab columns on the log scale (they are positive and skewed)."""
    out = frame.copy()
    for lab in labs:
        values = out[lab].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.nanmin(values) <= 0:
            raise DataError(f"lab column {lab!r} holds values <= 0; cannot take logs", lab)
        out[lab] = np.log(values)
    return out


def _thyroid_groups(table: Any, group_by: str) -> np.ndarray:
    if group_by == "diagnosis":
        return np.asarray(table.class_names)[table.y]
    if group_by not in table.frame.columns:
        raise DataError(
            f"group_by must be 'diagnosis' or a column, got {group_by!r}; columns are "
            f"{list(table.frame.columns)}",
            "group_by",
        )
    return table.frame[group_by].astype(str).to_numpy()


def thyroid_lab_tasks(
    table: Any = None,
    *,
    group_by: str = "referral_source",
    train_groups: Sequence[str] = THYROID_TRAIN_CLINICS,
    test_groups: Sequence[str] = THYROID_TEST_CLINICS,
    labs: Sequence[str] = THYROID_LABS,
) -> RegressionSplit:
    """The thyroid protocol (see the module docstring).

    A task (group, lab) holds the group's patients whose lab value is recorded; its target is
    the log lab value and its inputs every other feature column encoded by a
    :class:`~medmeta.data.formats.table.TableEncoder` fitted on the meta-training groups'
    rows (continuous columns standardised, categories one-hot) followed by the 0/1 flag
    columns as they are, with the target lab blanked (so its ``__missing`` indicator says
    which lab is asked for). Patients without the lab are not in that task.

    Args:
        table: ``load("thyroid")`` (default) or a :class:`ClinicalTable` with the lab columns.
        group_by: ``"referral_source"`` (clinics, default) or ``"diagnosis"`` (the table's
            target classes); then pass the groups' names in ``train_groups``/``test_groups``.
    """
    from .registry import load

    table = load("thyroid") if table is None else table
    frame = table.frame
    missing = [c for c in labs if c not in frame.columns]
    if missing:
        raise DataError(f"lab columns {missing} not in the table", "labs")
    groups = _thyroid_groups(table, group_by)
    for g in (*train_groups, *test_groups):
        if g not in set(groups):
            raise DataError(f"no rows in group {g!r} of {group_by!r}", "groups")
    if set(train_groups) & set(test_groups):
        raise DataError("meta-train and meta-test groups overlap", "groups")
    dropped = {"FTI", "TBG", group_by}
    numeric = [c for c in table.numeric_columns if c not in dropped]
    flags = [c for c in numeric if set(frame[c].dropna().unique()) <= {0, 1}]
    continuous = [c for c in numeric if c not in flags]
    categorical = [c for c in table.categorical_columns if c not in dropped]
    frame = _log_labs(frame[numeric + categorical], labs)
    encoder = TableEncoder(continuous, categorical)
    encoder.fit(frame[np.isin(groups, list(train_groups))])

    def encode(rows: Any) -> torch.Tensor:
        """Continuous and categorical columns by the encoder, then the 0/1 flags as they
        are (standardised, a rare flag would sit tens of deviations from 0), missing = 0."""
        raw = rows[flags].to_numpy(dtype=np.float32, na_value=0.0)
        return torch.from_numpy(np.concatenate([encoder.transform(rows), raw], axis=1))

    def make(group_names: Sequence[str], part: str) -> RegressionTasks:
        tasks = []
        for g in group_names:
            for lab in labs:
                rows = np.flatnonzero((groups == g) & frame[lab].notna().to_numpy())
                blanked = frame.iloc[rows].copy()
                y = blanked[lab].to_numpy(dtype=np.float32)
                blanked[lab] = np.nan
                x = encode(blanked)
                tasks.append(RegressionTask(f"{g} / log {lab}", x, torch.from_numpy(y),
                                            group=g, target=f"log {lab}"))  # fmt: skip
        return RegressionTasks(tasks, feature_names=encoder.feature_names + flags,
                               name=f"thyroid {part}")  # fmt: skip

    info = {
        "dataset": "thyroid",
        "group_by": group_by,
        "train_groups": list(train_groups),
        "test_groups": list(test_groups),
        "labs": list(labs),
        "dropped_columns": sorted(dropped),
        "features": encoder.feature_names + flags,
    }
    return RegressionSplit(make(train_groups, "meta-train"), make(test_groups, "meta-test"), info)
