"""The data families of ``medmeta demo --family``: one declarative :class:`DemoFamily` each
(embedded data set, class split, episode sizes, backbone, run sizes, the words the report
uses), and the split of a family's data into training, validation and novel examples.

The splits follow the protocols of ``python -m benchmarks protocols`` and ``docs/``:

* ``images`` -- ``pbc_blood`` (Acevedo et al. 2020): meta-train on 5 blood-cell types,
  validate on 15% held-out images of them, test 3-way on monocyte, neutrophil, platelet;
* ``signals`` -- ``pig_cvp`` (Guillame-Bert & Dubrawski 2017, UCR archive): meta-train on
  pigs 1-34, validate on pigs 35-40, test 5-way on pigs 41-52 (the benchmark's held-out
  animals); the central 1,000 samples, each record standardised; the 1-D CNN;
* ``tables`` -- ``thyroid`` (Quinlan 1986, UCI): meta-train on 5 diagnosis groups (the
  table encoding fitted on their training rows only), test 3-way on hyperthyroid,
  replacement therapy and antithyroid treatment (the benchmark's split); MLP;
* ``expression`` -- ``pbmc68k_celltypes`` (Zheng et al. 2017): meta-train on 5 T/NK cell
  types, test 3-way on monocytes, B cells, CD34+ progenitors and dendritic cells; MLP.

and one few-shot regression family (:class:`RegressionFamily`, the thyroid-lab protocol of
``docs/few_shot_regression.md``, "From the command line"):

* ``regression`` -- ``thyroid``: predict a patient's T3 at a clinic (``referral_source``)
  from the other columns, given K labelled patients of that clinic; meta-train on the
  clinics other, SVI and SVHC, validate on STMW, test on SVHD; MLP without batch norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmeta.data import DataError
from medmeta.edge.cli.errors import UsageError

__all__ = [
    "FAMILIES",
    "REGRESSION_FAMILIES",
    "DemoFamily",
    "DemoSettings",
    "RegressionFamily",
    "class_ids",
    "family_names",
    "get_family",
    "split_family",
]

#: Share of each training class's examples held out for validation (when the family has no
#: validation classes); at least one episode's worth, and only from classes that keep one.
VAL_SHARE = 0.15


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a run: ``width`` (the backbone's ``--width``), meta-training ``steps`` of
    ``meta_batch`` episodes with ``queries`` queries per class, validation every
    ``val_every`` steps on ``val_episodes`` episodes, ``test_episodes`` per evaluation and
    ``latency_runs`` timed calls."""

    width: str
    steps: int
    meta_batch: int
    queries: int
    val_every: int
    val_episodes: int
    test_episodes: int
    latency_runs: int

    def override(self, steps: int | None, episodes: int | None) -> DemoSettings:
        """These sizes with ``--steps`` / ``--episodes`` applied (validation at most every
        ``steps``)."""
        return DemoSettings(
            self.width, steps or self.steps, self.meta_batch, self.queries,
            min(self.val_every, steps or self.steps), self.val_episodes,
            episodes or self.test_episodes, self.latency_runs,
        )  # fmt: skip


