"""Morgan fingerprints: equal to RDKit's classic ECFP bit vectors, invariant to how a
molecule is written, and the SMILES that do not parse (8 Tox21 metal salts) are reported
by index and count, never dropped silently."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from medmeta.data import DataError, load
from medmeta.data import molecules as M
from medmeta.data.molecules import morgan_fingerprints

Chem = pytest.importorskip("rdkit.Chem")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


@pytest.fixture(scope="module")
def tox21_fp():
    """Tox21's SMILES and their fingerprints, computed once for the module."""
    smiles = load("tox21").smiles
    return smiles, morgan_fingerprints(smiles)


def _classic_ecfp(smiles: str, radius: int, bits: int) -> np.ndarray:
    """RDKit's older Morgan bit-vector function (another code path), as a 0/1 array."""
    from rdkit import rdBase
    from rdkit.Chem import rdMolDescriptors

    _quiet = rdBase.BlockLogs()  # its deprecation notice
    bv = rdMolDescriptors.GetMorganFingerprintAsBitVect(
        Chem.MolFromSmiles(smiles), radius, nBits=bits
    )
    out = np.zeros(bits, np.uint8)
    out[list(bv.GetOnBits())] = 1
    del _quiet
    return out


@pytest.mark.parametrize(("radius", "bits"), [(2, 2048), (3, 1024), (1, 512)])
def test_matches_rdkits_classic_morgan_bit_vectors(radius, bits):
    smiles = [ASPIRIN, "CN1CCN(CC1)C(=O)C1CCCCC1", "[O-][N+](=O)C1=CC=C(Cl)C=C1"]
    fp = morgan_fingerprints(smiles, radius, bits)
    assert fp.features.shape == (3, bits) and fp.features.dtype == np.uint8
    for i, s in enumerate(smiles):
        np.testing.assert_array_equal(fp.features[i], _classic_ecfp(s, radius, bits))


def test_atom_environments_and_spelling_invariance():
    # ethanol: 3 distinct atoms at radius 0, each grows one new environment at radius 1
    # and none at radius 2 (the whole molecule is covered); benzene: one environment per
    # radius, all six atoms being equivalent
    for radius, expected in ((0, 3), (1, 6), (2, 6)):
        assert morgan_fingerprints(["CCO"], radius).features.sum() == expected
    for radius, expected in ((0, 1), (1, 2), (2, 3)):
        assert morgan_fingerprints(["c1ccccc1"], radius).features.sum() == expected
    same = morgan_fingerprints(["CCO", "OCC", "C(O)C", ASPIRIN, "OC(=O)c1ccccc1OC(C)=O"])
    np.testing.assert_array_equal(same.features[0], same.features[1])
    np.testing.assert_array_equal(same.features[0], same.features[2])
    np.testing.assert_array_equal(same.features[3], same.features[4])
    assert same.parsed.all() and same.n_unparsed == 0 and same.unparsed.size == 0


def test_unparsable_smiles_are_reported_not_dropped(caplog):
    smiles = ["CCO", "not a molecule", "", "C1CC", ASPIRIN]
    with caplog.at_level(logging.WARNING, logger="medmeta.data.molecules"):
        fp = morgan_fingerprints(smiles)
    assert fp.features.shape == (5, 2048)  # every row kept, in order
    np.testing.assert_array_equal(fp.parsed, [True, False, False, False, True])
    np.testing.assert_array_equal(fp.unparsed, [1, 2, 3])
    assert fp.n_unparsed == 3
    assert not fp.features[~fp.parsed].any()
    assert "3 of 5 SMILES do not parse" in caplog.text
    assert "1 ('not a molecule')" in caplog.text and "3 ('C1CC')" in caplog.text


def test_tox21_has_exactly_the_8_documented_metal_salts(tox21_fp):
    smiles, fp = tox21_fp
    assert fp.n_unparsed == 8
    np.testing.assert_array_equal(fp.unparsed, [1322, 2290, 2297, 3558, 4565, 4649, 5538, 6723])
    assert sum("[AlH3]" in s for s in smiles[fp.unparsed]) >= 7
    assert (fp.features[fp.parsed].sum(1) > 0).all()  # every parsed molecule has bits


def test_cached_per_smiles_radius_and_bits(tox21_fp):
    smiles, fp = tox21_fp
    again = morgan_fingerprints(list(smiles))
    assert again.features is fp.features  # the cache, keyed by the SMILES' digest
    assert not again.features.flags.writeable and not again.parsed.flags.writeable
    other = morgan_fingerprints(smiles[:50], bits=1024)
    assert other.features.shape == (50, 1024)
    as_float = morgan_fingerprints(smiles[:50], dtype=np.float32)
    assert as_float.features.dtype == np.float32
    np.testing.assert_array_equal(as_float.features, fp.features[:50])
    assert M.smiles_digest(["CCO"]) != M.smiles_digest(["OCC"])


@pytest.mark.parametrize(
    ("args", "kwargs", "source", "match"),
    [
        (("CCO",), {}, "smiles", "not one string"),
        ((["CCO", 3],), {}, "smiles", "entry 1 is int"),
        ((["CCO"],), {"radius": -1}, "radius", "radius must be an int >= 0"),
        ((["CCO"],), {"bits": 0}, "bits", "bits must be an int >= 1"),
        ((["CCO"],), {"dtype": np.float64}, "dtype", "numpy.uint8 or numpy.float32"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, source, match):
    with pytest.raises(DataError, match=match) as err:
        morgan_fingerprints(*args, **kwargs)
    assert err.value.source == source


def test_missing_rdkit_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ImportError, match=r"pip install \"medmeta\[chem\]\""):
        morgan_fingerprints(["CCN(CC)CC"], radius=1, bits=64)  # not cached
