"""The labelled synthetic scenarios, the rolling z-score baseline and the grading metrics."""
from __future__ import annotations

import numpy as np
import pytest

from training.scenarios import SCENARIOS, best_f1, f1_at, pr_auc, rolling_zscore, scenario

SEEDS = (0, 1, 2)
GAP = 100  # normal rows the brief requires around anomalies


def anomalies(series):
    return [s for s in series.segments if s.anomalous]


@pytest.mark.parametrize("name", SCENARIOS)
def test_deterministic_per_seed_and_different_across_seeds(name):
    a, b, other = scenario(name, 0), scenario(name, 0), scenario(name, 1)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.graded, b.graded) and a.segments == b.segments
    assert a.values.shape != other.values.shape or not np.allclose(a.values, other.values)
    assert a.segments != other.segments


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_series_invariants(name, seed):
    series = scenario(name, seed)
    values, labels, graded = series.values, series.labels, series.graded
    n = len(values)
    assert values.dtype == np.float64 and values.ndim == 2 and np.isfinite(values).all()
    assert labels.dtype == np.int8 and set(np.unique(labels)) <= {0, 1} and labels.shape == (n,)
    assert graded.dtype == bool and graded.shape == (n,)
    assert (12000 <= n <= 13000) if name == "regime_changes" else (3000 <= n <= 4000)
    assert values.shape[1] == 1 if name == "single_column" else 3 <= values.shape[1] <= 5
    assert not graded[:series.warmup].any() and not labels[~graded].any()
    assert labels[graded].any() and (labels[graded] == 0).any()
    # labels are exactly the anomalous segments; they start after the warm-up and sit GAP normal rows apart
    expected = np.zeros(n, dtype=np.int8)
    found = anomalies(series)
    for segment in found:
        expected[segment.start:segment.stop] = 1
    assert np.array_equal(labels, expected)
    assert found[0].start >= series.warmup + GAP
    assert all(b.start - a.stop >= GAP for a, b in zip(found, found[1:]))
    assert found[-1].stop <= n
    if values.shape[1] > 1:  # wildly different channel scales
        spread = values.std(axis=0)
        assert spread.max() / spread.min() > 1e4


def test_spike_rate_and_single_rows():
    series = scenario("spikes", 3)
    assert all(s.stop - s.start == 1 for s in series.segments)
    assert 0.006 <= series.labels.mean() <= 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_broken_correlation_stays_inside_normal_range_and_decouples(seed):
    series = scenario("broken_correlation", seed)
    normal = series.labels == 0
    correlation = np.corrcoef(series.values[normal].T)
    assert correlation[np.triu_indices(len(correlation), 1)].min() > 0.9
    for segment in series.segments:
        c = segment.channels[0]
        inside = series.values[segment.start:segment.stop, c]
        low, high = series.values[normal, c].min(), series.values[normal, c].max()
        assert low <= inside.min() and inside.max() <= high
        assert np.mean((inside == low) | (inside == high)) < 0.02  # inside by construction, not by clipping
        rows = series.values[segment.start:segment.stop]
        others = [j for j in range(rows.shape[1]) if j != c]
        assert np.corrcoef(rows.T)[c, others].mean() < 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_regime_change_grace_rows_are_ungraded_and_anomaly_free(seed):
    series = scenario("regime_changes", seed)
    changes = [s for s in series.segments if s.kind == "regime_change"]
    assert len(changes) == 2 and all(s.stop - s.start == 2000 for s in changes)
    for change in changes:
        assert not series.graded[change.start:change.stop].any() and series.graded[change.stop]
        assert all(a.stop + GAP <= change.start or a.start >= change.stop + GAP for a in anomalies(series))
    assert (~series.graded[series.warmup:]).sum() == 4000
    assert [s.kind for s in series.segments if not s.anomalous].count("normal_drift") == 1
    shorter = scenario("regime_changes", seed, grace=1000)
    assert (~shorter.graded[shorter.warmup:]).sum() == 2000


