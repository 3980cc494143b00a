"""Device metadata features: each field kind, defaults for what a record lacks, the metadata file's checks."""
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.metadata import DAY_S, MetadataField, metadata_matrix, metadata_records, read_metadata
from features.spec import FeatureSpec

FIELDS = (MetadataField(name="rated_power_kw", default=5.5),
          MetadataField(name="machine_type", kind="category", categories=("L", "M", "H"), default="M"),
          MetadataField(name="last_service", kind="days_since", default=30))
TS = np.array([1_767_225_600.0, 1_767_225_600.0 + DAY_S])  # 2026-01-01 and a day later


def test_each_kind_becomes_columns():
    record = {"rated_power_kw": "7.5", "machine_type": "H", "last_service": "2025-12-22"}
    got = metadata_matrix(FIELDS, record, TS)
    assert got.dtype == np.float32 and got.shape == (2, 5)
    assert np.allclose(got, [[7.5, 0, 0, 1, 10.0], [7.5, 0, 0, 1, 11.0]])
    epoch = metadata_matrix(FIELDS, {**record, "last_service": 1_767_225_600.0 - 2 * DAY_S}, TS)
    assert np.allclose(epoch[:, 4], [2.0, 3.0])


def test_missing_or_unreadable_values_take_the_defaults():
    assert np.allclose(metadata_matrix(FIELDS, None, TS), [[5.5, 0, 1, 0, 30.0]] * 2)
    partial = metadata_matrix(FIELDS, {"rated_power_kw": "n/a", "machine_type": "X", "last_service": "never"}, TS)
    assert np.allclose(partial, [[5.5, 0, 0, 0, 30.0]] * 2)  # an unlisted category sets no column


def test_spec_appends_metadata_columns_after_the_window():
    spec = FeatureSpec(sensors=("a", "b"), window=3, stats=("last", "mean"), metadata=FIELDS)
    assert spec.feature_names[-5:] == ["meta__rated_power_kw", "meta__machine_type__L", "meta__machine_type__M",
                                       "meta__machine_type__H", "meta__last_service"]
    out = spec.featurise(spec.empty_state(), TS, np.ones((2, 2)), {"machine_type": "L"})
    assert out.features.shape == (2, len(spec.feature_names))
    assert np.allclose(out.features[:, -5:], [[5.5, 1, 0, 0, 30.0]] * 2)


@pytest.mark.parametrize("field, message", [
    ({"name": "t", "kind": "category", "default": "a"}, "lists its categories"),
    ({"name": "t", "kind": "category", "categories": ["a"], "default": "b"}, "not one of its categories"),
    ({"name": "t", "kind": "category", "categories": ["a b", "a_b"], "default": "a b"}, "not distinct"),
    ({"name": "t", "default": "x"}, "finite number"),
    ({"name": "bad name"}, "pattern"),
])
def test_bad_fields_are_refused(field, message):
    with pytest.raises(ValidationError, match=message):
        MetadataField(**field)


def test_metadata_file_is_checked(tmp_path):
    good = pd.DataFrame({"device_id": [1, 2], "rated_power_kw": [5.5, None], "machine_type": ["L", "H"],
                         "last_service": ["2025-01-01", None]})
    good.to_parquet(tmp_path / "devices.parquet")
    records = metadata_records(read_metadata(tmp_path / "devices.parquet", FIELDS), FIELDS)
    assert records["2"] == {"rated_power_kw": None, "machine_type": "H", "last_service": None}
    good.drop(columns="machine_type").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['machine_type'\]"):
        read_metadata(tmp_path / "short.csv", FIELDS)
    pd.concat([good, good]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(ValueError, match="more than once"):
        read_metadata(tmp_path / "twice.csv", FIELDS)
    with pytest.raises(ValueError, match="not found"):
        read_metadata(tmp_path / "absent.csv", FIELDS)
