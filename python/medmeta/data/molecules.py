"""Molecules as Morgan fingerprints (RDKit), with a report of the SMILES that do not parse.

A Morgan fingerprint (Morgan 1965; the extended-connectivity fingerprint ECFP of Rogers and
Hahn, "Extended-Connectivity Fingerprints", J. Chem. Inf. Model. 50:742, 2010) hashes every
atom's circular neighbourhood up to ``radius`` bonds into ``bits`` bits: radius 2 and 2048
bits is ECFP4, the usual input of few-shot molecule benchmarks (FS-Mol, Stanley et al. 2021).

A SMILES that RDKit cannot parse (e.g. some hypervalent metal salts of Tox21) gets an
all-zero row and ``parsed = False``: it is never dropped silently. The failures are logged
with their indices and count, and returned (:attr:`Fingerprints.unparsed`); the assay
episodes (:mod:`medmeta.data.assay_tasks`) leave them out and say how many.

Fingerprints are kept in a small in-process cache keyed by (SHA-256 of the SMILES, radius,
bits): the arrays returned are read-only views of it.

RDKit is imported lazily: ``pip install "medmeta[chem]"``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import DataError, check_count

__all__ = ["Fingerprints", "morgan_fingerprints", "smiles_digest"]

logger = logging.getLogger(__name__)

_CHEM_EXTRA = (
    'Morgan fingerprints need RDKit; install the chemistry extra: pip install "medmeta[chem]"'
)
#: Fingerprint sets kept in the in-process cache (about 17.6 MB each for ToxCast at 2048 bits).
CACHE_SIZE = 4
_CACHE: OrderedDict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()


class Fingerprints(NamedTuple):
    """Morgan fingerprints of ``n`` SMILES; unpacks as ``features, parsed = ...``.

    Attributes:
        features: ``[n, bits]`` uint8 0/1 bits (all zero where a SMILES does not parse).
        parsed: ``[n]`` bool, whether each SMILES parsed.
    """

    features: np.ndarray
    parsed: np.ndarray

    @property
    def unparsed(self) -> np.ndarray:
        """``[u]`` indices (int64) of the SMILES that did not parse."""
        return np.flatnonzero(~self.parsed)

    @property
    def n_unparsed(self) -> int:
        return int((~self.parsed).sum())


def _rdkit() -> tuple[Any, Any, Any]:
    """``(Chem, rdFingerprintGenerator, rdBase)``, imported lazily."""
    try:
        from rdkit import Chem, rdBase
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError as error:
        raise ImportError(_CHEM_EXTRA) from error
    return Chem, rdFingerprintGenerator, rdBase


def _check_smiles(smiles: Sequence[str] | np.ndarray) -> list[str]:
    if isinstance(smiles, str):
        raise DataError("smiles must be a sequence of SMILES strings, not one string", "smiles")
    items = list(np.asarray(smiles, dtype=object).reshape(-1)) if len(smiles) else []
    bad = [i for i, s in enumerate(items) if not isinstance(s, str)]
    if bad:
        raise DataError(
            f"smiles must be strings; entry {bad[0]} is {type(items[bad[0]]).__name__} "
            f"({len(bad)} non-string entries)",
            "smiles",
        )
    return items


def smiles_digest(smiles: Sequence[str]) -> str:
    """SHA-256 of the SMILES list (order included): the cache key of its fingerprints."""
    h = hashlib.sha256()
    for s in smiles:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _compute(items: list[str], radius: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    Chem, rdFingerprintGenerator, rdBase = _rdkit()
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    features = np.zeros((len(items), bits), dtype=np.uint8)
    parsed = np.zeros(len(items), dtype=bool)
    _quiet = rdBase.BlockLogs()  # RDKit's own parse errors: reported below instead
    for i, s in enumerate(items):
        mol = Chem.MolFromSmiles(s) if s.strip() else None
        if mol is None:
            continue
        features[i] = generator.GetFingerprintAsNumPy(mol)
        parsed[i] = True
    del _quiet
    return features, parsed


def morgan_fingerprints(
    smiles: Sequence[str] | np.ndarray,
    radius: int = 2,
    bits: int = 2048,
    *,
    dtype: np.dtype | type = np.uint8,
) -> Fingerprints:
    """Morgan (ECFP-like) bit fingerprints of ``smiles`` computed with RDKit.

    Args:
        smiles: ``[n]`` SMILES strings.
        radius: neighbourhood radius in bonds (2 = ECFP4).
        bits: fingerprint length.
        dtype: ``numpy.uint8`` (default, 0/1) or ``numpy.float32``.

    Returns:
        :class:`Fingerprints` ``(features [n, bits], parsed [n])``; a SMILES that does not
        parse gets a zero row and ``parsed = False``, and is logged (count and indices).

    Raises:
        DataError: ``smiles`` is not a sequence of strings, or bad ``radius`` / ``bits``.
        ImportError: RDKit is not installed (``pip install "medmeta[chem]"``).
    """
    radius, bits = check_count("radius", radius, 0), check_count("bits", bits, 1)
    if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise DataError(f"dtype must be numpy.uint8 or numpy.float32, got {dtype!r}", "dtype")
    items = _check_smiles(smiles)
    key = (smiles_digest(items), int(radius), int(bits))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        features, parsed = _CACHE[key]
    else:
        features, parsed = _compute(items, int(radius), int(bits))
        features.flags.writeable = False
        parsed.flags.writeable = False
        _CACHE[key] = (features, parsed)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    out = Fingerprints(features, parsed)
    if out.n_unparsed:
        shown = ", ".join(f"{i} ({items[i][:40]!r})" for i in out.unparsed[:10])
        more = f", ... and {out.n_unparsed - 10} more" if out.n_unparsed > 10 else ""
        logger.warning(
            "%d of %d SMILES do not parse in RDKit and are skipped (zero fingerprints, "
            "parsed=False): %s%s",
            out.n_unparsed, len(items), shown, more,
        )  # fmt: skip
    if np.dtype(dtype) == np.float32:
        return Fingerprints(features.astype(np.float32), parsed)
    return out