def test_stuck_channel_holds_its_last_value():
    series = scenario("stuck", 0)
    for segment in series.segments:
        c = segment.channels[0]
        assert (series.values[segment.start:segment.stop, c] == series.values[segment.start - 1, c]).all()
        assert series.values[segment.stop, c] != series.values[segment.start - 1, c]


def test_variance_change_changes_the_noise():
    series = scenario("variance_change", 0)
    kinds = {s.kind for s in series.segments}
    assert kinds == {"variance_up", "variance_down"}
    steps = np.diff(series.values, axis=0)
    normal = (series.labels[1:] == 0) & series.graded[1:]
    for segment in series.segments:
        for c in segment.channels:
            ratio = steps[segment.start:segment.stop - 1, c].std() / steps[normal, c].std()
            assert ratio > 2.0 if segment.kind == "variance_up" else ratio < 0.5


def test_seasonality_change_keeps_amplitude_and_mean():
    series = scenario("seasonality_change", 0)
    assert {s.kind for s in series.segments} == {"phase_jump", "period_change"}
    normal = (series.labels == 0) & series.graded
    for segment in series.segments:
        for c in segment.channels:
            inside, usual = series.values[segment.start:segment.stop, c], series.values[normal, c]
            assert 0.75 < inside.std() / usual.std() < 1.25
            assert abs(inside.mean() - usual.mean()) < 0.3 * usual.std()


def test_single_column_has_each_kind():
    series = scenario("single_column", 4)
    assert series.values.shape[1] == 1
    kinds = [s.kind for s in series.segments]
    assert kinds.count("level_shift") == kinds.count("variance_change") == 1 and kinds.count("spike") >= 6


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario("nope", 0)


def test_rolling_zscore_by_hand():
    values = np.array([[1.0, 0.0, 5.0], [2.0, 0.0, 5.0], [3.0, 0.0, 5.0], [4.0, 0.0, 5.0], [10.0, 0.0, 5.0]])
    scores = rolling_zscore(values, 4)
    assert scores[:4].tolist() == [0.0] * 4
    assert scores[4] == pytest.approx(7.5 / np.sqrt(1.25))
    frozen = values.copy()
    frozen[4, 2] = 6.0  # a change after a frozen window scores enormously
    assert rolling_zscore(frozen, 4)[4] > 1e6
    assert rolling_zscore(values[:, 0], 4)[4] == pytest.approx(scores[4])


def test_rolling_zscore_matches_a_loop_with_large_offsets():
    rng = np.random.default_rng(7)
    values = np.array([1e6, -3.0, 0.0]) + np.array([1e-3, 1e4, 1.0]) * rng.standard_normal((300, 3))
    window = 50
    expected = np.zeros(300)
    for t in range(window, 300):
        past = values[t - window:t]
        expected[t] = (np.abs(values[t] - past.mean(axis=0)) / past.std(axis=0)).max()
    np.testing.assert_allclose(rolling_zscore(values, window), expected, rtol=1e-5)


def test_rolling_zscore_is_causal():
    values = scenario("regime_changes", 0).values
    scores = rolling_zscore(values, 400)
    changed = values.copy()
    changed[5000] += 1e3 * values.std(axis=0)
    again = rolling_zscore(changed, 400)
    assert np.array_equal(scores[:5000], again[:5000]) and again[5000] > scores[5000]


def test_pr_auc_and_best_f1_by_hand():
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.95])
    graded = np.array([True, True, True, True, False])  # the ungraded top score would otherwise be a false positive
    assert pr_auc(labels, scores, graded) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert pr_auc(labels, scores) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert best_f1(labels, scores, graded) == pytest.approx((0.8, 0.7))
    assert f1_at(labels, scores, 0.7, graded) == pytest.approx(0.8)
    assert pr_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # ties form one threshold
    assert best_f1(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx((2 / 3, 0.5))
    assert np.isnan(pr_auc(np.zeros(3), np.arange(3.0)))
    assert best_f1(np.zeros(3), np.arange(3.0)) == (0.0, float("inf"))


def test_pr_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = (rng.random(500) < 0.2).astype(np.int8)
    scores = np.round(rng.random(500) + 0.3 * labels, 2)  # rounded: many ties
    assert pr_auc(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))
