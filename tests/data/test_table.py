"""Clinical tables on the embedded thyroid.csv (and a Parquet copy): target column, encoding
and missing-value masks fitted on the support set only, NaN and corrupt-file errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmeta.data import DataError, check_class_sizes, load, read_table
from medmeta.data.registry import dataset_path

DROP = ("record_id", "diagnosis_code", "diagnosis_primary")


@pytest.fixture(scope="module")
def thyroid():
    return load("thyroid")


@pytest.fixture(scope="module")
def thyroid_frame():
    with dataset_path("thyroid") as path:
        return pd.read_csv(path)


def test_thyroid_csv(thyroid, thyroid_frame):
    assert len(thyroid) == 9172
    assert thyroid.class_counts() == thyroid_frame["target"].value_counts().to_dict()
    assert thyroid.classes == sorted(thyroid_frame["target"].unique())
    assert not set(DROP) & set(thyroid.frame.columns) and "target" not in thyroid.frame
    assert thyroid.categorical_columns == ["sex", "referral_source"]
    assert "TSH" in thyroid.numeric_columns and "on_thyroxine" in thyroid.numeric_columns
    assert thyroid.meta["missing_counts"]["TBG"] == 8823
    np.testing.assert_array_equal(thyroid.frame["TSH"].to_numpy(), thyroid_frame["TSH"].to_numpy())


def test_parquet_equals_csv(tmp_path, thyroid, thyroid_frame):
    path = tmp_path / "thyroid.parquet"
    thyroid_frame.to_parquet(path)
    pq = read_table(path, "target", drop=DROP)
    pd.testing.assert_frame_equal(pq.frame, thyroid.frame)
    np.testing.assert_array_equal(pq.y, thyroid.y)
    assert pq.classes == thyroid.classes


def _episode_indices(table, shots=5, queries=10, seed=0):
    rng = np.random.default_rng(seed)
    s, q = [], []
    for _k, idx in table.indices_by_class().items():
        pick = rng.choice(idx, shots + queries, replace=False)
        s.extend(pick[:shots])
        q.extend(pick[shots:])
    return np.array(s), np.array(q)


def test_encoder_is_fitted_on_the_support_set_only(thyroid):
    s, q = _episode_indices(thyroid)
    enc = thyroid.encoder().fit(thyroid.frame.iloc[s])
    tsh_s = thyroid.frame["TSH"].to_numpy()[s]
    assert enc.mean_["TSH"] == pytest.approx(np.nanmean(tsh_s))
    assert enc.std_["TSH"] == pytest.approx(np.nanstd(tsh_s))
    assert enc.categories_["referral_source"] == sorted(
        thyroid.frame["referral_source"].iloc[s].dropna().unique()
    )
    xs, ys, xq, yq = thyroid.episode(s, q)
    names = enc.feature_names
    assert xs.shape == (len(s), len(names)) and xq.shape == (len(q), len(names))
    np.testing.assert_array_equal(ys, thyroid.y[s])
    np.testing.assert_array_equal(yq, thyroid.y[q])
    # query values are standardised with support statistics, missing -> 0 with a mask
    tsh_q = thyroid.frame["TSH"].to_numpy()[q]
    col, miss = names.index("TSH"), names.index("TSH__missing")
    expected = np.where(np.isnan(tsh_q), 0.0, (tsh_q - enc.mean_["TSH"]) / enc.std_["TSH"])
    np.testing.assert_allclose(xq[:, col], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(xq[:, miss], np.isnan(tsh_q).astype(np.float32))
    tbg_miss = names.index("TBG__missing")
    np.testing.assert_array_equal(
        xq[:, tbg_miss], thyroid.frame["TBG"].isna().to_numpy()[q].astype(np.float32)
    )
    assert np.isfinite(xs).all() and np.isfinite(xq).all()
    # the encoding of the support set does not depend on the query set
    q2 = np.setdiff1d(np.arange(len(thyroid)), np.concatenate([s, q]))[:200]
    xs2, _, xq2, _ = thyroid.episode(s, q2)
    np.testing.assert_array_equal(xs, xs2)
    assert xq2.shape[1] == xs.shape[1]


def test_unseen_categories_go_to_other(thyroid):
    frame = thyroid.frame
    support = np.flatnonzero(frame["referral_source"].to_numpy() == "other")[:20]
    query = np.flatnonzero(frame["referral_source"].to_numpy() == "SVI")[:5]
    enc = thyroid.encoder().fit(frame.iloc[support])
    assert enc.categories_["referral_source"] == ["other"]
    xq = enc.transform(frame.iloc[query])
    names = enc.feature_names
    np.testing.assert_array_equal(xq[:, names.index("referral_source=__other__")], 1.0)
    np.testing.assert_array_equal(xq[:, names.index("referral_source=other")], 0.0)


def test_missing_raise_policy_names_the_column(thyroid):
    with pytest.raises(DataError, match=r"column 'TSH' has 10 missing values \(first at row 2\)"):
        thyroid.encoder(missing="raise").fit(thyroid.frame.iloc[:50])


def test_nan_in_target_names_file_column_row(tmp_path, thyroid_frame):
    bad = thyroid_frame.copy()
    bad.loc[10, "target"] = np.nan
    bad.loc[20, "target"] = np.nan
    path = tmp_path / "thyroid_nan.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_table(path, "target", drop=DROP)
    msg = str(err.value)
    assert str(path) in msg and "'target'" in msg and "2 missing" in msg and "row 10" in msg


def test_unknown_columns_and_bad_files(tmp_path, thyroid_frame):
    with dataset_path("thyroid") as path:
        with pytest.raises(DataError, match="target column 'diagnosis' not found"):
            read_table(path, "diagnosis")
        with pytest.raises(DataError, match="column 'nope' not found"):
            read_table(path, "target", drop=["nope"])
    pq = tmp_path / "t.parquet"
    thyroid_frame.to_parquet(pq)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read the table") as err:
        read_table(cut, "target")
    assert str(cut) in str(err.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="cannot read the table"):
        read_table(empty, "target")
    xlsx = tmp_path / "t.xlsx"
    xlsx.write_bytes(b"PK")
    with pytest.raises(DataError, match="unknown table format"):
        read_table(xlsx, "target")


def test_class_size_check_on_the_table(thyroid):
    assert check_class_sizes(thyroid, shots=10, queries=20)["antithyroid_treatment"] == 34
    with pytest.raises(DataError, match=r"class 'antithyroid_treatment' .* has only 34 examples"):
        check_class_sizes(thyroid, shots=20, queries=20)


def test_to_dataset_fits_on_given_rows(thyroid):
    train = np.arange(0, 9172, 2)
    ds = thyroid.to_dataset(fit_on=train)
    assert ds.x.shape == (9172, len(ds.meta["feature_names"]))
    col = ds.meta["feature_names"].index("age")
    np.testing.assert_allclose(
        np.nanmean(
            np.where(thyroid.frame["age"].isna().to_numpy()[train], np.nan, ds.x[train, col])
        ),
        0.0,
        atol=1e-5,
    )
