"""The residual detector (model_handlers.detector) fitted by training.detector: each evidence on the fault it is
made for (broken correlations and the rest: tests/inference_pipeline/jobs/test_backfill.py's scenarios),
calibration across very different sensors, per-device models with the fleet's as fallback, seasons on epoch time."""
import numpy as np
import pytest
import torch

from features.window import lag_names, series_features
from model_handlers.detector import detector_scores
from training.detector import FLEET, History, fit_detector, seasonal_fit
from training.settings import DetectorSettings

LAGS = 30
EPOCH = 1767225600.0


def lagged(values: np.ndarray) -> np.ndarray:
    return series_features(values, LAGS, lag_names(LAGS)).astype(np.float64)


def history(values: np.ndarray, times: np.ndarray, rows: slice) -> History:
    features = lagged(values)
    keep = np.arange(len(values))[rows]
    keep = keep[keep >= LAGS - 1]
    return History(features[keep], times[keep])


def correlated(n: int, seed: int, scales=(1e-3, 50.0, 2e4), offsets=(0.0, 1e3, -5e5)) -> np.ndarray:
    """Three channels with their own noise around a small shared AR(1) factor, each in its own units. (Broken
    correlations: the scenario tests. Residuals that wander for hundreds of readings cap the level evidence below its
    limit, the clip bounding it; only the range evidence then catches a gross deviation: README, "The detector".)"""
    rng = np.random.default_rng(seed)
    factor = np.zeros(n)
    for t in range(1, n):  # AR(1): wanders, returns
        factor[t] = 0.9 * factor[t - 1] + 0.15 * rng.normal()
    base = np.stack([factor + 0.3 * rng.normal(size=n) for _ in scales], axis=1)
    return base * np.array(scales) + np.array(offsets)


def scores_of(detector, index, name, values, times):
    devices = torch.full((len(times),), index.index(name) if name in index else 0, dtype=torch.long)
    with torch.no_grad():
        evidence = detector.evidence(torch.from_numpy(lagged(values)), torch.from_numpy(times), devices)
    raw, shares = detector_scores(evidence.amax(dim=-1))
    return evidence.numpy(), raw.numpy(), shares.numpy()


@pytest.fixture(scope="module")
def fitted():
    values = correlated(3000, 0)
    times = EPOCH + np.arange(3000.0)
    detector, index = fit_detector({"m1": history(values, times, slice(0, 1000))}, 3, LAGS, DetectorSettings())
    return detector, index, values, times


def test_normal_rows_stay_below_the_limit_whatever_the_units(fitted):
    detector, index, values, times = fitted
    _, raw, _ = scores_of(detector, index, "m1", values, times)
    assert (raw[1000:] >= 1.0).mean() < 0.01


def test_a_sustained_shift_scores_for_its_whole_duration_and_names_its_sensor(fitted):
    detector, index, values, times = fitted
    shifted = values.copy()
    shifted[1500:2100, 1] += 5 * 0.3 * 50.0  # 5 noise spreads on channel 1, for 600 rows
    evidence, raw, shares = scores_of(detector, index, "m1", shifted, times)
    assert (raw[1540:2100] >= 1.0).mean() > 0.95
    assert (shares[1540:2100].argmax(axis=1) == 1).mean() > 0.95
    assert (raw[2160:2600] >= 1.0).mean() < 0.02  # and falls back once it ends


def test_a_spike_scores_on_its_own_row_not_the_next(fitted):
    detector, index, values, times = fitted
    spiked = values.copy()
    spiked[1800, 2] += 12 * 0.3 * 2e4
    evidence, raw, _ = scores_of(detector, index, "m1", spiked, times)
    assert evidence[1800, 2, 0] >= 1.0
    assert evidence[1801, 2, 0] < 1.0


def test_a_stuck_sensor_is_caught_by_its_steps_even_at_a_normal_value(fitted):
    detector, index, values, times = fitted
    stuck = values.copy()
    stuck[1800:2000, 0] = np.median(values[:1000, 0])
    evidence, raw, shares = scores_of(detector, index, "m1", stuck, times)
    assert (evidence[1830:2000, 0, 2] >= 1.0).mean() > 0.95
    assert (shares[1830:2000].argmax(axis=1) == 0).mean() > 0.9


def test_devices_get_their_own_model_and_unknown_ones_the_fleets():
    times = EPOCH + np.arange(1500.0)
    a, b = correlated(1500, 1), correlated(1500, 2, offsets=(5.0, 9e3, 1e6))
    detector, index = fit_detector({"a": history(a, times, slice(0, 1000)), "b": history(b, times, slice(0, 1000))},
                                   3, LAGS, DetectorSettings())
    assert index == [FLEET, "a", "b"]
    _, own, _ = scores_of(detector, index, "b", b, times)
    _, crossed, _ = scores_of(detector, index, "a", b, times)  # b's readings judged by a's model
    _, fleet, _ = scores_of(detector, index, "new-device", b, times)
    assert (own[1000:] >= 1).mean() < 0.01 and (crossed[1000:] >= 1).mean() > 0.9
    assert np.isfinite(fleet).all()


def test_a_season_is_learned_from_the_history_and_followed_on_epoch_time():
    rng = np.random.default_rng(4)
    n, period = 4000, 97.3
    times = EPOCH + np.arange(n, dtype=np.float64)
    wave = np.sin(2 * np.pi * times / period)
    values = np.stack([3 * wave + rng.normal(size=n), -2 * wave + rng.normal(size=n)], axis=1)
    periods, _ = seasonal_fit(values[:400], times[:400], 1.0, DetectorSettings())
    assert periods == pytest.approx([period, period], rel=0.005)
    detector, index = fit_detector({"s": history(values, times, slice(0, 400))}, 2, LAGS, DetectorSettings())
    _, raw, _ = scores_of(detector, index, "s", values, times)
    assert (raw[400:1500] >= 1).mean() < 0.02  # a season is normal
    shifted = values.copy()
    shifted[1000:1300] = np.stack([3 * -wave[1000:1300], -2 * -wave[1000:1300]], axis=1) + rng.normal(size=(300, 2))
    _, raw, _ = scores_of(detector, index, "s", shifted, times)
    assert (raw[1050:1300] >= 1).mean() > 0.75  # half a period out of phase, same amplitude and mean: not


def test_noise_has_no_season():
    rng = np.random.default_rng(5)
    values = np.cumsum(rng.normal(size=(400, 2)), axis=0)
    periods, _ = seasonal_fit(values, np.arange(400.0), 1.0, DetectorSettings())
    assert (periods == 0).all()
