"""Table rows -> features on the device (:mod:`medmeta.edge.table`) and the series options of
:class:`~medmeta.edge.preprocess.Preprocessing`: values against the pandas encoder and a
float64 reference, JSON round trips, and every error naming its column, row or length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmeta.data.registry import dataset_path
from medmeta.edge.preprocess import Preprocessing
from medmeta.edge.table import TableRows, TableSpec, read_csv_rows, split_target


@pytest.fixture(scope="module")
def thyroid_rows() -> TableRows:
    with dataset_path("thyroid") as path:
        rows = read_csv_rows(path)
    return rows.drop(["record_id", "diagnosis_code", "diagnosis_primary"])


def test_encoding_equals_the_pandas_encoder_fitted_on_the_same_rows(thyroid_rows: TableRows):
    pd = pytest.importorskip("pandas")
    from medmeta.data.formats.table import TableEncoder

    features, _, _ = split_target(thyroid_rows)
    fit_rows = features.take(np.arange(0, 600))
    spec = TableSpec.fit(fit_rows)
    assert (
        "TSH" in spec.numeric
        and "sex" in spec.categorical
        and "referral_source" in spec.categorical
    )
    frame = pd.DataFrame(features.values, columns=features.columns).replace("", np.nan)
    for col in spec.numeric:
        frame[col] = pd.to_numeric(frame[col])
    encoder = TableEncoder(spec.numeric, spec.categorical,
                           categories=dict(zip(spec.categorical, spec.categories, strict=True)))  # fmt: skip
    encoder.fit(frame.iloc[:600])
    assert encoder.feature_names == spec.feature_names
    want = encoder.transform(frame.iloc[500:900])
    got = spec.encode(features.take(np.arange(500, 900)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_unknown_categories_are_encoded_as_other_and_reported():
    rows = TableRows(("sex", "age"), np.array([["F", "30"], ["M", "41"], ["F", ""]]))
    spec = TableSpec.fit(rows)
    new = TableRows(("age", "sex", "extra"), np.array([["50", "X", "1"], ["", "M", "2"]]))
    x = spec.encode(new)
    names = spec.feature_names
    assert names == ["age", "age__missing", "sex=F", "sex=M", "sex=__other__", "sex__missing"]
    mean, std = np.mean([30.0, 41.0]), np.std([30.0, 41.0])
    np.testing.assert_allclose(x[0], [(50 - mean) / std, 0, 0, 0, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(x[1], [0, 1, 0, 1, 0, 0])
    assert spec.unknown(new) == [["sex=X"], []]


def test_a_missing_column_and_text_in_a_numeric_column_are_named():
    spec = TableSpec.fit(TableRows(("TSH", "sex"), np.array([["1.5", "F"], ["2", "M"]])))
    with pytest.raises(ValueError, match="column 'TSH' is missing"):
        spec.encode(TableRows(("sex",), np.array([["F"]])))
    with pytest.raises(ValueError, match=r"column 'TSH': row 1 holds 'high', expected a number"):
        spec.encode(TableRows(("TSH", "sex"), np.array([["1", "F"], ["high", "M"]])))


def test_class_column_errors_name_the_row_or_the_single_class():
    rows = TableRows(("a", "target"), np.array([["1", "x"], ["2", ""], ["3", "y"]]))
    with pytest.raises(ValueError, match="missing values, first at data row 1"):
        split_target(rows)
    one = TableRows(("a", "label"), np.array([["1", "x"], ["2", "x"]]))
    with pytest.raises(ValueError, match="one class \\('x'\\)"):
        split_target(one, required=True)
    with pytest.raises(ValueError, match="no class column"):
        split_target(TableRows(("a",), np.array([["1"]])), required=True)
    features, labels, names = split_target(
        TableRows(("a", "label"), np.array([["1", "y"], ["2", "x"]]))
    )
    assert features.columns == ("a",) and labels.tolist() == [1, 0] and names == ["x", "y"]


def test_csv_rows_with_a_ragged_line_are_refused(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 cells, the header has 2"):
        read_csv_rows(path)


def test_table_preprocessing_round_trips_and_old_dicts_still_load(thyroid_rows: TableRows):
    features, _, _ = split_target(thyroid_rows)
    pre = Preprocessing.for_table(TableSpec.fit(features.take(np.arange(300))))
    again = Preprocessing.from_dict(pre.to_dict())
    assert again == pre
    np.testing.assert_array_equal(
        again(features.take(np.arange(5))), pre(features.take(np.arange(5)))
    )
    image = Preprocessing.for_images((3, 28, 28)).to_dict()
    assert not {"per_record", "crop", "table"} & set(image)  # readable by older runtimes
    with pytest.raises(TypeError, match="takes TableRows"):
        pre(np.zeros((2, 3)))


def test_series_are_standardised_per_record_against_a_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(4, 2, 50)).astype(np.float32)
    x[1, 0] = 7.0  # a flat channel becomes zeros
    got = Preprocessing.for_series((2, 50), per_record=True)(x)
    ref = x.astype(np.float64)
    ref = (ref - ref.mean(-1, keepdims=True)) / np.where(
        ref.std(-1, keepdims=True) > 0, ref.std(-1, keepdims=True), np.inf
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert not got[1, 0].any()


def test_series_length_crop_and_errors():
    x = np.arange(2 * 1 * 10, dtype=np.float32).reshape(2, 1, 10)
    crop = Preprocessing.for_series((1, 6), crop="center")
    np.testing.assert_array_equal(crop(x), x[:, :, 2:8])
    with pytest.raises(ValueError, match="has 4 samples, shorter than the model's window of 6"):
        crop(x[:, :, :4])
    with pytest.raises(ValueError, match="has 10 samples, the model takes 6"):
        Preprocessing.for_series((1, 6))(x)
    with pytest.raises(ValueError, match="apply to series"):
        Preprocessing("vector", (5,), per_record=True)
    assert Preprocessing.from_dict(crop.to_dict()) == crop
