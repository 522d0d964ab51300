"""Few-shot drug screening: assays as binary tasks, split by assay provider, 2-way K-shot.

Each column of an activity table (molecules x assays, 1 = active, 0 = inactive, NaN = not
tested) is one task. Meta-training and meta-testing are split *by assay*, never by
molecule, and correlated assays (one provider's read-outs of the same plate, ``_up``/``_dn``
pairs, time points) stay on one side: :meth:`AssayTable.split_assays` splits by
``task_groups`` (the provider, e.g. ToxCast's ATG, NVS, BSK, TOX21, ...). ToxCast's
``TOX21_*`` assays overlap the Tox21 set; :func:`tox21_holdout` removes them from a
meta-training table when Tox21 is the test set.

An episode (:class:`AssayEpisodeSampler`) picks one assay, drops its untested (NaN) rows and
the molecules whose SMILES did not parse, and draws K actives and K inactives as the support
set; episode label 1 is always *active*, 0 *inactive* (support and query class-major: the
inactives first). The query comes from the rest of the assay's molecules:

* ``query="balanced"`` (training, meta_fit's default): Q actives and Q inactives, so a
  meta-batch stacks into fixed-size tensors;
* ``query="rest"`` (evaluation): every remaining labelled molecule of the assay, at the
  assay's own active rate (what ΔAUPRC needs), or, with ``max_query``, a stratified sample
  of that many keeping the active rate (at least Q of each class). Episodes then differ in
  size, so ``batch_size`` must be 1.

This follows FS-Mol (Stanley et al., "FS-Mol: A Few-Shot Learning Dataset of Molecules",
NeurIPS Datasets and Benchmarks 2021) except that the support set is balanced (K + K) as
in the classic few-shot Tox21 benchmark (Altae-Tran et al., "Low Data Drug Discovery with
One-Shot Learning", ACS Cent. Sci. 2017).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .episodes import EpisodeBatch, SeededSampler
from .errors import DataError, check_count

__all__ = [
    "TOX21_PREFIX",
    "AssayEpisodeSampler",
    "AssayTable",
    "AssayTaskSet",
    "load_assay_table",
    "tox21_holdout",
]

logger = logging.getLogger(__name__)

#: ToxCast's end-points from the Tox21 programme: left out of meta-training when testing on
#: Tox21 (:func:`tox21_holdout`).
TOX21_PREFIX = "TOX21_"

QueryMode = Literal["balanced", "rest"]


def _str_array(name: str, values: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"[{n}]" if n is not None else "[n]"
        raise DataError(f"must be a {want} array of strings, got shape {list(a.shape)}", name)
    if a.size and a.dtype.kind not in "UO":
        raise DataError(f"must hold strings, got dtype {a.dtype}", name)
    if a.dtype.kind == "O" and not all(isinstance(v, str) for v in a):
        raise DataError("must hold strings only", name)
    return a.astype(str)


@dataclass
class AssayTable:
    """Activity of ``n_mol`` molecules in ``n_assay`` assays.

    Attributes:
        smiles: ``[n_mol]`` SMILES strings.
        labels: ``[n_mol, n_assay]`` float32: 1 = active, 0 = inactive, NaN = not tested.
        task_names: ``[n_assay]`` unique assay names.
        task_groups: ``[n_assay]`` assay provider / family; splits keep a group together.
        meta: provenance (name, license, citation, ...).
    """

    smiles: np.ndarray
    labels: np.ndarray
    task_names: np.ndarray
    task_groups: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.smiles = _str_array("smiles", self.smiles)
        labels = np.asarray(self.labels)
        if labels.ndim != 2 or labels.shape[0] != len(self.smiles):
            raise DataError(
                f"must be [n_mol, n_assay] = [{len(self.smiles)}, n_assay] like smiles, got "
                f"shape {list(labels.shape)}",
                "labels",
            )
        if labels.dtype.kind not in "fiub":
            raise DataError(f"must be numeric (1/0/NaN), got dtype {labels.dtype}", "labels")
        labels = labels.astype(np.float32, copy=False)
        bad = ~(np.isnan(labels) | (labels == 0) | (labels == 1))
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(
                f"must hold 1 (active), 0 (inactive) or NaN (not tested); found "
                f"{float(labels[r, c])!r} at molecule {r}, assay {c} ({int(bad.sum())} such cells)",
                "labels",
            )
        self.labels = labels
        self.task_names = _str_array("task_names", self.task_names, labels.shape[1])
        if len(set(self.task_names.tolist())) != len(self.task_names):
            names, counts = np.unique(self.task_names, return_counts=True)
            raise DataError(
                f"must be unique; repeated: {names[counts > 1][:5].tolist()}", "task_names"
            )
        self.task_groups = _str_array("task_groups", self.task_groups, labels.shape[1])

    # -- sizes and counts ----------------------------------------------------------------
    @property
    def n_molecules(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_assays(self) -> int:
        return int(self.labels.shape[1])

    def __len__(self) -> int:
        return self.n_molecules

    @property
    def class_names(self) -> list[str]:
        """The assay names (the registry's generic listing calls tasks "classes")."""
        return self.task_names.tolist()

    def actives(self) -> np.ndarray:
        """``[n_assay]`` number of active molecules per assay."""
        return (self.labels == 1).sum(0)

    def inactives(self) -> np.ndarray:
        """``[n_assay]`` number of inactive (tested, not active) molecules per assay."""
        return (self.labels == 0).sum(0)

    def class_counts(self) -> dict[str, int]:
        """``{assay name: number of actives}`` (as listed in the dataset manifest)."""
        return dict(zip(self.class_names, self.actives().tolist(), strict=True))

    def group_counts(self) -> dict[str, int]:
        """``{group: number of assays}``, largest first."""
        names, counts = np.unique(self.task_groups, return_counts=True)
        order = np.lexsort((names, -counts))
        return {str(names[i]): int(counts[i]) for i in order}

    # -- subsets and splits --------------------------------------------------------------
    def subset(self, assays: Sequence[int] | np.ndarray) -> AssayTable:
        """The same molecules with the assays ``assays`` (indices or a boolean mask)."""
        idx = np.asarray(assays)
        if idx.dtype == bool:
            if idx.shape != (self.n_assays,):
                raise DataError(
                    f"a mask must be [{self.n_assays}], got {list(idx.shape)}", "assays"
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_assays or idx.max() >= self.n_assays):
            raise DataError(
                f"assay indices must be in [0, {self.n_assays}), got {idx.tolist()[:5]}", "assays"
            )
        return AssayTable(
            self.smiles, self.labels[:, idx], self.task_names[idx], self.task_groups[idx],
            dict(self.meta, assays=len(idx)),
        )  # fmt: skip

    def drop_prefix(self, prefix: str) -> AssayTable:
        """The table without the assays whose names start with ``prefix``."""
        keep = ~np.char.startswith(self.task_names, prefix)
        if not keep.any():
            raise DataError(f"every assay starts with {prefix!r}; nothing would be left", "prefix")
        return self.subset(keep)

    def split_assays(
        self,
        fractions: Sequence[float] = (0.8, 0.2),
        *,
        seed: int = 0,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> tuple[AssayTable, ...]:
        """Split the assays into parts with disjoint ``task_groups`` (meta-train / test).

        Args:
            fractions: the share of the *assays* wanted in each part. The groups are
                shuffled with ``numpy.random.default_rng(seed)`` and each goes to the part
                furthest below its share; shuffles are drawn until every part is within
                5% of the assays of its share (or the closest of 1000 is kept). The split
                depends only on the table and ``seed``.
            seed: seeds the group order.
            groups: explicit group names per part instead of ``fractions``; groups not
                named are left out.

        Returns:
            One :class:`AssayTable` per part (all the molecules, that part's assays);
            ``meta["groups"]`` lists its groups.
        """
        known = sorted(set(self.task_groups.tolist()))
        if groups is not None:
            parts = [[str(g) for g in part] for part in groups]
            flat = [g for part in parts for g in part]
            unknown = sorted(set(flat) - set(known))
            if unknown:
                raise DataError(f"unknown groups {unknown}; the table has {known}", "groups")
            if len(flat) != len(set(flat)):
                raise DataError("group lists must be disjoint", "groups")
        else:
            parts = _assign_groups(self.task_groups, known, fractions, seed)
        out = []
        for part in parts:
            if not part:
                raise DataError(
                    f"a part of the split got no group (shares {list(fractions)}, "
                    f"{len(known)} groups); give fewer parts or explicit groups=",
                    "fractions",
                )
            table = self.subset(np.isin(self.task_groups, part))
            table.meta["groups"] = sorted(part)
            out.append(table)
        return tuple(out)

    def task_set(
        self,
        features: np.ndarray | torch.Tensor | None = None,
        parsed: np.ndarray | None = None,
        *,
        radius: int = 2,
        bits: int = 2048,
    ) -> AssayTaskSet:
        """The episodes' data: :class:`AssayTaskSet` over ``features [n_mol, F]`` (default:
        Morgan fingerprints of the SMILES with ``radius`` and ``bits``, needs RDKit)."""
        if features is None:
            from .molecules import morgan_fingerprints

            features, parsed = morgan_fingerprints(self.smiles, radius, bits)
        return AssayTaskSet(self, features, parsed)


#: A split whose every part is within this share of the assays of its target is accepted.
SPLIT_TOLERANCE = 0.05
#: Group orders tried by :func:`_assign_groups` before it settles for the closest split.
SPLIT_TRIES = 1000


def _assign_groups(
    task_groups: np.ndarray, known: list[str], fractions: Sequence[float], seed: int
) -> list[list[str]]:
    """Groups per part. In a seeded random order, each group goes to the part furthest
    below its target number of assays; orders are drawn until every part is within
    :data:`SPLIT_TOLERANCE` of its target (else the closest of :data:`SPLIT_TRIES`)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size < 1 or not (np.isfinite(f).all() and (f > 0).all()):
        raise DataError(f"must be positive shares, got {list(fractions)}", "fractions")
    if f.size > len(known):
        raise DataError(f"cannot split {len(known)} groups into {f.size} parts", "fractions")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"must be an int, got {seed!r}", "seed")
    sizes = np.array([(task_groups == g).sum() for g in known], dtype=np.float64)
    target = f / f.sum() * len(task_groups)
    rng = np.random.default_rng(int(seed))
    best: tuple[float, list[list[str]]] | None = None
    for _ in range(SPLIT_TRIES):
        got = np.zeros(f.size)
        parts: list[list[str]] = [[] for _ in range(f.size)]
        for i in rng.permutation(len(known)):
            p = int(np.argmax(target - got))
            parts[p].append(known[i])
            got[p] += sizes[i]
        miss = float(np.abs(got - target).max())
        if best is None or miss < best[0]:
            best = (miss, parts)
        if miss <= SPLIT_TOLERANCE * len(task_groups):
            break
    assert best is not None
    return best[1]


def tox21_holdout(table: AssayTable) -> AssayTable:
    """``table`` without ToxCast's ``TOX21_*`` assays: the meta-training tasks to use when
    Tox21 (``tox21.npz``) is the meta-test set, which repeats their end-points."""
    dropped = int(np.char.startswith(table.task_names, TOX21_PREFIX).sum())
    logger.info("tox21_holdout: leaving %d %s* assays out of meta-training", dropped, TOX21_PREFIX)
    return table.drop_prefix(TOX21_PREFIX) if dropped else table


def load_assay_table(path: str | os.PathLike[str], name: str | None = None) -> AssayTable:
    """Read an activity table from ``.npz``: ``smiles``, ``labels`` and ``task_names``, and
    ``task_groups`` when present (else the name up to its first ``_`` or ``-``, e.g. NR/SR
    for Tox21's nuclear-receptor and stress-response assays)."""
    from .formats.npz import read_npz

    arrays = read_npz(path)
    missing = [k for k in ("smiles", "labels", "task_names") if k not in arrays]
    if missing:
        raise DataError(
            f"missing arrays {missing}; the archive holds {sorted(arrays)}", os.fspath(path)
        )
    names = arrays["task_names"].astype(str)
    groups = arrays.get("task_groups")
    if groups is None:
        groups = np.array([n.replace("-", "_").split("_")[0] for n in names])
    meta = {"path": os.fspath(path), "format": "assays", "name": name or os.path.basename(path)}
    try:
        return AssayTable(arrays["smiles"], arrays["labels"], names, groups, meta)
    except DataError as err:
        raise DataError(f"{err.source}: {err.problem}", os.fspath(path)) from err


class AssayTaskSet:
    """Binary screening tasks over molecule features: what :func:`~medmeta.train.meta_fit`
    takes as ``train_set`` / ``val_set`` (it calls :meth:`episode_sampler`).

    Args:
        table: the :class:`AssayTable`.
        features: ``[n_mol, F]`` molecule features (fingerprint bits are used as they are,
            as float32; no scaling).
        parsed: ``[n_mol]`` bool, the molecules whose SMILES parsed (default: all); the
            others are left out of every episode and counted in :attr:`n_unparsed`.
    """

    def __init__(
        self,
        table: AssayTable,
        features: np.ndarray | torch.Tensor,
        parsed: np.ndarray | None = None,
    ) -> None:
        if not isinstance(table, AssayTable):
            raise DataError(f"must be an AssayTable, got {type(table).__name__}", "table")
        if isinstance(features, torch.Tensor):
            x = features.detach().cpu()
        else:  # a float32 copy: fingerprints may be read-only (cached) uint8 bits
            x = torch.from_numpy(np.array(features, dtype=np.float32))
        if x.dim() != 2 or x.shape[0] != table.n_molecules:
            raise DataError(
                f"must be [n_mol, F] = [{table.n_molecules}, F], got shape {list(x.shape)}",
                "features",
            )
        self.features = x.float().contiguous()  # [n_mol, F]
        if not bool(torch.isfinite(self.features).all()):
            raise DataError("must be finite; found NaN or inf values", "features")
        ok = np.ones(table.n_molecules, bool) if parsed is None else np.asarray(parsed)
        if ok.shape != (table.n_molecules,) or ok.dtype != bool:
            raise DataError(
                f"must be a bool [{table.n_molecules}] mask, got {ok.dtype}{list(ok.shape)}",
                "parsed",
            )
        self.table, self.parsed = table, ok
        usable = ok[:, None] & ~np.isnan(table.labels)  # [n_mol, n_assay]
        self._active = [
            np.flatnonzero(usable[:, a] & (table.labels[:, a] == 1)) for a in range(table.n_assays)
        ]
        self._inactive = [
            np.flatnonzero(usable[:, a] & (table.labels[:, a] == 0)) for a in range(table.n_assays)
        ]
        #: molecules left out because their SMILES did not parse
        self.n_unparsed = int((~ok).sum())
        #: labelled (assay, molecule) cells lost with them
        self.unparsed_cells = int((~ok[:, None] & ~np.isnan(table.labels)).sum())
        if self.n_unparsed:
            logger.warning(
                "%s: %d of %d molecules have unparsable SMILES and are left out of every "
                "episode (%d labelled cells)",
                table.meta.get("name", "assay table"), self.n_unparsed, table.n_molecules,
                self.unparsed_cells,
            )  # fmt: skip

    @property
    def n_assays(self) -> int:
        return self.table.n_assays

    @property
    def class_names(self) -> list[str]:
        """Episode class names by class id: ``2a`` = assay ``a`` inactive, ``2a + 1`` active."""
        return [f"{n}:{c}" for n in self.table.task_names for c in ("inactive", "active")]

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``([n_assay] actives, [n_assay] inactives)`` usable in episodes (parsed, tested)."""
        return (
            np.array([len(i) for i in self._active], dtype=np.int64),
            np.array([len(i) for i in self._inactive], dtype=np.int64),
        )

    def eligible(self, shots: int, query_per_class: int) -> np.ndarray:
        """Indices of the assays with at least ``shots + query_per_class`` actives and as
        many inactives."""
        act, inact = self.counts()
        need = shots + query_per_class
        return np.flatnonzero((act >= need) & (inact >= need))

    def episode_sampler(
        self,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
        query: QueryMode = "balanced",
        max_query: int | None = None,
    ) -> AssayEpisodeSampler:
        """An :class:`AssayEpisodeSampler` (see there; ``ways`` must be 2)."""
        return AssayEpisodeSampler(
            self, ways, shots, queries, batch_size=batch_size, generator=generator,
            query=query, max_query=max_query,
        )  # fmt: skip


def _padded(index_lists: list[np.ndarray]) -> torch.Tensor:
    """``[A, width]`` int64 table of the lists, padded with -1."""
    width = max(1, max(len(ix) for ix in index_lists))
    table = np.full((len(index_lists), width), -1, dtype=np.int64)
    for i, ix in enumerate(index_lists):
        table[i, : len(ix)] = ix
    return torch.from_numpy(table)


class AssayEpisodeSampler(SeededSampler):
    """2-way K-shot screening episodes: label 1 = active, 0 = inactive.

    Each episode draws one assay uniformly among the eligible ones (with at least K + Q
    actives and K + Q inactives among its tested, parsed molecules), then K inactives and K
    actives as the support ``[B, 2K, F]`` (class-major) and a query (see the module
    docstring for ``query="balanced"`` and ``"rest"``). ``classes [B, 2]`` holds the
    episode's class ids ``[2a, 2a + 1]`` for assay ``a`` (:meth:`assays` recovers ``a``).

    In ``"rest"`` mode ``queries`` is the minimum number of query molecules of each class
    and the batch's ``queries`` field is the episode's total number of queries ``M``.

    Args:
        tasks: the :class:`AssayTaskSet`.
        ways: must be 2 (active / inactive).
        shots: K actives and K inactives in the support set.
        queries: Q: query molecules per class (``"balanced"``), or at least Q per class
            (``"rest"``).
        batch_size: episodes per batch B (1 in ``"rest"`` mode).
        generator: a ``torch.Generator`` or an int seed; its state is the sampler's state.
        query: ``"balanced"`` or ``"rest"``.
        max_query: ``"rest"`` mode only: at most this many query molecules, a stratified
            sample (the assay's active rate kept, at least Q per class); ``None`` = all.
    """

    def __init__(
        self,
        tasks: AssayTaskSet,
        ways: int,
        shots: int,
        queries: int,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
        query: QueryMode = "balanced",
        max_query: int | None = None,
    ) -> None:
        if isinstance(ways, bool) or ways != 2:
            raise DataError(
                f"screening episodes are 2-way (inactive, active); got {ways!r}", "ways"
            )
        self.ways = 2
        self.shots = check_count("shots", shots, 1)
        self.queries = check_count("queries", queries, 1)
        self.batch_size = check_count("batch_size", batch_size, 1)
        if query not in ("balanced", "rest"):
            raise DataError(f"must be 'balanced' or 'rest', got {query!r}", "query")
        if query == "rest" and self.batch_size != 1:
            raise DataError(
                "query='rest' episodes differ in size: use batch_size=1 (or query='balanced')",
                "batch_size",
            )
        if max_query is not None:
            if query != "rest":
                raise DataError("max_query applies to query='rest' only", "max_query")
            check_count("max_query", max_query, 2 * self.queries)
        self.query, self.max_query = query, max_query
        self.tasks = tasks
        self.class_names = tasks.class_names
        self.eligible = torch.from_numpy(tasks.eligible(self.shots, self.queries))
        if len(self.eligible) == 0:
            act, inact = tasks.counts()
            best = int(np.minimum(act, inact).max()) if len(act) else 0
            raise DataError(
                f"no assay has shots + queries = {self.shots} + {self.queries} actives and as "
                f"many inactives (the most any assay has of both is {best})",
                "shots",
            )
        skipped = tasks.n_assays - len(self.eligible)
        if skipped:
            logger.info(
                "%d of %d assays have fewer than %d actives or inactives and are not drawn",
                skipped, tasks.n_assays, self.shots + self.queries,
            )  # fmt: skip
        self._act_table, self._inact_table = _padded(tasks._active), _padded(tasks._inactive)
        counts = tasks.counts()
        self._n_act, self._n_inact = torch.from_numpy(counts[0]), torch.from_numpy(counts[1])
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            seed = 0 if generator is None else check_count("generator", generator, 0)
            self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def assays(batch: EpisodeBatch) -> torch.Tensor:
        """``[B]`` the assay index of each episode of ``batch``."""
        return batch.classes[:, 1] // 2

    def _draw(self, table: torch.Tensor, assays: torch.Tensor, take: int) -> torch.Tensor:
        """``[B, take]`` distinct random entries of each episode's row of ``table``."""
        rows = table[assays]  # [B, width]
        keys = torch.rand(rows.shape, generator=self.generator)
        keys.masked_fill_(rows < 0, 2.0)  # padding never drawn
        return rows.gather(1, keys.topk(take, dim=1, largest=False).indices)

    def sample(self) -> EpisodeBatch:
        """One batch of ``batch_size`` episodes."""
        B, K, Q, g = self.batch_size, self.shots, self.queries, self.generator
        a = self.eligible[torch.randint(len(self.eligible), (B,), generator=g)]  # [B]
        if self.query == "balanced":
            inact = self._draw(self._inact_table, a, K + Q)  # [B, K+Q]
            act = self._draw(self._act_table, a, K + Q)
            support = torch.cat([inact[:, :K], act[:, :K]], 1)  # [B, 2K]
            query = torch.cat([inact[:, K:], act[:, K:]], 1)  # [B, 2Q]
            n_q_inact = n_q_act = Q
        else:
            inact = self._draw(self._inact_table, a, int(self._n_inact[a[0]]))  # [1, all]
            act = self._draw(self._act_table, a, int(self._n_act[a[0]]))
            n_q_inact, n_q_act = self._rest_sizes(inact.shape[1] - K, act.shape[1] - K)
            support = torch.cat([inact[:, :K], act[:, :K]], 1)
            query = torch.cat([inact[:, K : K + n_q_inact], act[:, K : K + n_q_act]], 1)
        labels = torch.tensor([0, 1])
        return EpisodeBatch(
            support_x=self.features_of(support),
            support_y=labels.repeat_interleave(K).expand(B, -1).contiguous(),
            query_x=self.features_of(query),
            query_y=labels.repeat_interleave(torch.tensor([n_q_inact, n_q_act]))
            .expand(B, -1)
            .contiguous(),
            classes=torch.stack([2 * a, 2 * a + 1], 1),
            ways=2,
            shots=K,
            queries=Q if self.query == "balanced" else n_q_inact + n_q_act,
        )

    def features_of(self, index: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` features of molecule indices ``[...]``."""
        return self.tasks.features[index]

    def _rest_sizes(self, inact_left: int, act_left: int) -> tuple[int, int]:
        """(inactive, active) query sizes: all that is left, or a stratified sample of
        ``max_query`` keeping the active rate, at least Q of each class."""
        total = inact_left + act_left
        if self.max_query is None or total <= self.max_query:
            return inact_left, act_left
        n_act = round(self.max_query * act_left / total)
        n_act = min(max(n_act, self.queries), act_left, self.max_query - self.queries)
        return self.max_query - n_act, n_act