@dataclass(frozen=True)
class DemoFamily:
    """One ``--family`` of the demo.

    Attributes:
        name: the ``--family`` value.
        dataset: the embedded data set (``medmeta datasets``).
        description: one line: what the data is, its citation and license.
        subject, novel_title: the report title's subject and what is new, e.g. ``"blood
            cells"`` and ``"novel cell types"``.
        train_classes, novel_classes: class names for meta-training and testing.
        val_classes: validation classes (disjoint from both); empty: :data:`VAL_SHARE` of
            the training classes' examples are held out instead.
        adapt_classes: the classes of the new task the model is adapted to (default: the
            first ``ways`` novel classes).
        ways, shots: the episodes (training and adaptation at ``shots``; evaluation at 1
            and ``shots``).
        eval_queries: queries per class of a test episode.
        backbone: ``conv4``, ``conv1d`` or ``mlp``; ``backbone_text`` describes it
            (``{width}`` is filled in).
        signal_length: signals: the central window the model reads.
        int8: whether the int8 export applies; ``int8_note`` says why not.
        unit, class_noun, novel_noun, task_noun: words of the messages and the report
            (``"images"``, ``"blood-cell types"``, ``"types"``, ``"cell types"``).
        validation_source: where validation examples come from, in words.
        input_text: the model's input in words (latency note).
        caveats: notes on the data for the report.
        full, quick: the run sizes.
    """

    name: str
    dataset: str
    description: str
    subject: str
    novel_title: str
    train_classes: tuple[str, ...]
    novel_classes: tuple[str, ...]
    ways: int
    backbone: str
    backbone_text: str
    unit: str
    class_noun: str
    novel_noun: str
    task_noun: str
    validation_source: str
    input_text: str
    full: DemoSettings
    quick: DemoSettings
    val_classes: tuple[str, ...] = ()
    adapt_classes: tuple[str, ...] = ()
    shots: int = 5
    eval_queries: int = 15
    signal_length: int | None = None
    int8: bool = True
    int8_note: str = ""
    caveats: tuple[str, ...] = field(default_factory=tuple)

    @property
    def task_classes(self) -> tuple[str, ...]:
        """The classes of the adapted task."""
        return self.adapt_classes or self.novel_classes[: self.ways]

    def settings(self, quick: bool, steps: int | None, episodes: int | None) -> DemoSettings:
        return (self.quick if quick else self.full).override(steps, episodes)


