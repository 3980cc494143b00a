import numpy as np
import pandas as pd
import pytest

from inference_pipeline.jobs.backfill import score_path, score_series
from tests.conftest import SHARED_DATA


def series(n=900, seed=0, shift_at=None):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = np.stack([np.sin(t / 20) + 0.1 * rng.normal(size=n), np.cos(t / 35) + 0.1 * rng.normal(size=n)], axis=1)
    if shift_at is not None:
        values[shift_at:, 0] += 3.0
    return values


def test_scores_are_causal_future_rows_never_change_past_scores():
    values = series(shift_at=700)
    changed = values.copy()
    changed[650:] = 50.0
    scores, flags = score_series(values)
    scores_changed, flags_changed = score_series(changed)
    assert np.array_equal(scores[:650], scores_changed[:650])


def test_a_level_shift_is_flagged_and_quiet_data_is_not():
    scores, flags = score_series(series(shift_at=700))
    assert flags[705:720].all()
    assert flags[700:].mean() > 0.6
    assert flags[400:690].mean() < 0.1
    assert ((0 <= scores) & (scores < 1)).all() and (scores[:400] == 0).all()


def test_short_series_are_scored_zero_not_rejected():
    scores, flags = score_series(series(n=50))
    assert (scores == 0).all() and (flags == 0).all()


def test_folder_is_mirrored_with_input_columns_kept(tmp_path):
    source = tmp_path / "in"
    (source / "line-a").mkdir(parents=True)
    frame = pd.DataFrame({"when": pd.date_range("2026-01-01", periods=900, freq="s").astype(str),
                          "a": series()[:, 0], "b": series()[:, 1], "note": "x"})
    frame.to_csv(source / "line-a" / "m1.csv", index=False)
    frame.to_csv(source / "m2.csv", sep=";", index=False)
    written = score_path(source, tmp_path / "out", value_columns=["a", "b"])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["line-a/m1.csv", "m2.csv"]
    out = pd.read_csv(tmp_path / "out" / "line-a" / "m1.csv")
    assert list(out.columns) == ["when", "a", "b", "note", "anomaly_score", "is_anomaly"]
    assert out["a"].tolist() == pytest.approx(frame["a"].tolist())
    assert set(out["is_anomaly"].unique()) <= {0, 1}


def test_missing_value_column_is_named(tmp_path):
    pd.DataFrame({"ts": range(10), "a": range(10)}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match="nope"):
        score_path(tmp_path / "x.csv", tmp_path / "y.csv", value_columns=["nope"])


@pytest.mark.skipif(not (SHARED_DATA / "skab").is_dir(), reason="needs ../shared/data/skab")
def test_skab_run_anomalies_score_higher_than_normal_rows(tmp_path):
    written = score_path(SHARED_DATA / "skab" / "valve1" / "1.csv", tmp_path / "1.csv", "datetime")
    out = pd.read_csv(written[0], sep=",")
    test = out.iloc[400:]
    anomalous = test["anomaly"] == 1
    assert test.loc[anomalous, "anomaly_score"].mean() > test.loc[~anomalous, "anomaly_score"].mean()
    assert test.loc[test["anomaly"] == 1, "is_anomaly"].mean() > test.loc[test["anomaly"] == 0, "is_anomaly"].mean()


# The detector against the causal rolling z-score on generated series with known anomalies (training.scenarios):
# PR-AUC per scenario, calibration pooled over every series. benchmarks/detector_scenarios.py runs 5 seeds.
SEEDS = range(3)
MAX_NORMAL_OVER_HALF = 0.05  # the band: on every series at most 5 % of normal rows score 0.5 or more


@pytest.fixture(scope="module")
def scenario_scores():
    from training.scenarios import SCENARIOS, rolling_zscore, scenario

    out = {}
    for name in SCENARIOS:
        for seed in SEEDS:
            generated = scenario(name, seed)
            out[name, seed] = (generated, score_series(generated.values)[0], rolling_zscore(generated.values, 400))
    return out


def test_each_scenario_ranks_anomalies_at_least_as_well_as_a_rolling_zscore(scenario_scores):
    from training.scenarios import SCENARIOS, pr_auc

    ours, theirs = {}, {}
    for name in SCENARIOS:
        pairs = [(pr_auc(s.labels, mine, s.graded), pr_auc(s.labels, z, s.graded))
                 for (kind, _), (s, mine, z) in scenario_scores.items() if kind == name]
        ours[name], theirs[name] = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        assert ours[name] >= theirs[name] - 0.02, (name, ours[name], theirs[name])
    assert np.mean(list(ours.values())) >= np.mean(list(theirs.values()))


def test_one_threshold_serves_every_series(scenario_scores):
    from training.scenarios import best_f1

    labels = np.concatenate([s.labels[s.graded] for s, _, _ in scenario_scores.values()])
    ours = np.concatenate([mine[s.graded] for s, mine, _ in scenario_scores.values()])
    theirs = np.concatenate([z[s.graded] for s, _, z in scenario_scores.values()])
    assert best_f1(labels, ours)[0] >= best_f1(labels, theirs)[0]
    for (name, seed), (s, mine, _) in scenario_scores.items():
        normal = s.graded & (s.labels == 0)
        assert (mine[normal] >= 0.5).mean() <= MAX_NORMAL_OVER_HALF, (name, seed)


def test_a_new_regime_becomes_normal_within_the_adaptation_horizon():
    from inference_pipeline.jobs.backfill import BackfillSettings

    rng = np.random.default_rng(3)
    values = rng.normal(size=(4000, 2)) + np.array([10.0, -4.0])
    values[1500:, 0] += 8.0  # a lasting change of operating point
    scores, _ = score_series(values)
    horizon = BackfillSettings().adaptation_rows
    assert (scores[1500:1500 + horizon - 100] >= 0.5).mean() > 0.9  # anomalous until the horizon...
    assert (scores[1500 + horizon + 300:] >= 0.5).mean() < 0.02  # ...then the new normal
