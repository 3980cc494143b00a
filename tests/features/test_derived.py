"""Derived readings are computed from each event's readings, then windowed like sensors, by the one featurise rule."""
import numpy as np
import pytest
from pydantic import ValidationError

from features.derived import DerivedReading
from features.spec import FeatureSpec

POWER = DerivedReading(name="power_w", op="product", of=("torque", "rpm"), scale=2 * np.pi / 60)
RISE = DerivedReading(name="rise_k", op="difference", of=("process_k", "air_k"))


def spec(**kw):
    return FeatureSpec(sensors=("torque", "rpm", "process_k", "air_k"), window=3, stats=("last", "mean"),
                       derived=(POWER, RISE), **kw)


def test_derived_readings_are_windowed_after_the_sensors_like_sensors():
    s = spec()
    assert s.channels == ("torque", "rpm", "process_k", "air_k", "power_w", "rise_k")
    assert s.feature_names[-4:] == ["power_w__last", "power_w__mean", "rise_k__last", "rise_k__mean"]
    rng = np.random.default_rng(0)
    values = rng.uniform(1, 100, size=(7, 4))
    out = s.featurise(s.empty_state(), np.arange(7.0), values)
    power = values[:, 0] * values[:, 1] * 2 * np.pi / 60
    rise = values[:, 2] - values[:, 3]
    plain = FeatureSpec(sensors=("torque", "rpm", "process_k", "air_k", "power_w", "rise_k"), window=3,
                        stats=("last", "mean"))
    expected = plain.featurise(plain.empty_state(), np.arange(7.0), np.column_stack([values, power, rise]))
    assert np.array_equal(out.features, expected.features)
    assert out.features.shape == (7, 12)


def test_chunked_streaming_matches_the_whole_series_with_derived_readings():
    s = spec()
    values = np.random.default_rng(1).uniform(1, 100, size=(10, 4))
    values[4, 1] = np.nan
    whole = s.featurise(s.empty_state(), np.arange(10.0), values)
    first = s.featurise(s.empty_state(), np.arange(4.0), values[:4])
    rest = s.featurise(first.state, np.arange(4.0, 10.0), values[4:])
    assert np.array_equal(whole.features, np.concatenate([first.features, rest.features]))
    assert whole.imputed[4].tolist() == [False, True, False, False, True, False]


def test_a_missing_input_is_imputed_and_fills_derive_from_the_sensors_fills():
    s = spec(fill_values=(10.0, 600.0, 310.0, 300.0))
    values = np.array([[np.nan, np.nan, np.nan, np.nan], [2.0, 60.0, 305.0, 300.0]])
    out = s.featurise(s.empty_state(), np.arange(2.0), values)
    last = out.features[0, ::2]
    assert np.allclose(last, [10.0, 600.0, 310.0, 300.0, 10.0 * 600.0 * 2 * np.pi / 60, 10.0], rtol=1e-6)


@pytest.mark.parametrize("derived, named", [
    ((DerivedReading(name="p", op="product", of=("torque", "speed")),), "speed"),
    ((DerivedReading(name="rpm", op="product", of=("torque", "rpm")),), "rpm"),
    ((POWER, POWER), "power_w"),
])
def test_bad_derived_readings_are_refused_naming_them(derived, named):
    with pytest.raises(ValidationError, match=named):
        FeatureSpec(sensors=("torque", "rpm", "process_k", "air_k"), derived=derived)