FAMILIES: dict[str, DemoFamily] = {
    "images": DemoFamily(
        name="images", dataset="pbc_blood",
        description="pbc_blood: blood-cell microscopy (Acevedo et al. 2020, CC BY 4.0), 28x28 RGB",
        subject="blood cells", novel_title="novel cell types",
        train_classes=("basophil", "eosinophil", "erythroblast", "immature_granulocyte",
                       "lymphocyte"),
        novel_classes=("monocyte", "neutrophil", "platelet"), ways=3, backbone="conv4",
        backbone_text="Conv4 backbone ({width} channels)", unit="images",
        class_noun="blood-cell types", novel_noun="types", task_noun="cell types",
        validation_source="held-out images of the training cell types", input_text="28x28",
        full=DemoSettings("64", 300, 4, 15, 100, 100, 600, 200),
        quick=DemoSettings("32", 30, 2, 5, 30, 20, 40, 20),
    ),
    "signals": DemoFamily(
        name="signals", dataset="pig_cvp",
        description="pig_cvp: central venous pressure of 52 pigs, 6 recordings of 2,000 samples "
        "each (Guillame-Bert & Dubrawski 2017; UCR archive, Dau et al. 2019; no formal "
        "licence, citation requested)",
        subject="pig central venous pressure", novel_title="new animals",
        train_classes=tuple(f"pig_{i}" for i in range(1, 35)),
        val_classes=tuple(f"pig_{i}" for i in range(35, 41)),
        novel_classes=tuple(f"pig_{i}" for i in range(41, 53)), ways=5, eval_queries=1,
        backbone="conv1d", backbone_text="1-D CNN backbone (conv1d, channels {width})",
        signal_length=1000, unit="recordings", class_noun="animals", novel_noun="animals", task_noun="animals",
        validation_source="recordings of 6 validation animals (pigs 35-40)",
        input_text="1x1000-sample",
        full=DemoSettings("32,64,64,64", 300, 4, 1, 100, 100, 600, 200),
        quick=DemoSettings("16,32", 30, 2, 1, 30, 20, 40, 20),
        caveats=("Each animal has only 6 recordings: a 5-shot episode leaves 1 query per "
                 "class, and the new task is measured on 1 held-out recording per animal.",),
    ),
    "tables": DemoFamily(
        name="tables", dataset="thyroid",
        description="thyroid: UCI thyroid disease, 9,172 patients x 23 clinical columns "
        "(Quinlan 1986, UCI Machine Learning Repository, CC BY 4.0)",
        subject="thyroid clinical table", novel_title="new diagnoses",
        train_classes=("negative", "hypothyroid", "non_thyroidal_illness", "binding_protein",
                       "miscellaneous"),
        novel_classes=("hyperthyroid", "replacement_therapy", "antithyroid_treatment"), ways=3,
        eval_queries=10, backbone="mlp", backbone_text="MLP backbone (hidden layers {width})",
        unit="rows", class_noun="diagnosis groups", novel_noun="diagnoses",
        task_noun="diagnosis groups",
        validation_source="held-out rows of the training diagnoses",
        input_text="encoded table-row",
        int8=False,
        int8_note="its activations, calibrated on the 15 support rows, do not span the "
        "heavy-tailed lab values of other rows (probabilities moved by up to 0.6 in trial "
        "runs), and a two-layer MLP over a few dozen encoded columns gains no speed from it.",
        full=DemoSettings("64,32", 300, 4, 10, 100, 100, 600, 200),
        quick=DemoSettings("64,32", 30, 2, 10, 30, 20, 40, 20),
        caveats=("The table encoding (scaling, categories, missing-value indicators) is "
                 "fitted on the training rows of the training diagnoses only and travels "
                 "in the ONNX metadata.",
                 "TBG is 96% missing, and the treatment flags partly reveal some diagnosis "
                 "groups (e.g. antithyroid treatment)."),
    ),
    "expression": DemoFamily(
        name="expression", dataset="pbmc68k_celltypes",
        description="pbmc68k_celltypes: 700 blood mononuclear cells x 765 genes, "
        "log-normalised 10x single-cell RNA-seq (Zheng et al. 2017; scanpy copy BSD-3, "
        "10x data CC BY 4.0, unverified)",
        subject="single-cell gene expression", novel_title="new cell types",
        train_classes=("CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD8+ Cytotoxic T",
                       "CD8+/CD45RA+ Naive Cytotoxic", "CD56+ NK"),
        novel_classes=("CD14+ Monocyte", "CD19+ B", "CD34+", "Dendritic"), ways=3,
        eval_queries=5, backbone="mlp", backbone_text="MLP backbone (hidden layers {width})",
        unit="cells", class_noun="T/NK cell types", novel_noun="cell types",
        task_noun="cell types",
        validation_source="held-out cells of the training cell types",
        input_text="765-gene",
        full=DemoSettings("256,128", 300, 4, 5, 100, 100, 600, 200),
        quick=DemoSettings("256,128", 30, 2, 5, 30, 20, 40, 20),
        caveats=("The cell-type labels are noisy (assigned by correlation with bulk "
                 "profiles); the 8 naive CD4+ T cells are too few for an episode and are "
                 "not used.",),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RegressionFamily:
    """A few-shot regression ``--family``: a numeric column of an embedded table, each group
    of rows (a clinic) one task; meta-trained on some groups, validated on others, tested and
    adapted on one group that is neither.

    Attributes:
        name, dataset, description, subject: as for :class:`DemoFamily`.
        target: the column to predict; ``target_text`` says what it is.
        group_by: the column whose values are the tasks.
        train_groups, val_groups: the groups of meta-training and of validation.
        test_group: the new task: evaluated, then adapted to (never trained or validated on).
        shots: support sizes of the evaluations; the last is also the training episodes'
            and the adapted task's.
        eval_queries: query rows of a test episode.
        members, level: the bootstrap ensemble's size and its interval's nominal coverage.
        algorithm: the default method (``--algorithm`` any regression method).
        input_text: the model's input in words (latency note); the report lists the
            input columns from the model's encoding.
        unit, group_noun: words of the messages and the report (``"patients"``,
            ``"clinics"``).
        caveats: notes on the data for the report.
        full, quick: the run sizes (``queries`` are the training episodes' query rows).
    """

    name: str
    dataset: str
    description: str
    subject: str
    target: str
    target_text: str
    group_by: str
    train_groups: tuple[str, ...]
    val_groups: tuple[str, ...]
    test_group: str
    input_text: str
    unit: str
    group_noun: str
    full: DemoSettings
    quick: DemoSettings
    shots: tuple[int, ...] = (5, 10)
    eval_queries: int = 10
    members: int = 10
    level: float = 0.9
    algorithm: str = "maml"
    backbone_text: str = "MLP without batch norm (hidden layers {width})"
    caveats: tuple[str, ...] = field(default_factory=tuple)

    @property
    def adapt_shots(self) -> int:
        """Support rows of the training episodes and of the adapted task."""
        return self.shots[-1]

    def settings(self, quick: bool, steps: int | None, episodes: int | None) -> DemoSettings:
        return (self.quick if quick else self.full).override(steps, episodes)

    def line(self) -> str:
        """One line of ``medmeta demo --help``: the data and the protocol."""
        return (f"{self.dataset}: {self.target} per clinic ({self.group_by}), "
                f"{len(self.train_groups)} training {self.group_noun}, {'/'.join(map(str, self.shots))}"
                f"-shot on the new {self.test_group}, mlp backbone")  # fmt: skip


REGRESSION_FAMILIES: dict[str, RegressionFamily] = {
    "regression": RegressionFamily(
        name="regression", dataset="thyroid",
        description="thyroid: UCI thyroid disease, 9,172 patients x 23 clinical columns "
        "(Quinlan 1986, UCI Machine Learning Repository, CC BY 4.0)",
        subject="thyroid lab values", target="T3",
        target_text="serum triiodothyronine (T3, the table's units)",
        group_by="referral_source", train_groups=("other", "SVI", "SVHC"),
        val_groups=("STMW",), test_group="SVHD",
        input_text="encoded table-row",
        unit="patients", group_noun="clinics",
        full=DemoSettings("64,64", 600, 4, 10, 200, 100, 600, 200),
        quick=DemoSettings("64,64", 40, 2, 10, 20, 20, 40, 20),
        caveats=(
            "T3 is the target because it is measured on its own: FTI is TT4 / T4U (to "
            "rounding in this table), and TT4, T4U and FTI are all inputs, so TT4 or T4U as "
            "the target would be given away (T4U = TT4 / FTI); TSH spans orders of magnitude "
            "and would need its logarithm. FTI stays an input: it tells nothing about T3 that "
            "TT4 and T4U do not.",
            "TBG is 96% missing; its indicator is an input like the other labs'.",
        ),
    ),
}  # fmt: skip


def family_names() -> list[str]:
    """Every ``--family`` value: the classification families, then the regression ones."""
    return [*FAMILIES, *REGRESSION_FAMILIES]


def get_family(name: str) -> DemoFamily | RegressionFamily:
    """The family called ``name``; an unknown name is a usage error listing the families."""
    if name in FAMILIES:
        return FAMILIES[name]
    if name in REGRESSION_FAMILIES:
        return REGRESSION_FAMILIES[name]
    raise UsageError(f"--family must be one of {', '.join(family_names())}, got {name!r}")


def class_ids(class_names: Any, chosen: tuple[str, ...], where: str) -> list[int]:
    """Ids of the ``chosen`` class names; a name the data lacks is a data error."""
    names = [str(c) for c in class_names]
    missing = [c for c in chosen if c not in names]
    if missing:
        raise DataError(f"classes {missing} are not in the data (its classes: {names})", where)
    return [names.index(c) for c in chosen]


def split_family(family: DemoFamily, data: Any, seed: int, need: int) -> tuple[Any, Any, Any]:
    """``(training, validation, novel)`` examples of ``data`` (raw, labels unchanged).

    Validation examples are the family's validation classes, or else :data:`VAL_SHARE` (at
    least ``need``, one episode's worth) of each training class that keeps ``need`` for
    training, chosen with ``seed``. Each part is in dataset order."""
    where = f"--family {family.name} ({family.dataset})"
    train_ids = class_ids(data.class_names, family.train_classes, where)
    novel = np.flatnonzero(np.isin(data.labels, class_ids(data.class_names,
                                                          family.novel_classes, where)))  # fmt: skip
    if family.val_classes:
        val_ids = class_ids(data.class_names, family.val_classes, where)
        train = np.flatnonzero(np.isin(data.labels, train_ids))
        val = np.flatnonzero(np.isin(data.labels, val_ids))
        return data.subset(train), data.subset(val), data.subset(novel)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in train_ids:
        members = rng.permutation(np.flatnonzero(data.labels == c))
        cut = max(round(VAL_SHARE * len(members)), need)
        if len(members) - cut < need:  # too few to spare: all of it trains
            cut = 0
        val_idx.append(members[:cut])
        train_idx.append(members[cut:])
    return (data.subset(np.sort(np.concatenate(train_idx))),
            data.subset(np.sort(np.concatenate(val_idx))), data.subset(novel))  # fmt: skip
