import numpy as np
import pytest

from features.window import STATS, feature_names, series_features, window_features, window_fill


def test_features_of_a_full_window_match_hand_computed_statistics():
    values = np.array([[1.0], [2.0], [4.0], [8.0]])
    features = series_features(values, window=3)
    last, mean, std, low, high, slope = features[-1]
    window = np.array([2.0, 4.0, 8.0])
    assert last == 8.0
    assert mean == pytest.approx(window.mean())
    assert std == pytest.approx(window.std())
    assert (low, high) == (2.0, 8.0)
    assert slope == pytest.approx(np.polyfit([0, 1, 2], window, 1)[0])


def test_first_row_uses_only_itself():
    features = series_features(np.array([[5.0, -1.0], [7.0, 3.0]]), window=4)
    first = features[0].reshape(2, len(STATS))
    assert first[0].tolist() == [5.0, 5.0, 0.0, 5.0, 5.0, 0.0]
    assert first[1].tolist() == [-1.0, -1.0, 0.0, -1.0, -1.0, 0.0]


def test_streaming_chunks_give_bit_identical_features_to_the_whole_series():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(500, 8)) * rng.uniform(0.1, 100, size=8)
    whole = series_features(values, window=30)
    chunks, history = [], values[:0]
    for start, stop in [(0, 1), (1, 17), (17, 30), (30, 31), (31, 250), (250, 500)]:
        chunks.append(window_features(history, values[start:stop], 30))
        history = np.concatenate([history, values[start:stop]])[-29:]
    assert np.array_equal(np.concatenate(chunks), whole)


def test_feature_names_are_sensor_major():
    assert feature_names(["a", "b"], ("mean", "max")) == ["a__mean", "a__max", "b__mean", "b__max"]


def test_window_fill_counts_readings_up_to_the_window():
    assert window_fill(0, 4, 3).tolist() == [1, 2, 3, 3]
    assert window_fill(5, 2, 3).tolist() == [3, 3]


def test_lags_are_the_readings_k_steps_back_and_the_window_mean_before_it_holds_them():
    values = np.array([[1.0], [2.0], [4.0], [8.0]])
    features = series_features(values, window=3, stats=("mean", "lag0", "lag2"))
    assert features[:, 1].tolist() == [1.0, 2.0, 4.0, 8.0]  # lag0: the event's own reading
    assert features[2:, 2].tolist() == [1.0, 2.0]  # lag2: two readings back
    assert features[:2, 2].tolist() == [1.0, 1.5]  # not in the window yet: its mean
    assert feature_names(["a"], ("mean", "lag0")) == ["a__mean", "a__lag0"]
