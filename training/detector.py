"""Fitting the residual detector (``model_handlers.detector``) on each device's normal history, and on the fleet's.

Everything is closed form: a seasonal profile per channel (the autocorrelation's first peak after its first zero
crossing, when the history holds at least two periods and the harmonics explain enough of the channel), robust
location and scale, a ridge regression of each channel on the others, then the normal spread of each evidence on the
same history, computed by the detector's own code so that training and serving cannot disagree.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from features.spec import FeatureSpec
from model_handlers.detector import KIND, ResidualDetector, detector_scores
from training.settings import DetectorSettings, TrainingSettings
from training.train import FitResult, errors_of

if TYPE_CHECKING:
    from training.feature_pipeline import DeviceFeatures

FLEET = "__fleet__"  # the fallback model's name in a version's device index
SPIKE_MARGIN = 1.5  # a spike's limit is at least half again the largest jump of the history
TRIM_AT = 0.5  # a refit leaves out the rows whose evidence passed half an alert limit
RANGE_MARGIN = 10.0  # a whole window of residuals beyond 10 times the history's largest is out of range
MIN_ROWS = 30  # the shortest history a device gets a model of its own from


@dataclasses.dataclass
class History:
    """One device's normal rows: lagged readings (n, channels * lags) channel-major, and their times (n,)."""

    lagged: np.ndarray
    times: np.ndarray


def find_period(values: np.ndarray, max_lag: int) -> int | None:
    """The lag of the autocorrelation's highest peak after its first zero crossing, if above 0.3 (else None)."""
    x = values - values.mean()
    n = len(x)
    if n < 8 or not np.any(x):
        return None
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:max_lag + 1]
    acf = acf / acf[0]
    negative = np.flatnonzero(acf < 0)
    if not len(negative) or negative[0] + 1 >= len(acf) - 1:
        return None
    start = negative[0]
    peak = start + int(np.argmax(acf[start:]))
    if acf[peak] < 0.3 or peak >= len(acf) - 1:
        return None
    return int(peak)


def harmonic_basis(times: np.ndarray, period_s: float, harmonics: int) -> np.ndarray:
    angles = 2 * np.pi * times[:, None] / period_s * np.arange(1, harmonics + 1)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)


def seasonal_fit(values: np.ndarray, times: np.ndarray, interval: float,
                 settings: DetectorSettings) -> tuple[np.ndarray, np.ndarray]:
    """Periods in seconds (S,) and harmonic coefficients (S, 2 * harmonics) of a history's channels (n, S); period 0
    where none is found or kept. Channels whose autocorrelation peaks within 15 % of each other share one period,
    refined on all of them at once (a common cause, and a far better estimate from a short history). A channel keeps
    its season when the harmonics explain ``min_seasonal_share`` of it, both fitted on the whole history and fitted
    on its first half then judged on the second."""
    n, channels = values.shape
    periods, coefficients = np.zeros(channels), np.zeros((channels, 2 * settings.harmonics))
    lags = {j: lag for j in range(channels) if (lag := find_period(values[:, j], n // 2)) is not None}
    centred = values - values.mean(axis=0)
    variance = np.maximum(centred.var(axis=0), 1e-300)
    for group in _period_groups(lags):
        columns = centred[:, group]

        def fitted(period: float) -> tuple[float, np.ndarray, np.ndarray]:
            basis = harmonic_basis(times, period, settings.harmonics)
            solution, *_ = np.linalg.lstsq(basis, columns, rcond=None)
            residual = (columns - basis @ solution).var(axis=0) / variance[group]
            return float(residual.sum()), residual, solution

        period = float(np.median([lags[j] for j in group])) * interval
        # the autocorrelation's peak is a few rows off on short noisy histories, and a period a row off drifts out
        # of phase within a few dozen periods: refine it by least squares within a tenth of it, then to 1/40 row
        for width in (max(2.0, 0.1 * period / interval), 0.25, 0.025):
            candidates = period + interval * width * np.linspace(-1.0, 1.0, 41)
            period = float(min(candidates[candidates > 0], key=lambda p: fitted(p)[0]))
        _, residual, solution = fitted(period)
        held_out = _held_out_share(columns, times, period, settings.harmonics)
        for k, j in enumerate(group):
            if min(1.0 - residual[k], held_out[k]) >= settings.min_seasonal_share:
                periods[j], coefficients[j] = period, solution[:, k]
    return periods, coefficients


def harmonic_coefficients(values: np.ndarray, times: np.ndarray, periods: np.ndarray,
                          settings: DetectorSettings) -> np.ndarray:
    """Each channel's harmonic coefficients at its given period (S, 2 * harmonics); zeros where the period is 0."""
    coefficients = np.zeros((values.shape[1], 2 * settings.harmonics))
    for j in np.flatnonzero(periods > 0):
        basis = harmonic_basis(times, float(periods[j]), settings.harmonics)
        coefficients[j], *_ = np.linalg.lstsq(basis, values[:, j] - values[:, j].mean(), rcond=None)
    return coefficients


def _held_out_share(columns: np.ndarray, times: np.ndarray, period: float, harmonics: int) -> np.ndarray:
    """The share of each column's variance in the history's second half that harmonics fitted on its first half
    explain: a season must foretell, not just fit (a spurious one explains nothing it did not see)."""
    half = len(times) // 2
    basis = harmonic_basis(times, period, harmonics)
    first, second = columns[:half] - columns[:half].mean(axis=0), columns[half:] - columns[half:].mean(axis=0)
    solution, *_ = np.linalg.lstsq(basis[:half], first, rcond=None)
    residual = ((second - basis[half:] @ solution) ** 2).mean(axis=0)
    return 1.0 - residual / np.maximum((second ** 2).mean(axis=0), 1e-300)


def _period_groups(lags: Mapping[int, int]) -> list[list[int]]:
    """Channels grouped by autocorrelation peak: within 15 % of the group's shortest."""
    groups: list[list[int]] = []
    for j in sorted(lags, key=lags.get):
        if groups and lags[j] <= 1.15 * lags[groups[-1][0]]:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def _spread(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Median and scale (the interquartile range over 1.349; the standard deviation where that is 0)."""
    median = np.median(values, axis=axis)
    q75, q25 = np.percentile(values, [75, 25], axis=axis)
    scale = (q75 - q25) / 1.349
    scale = np.where(scale > 0, scale, values.std(axis=axis))
    return median, np.maximum(scale, 1e-6 * (1.0 + np.abs(median)))


def _floor(std: np.ndarray, floor: float) -> np.ndarray:
    return np.maximum(np.nan_to_num(std, nan=floor), floor)


def fit_device(history: History, channels: int, lags: int, settings: DetectorSettings,
               seasonal: bool = True) -> dict[str, torch.Tensor]:
    """One device's detector tables from its normal history, refitted once without the rows the first fit finds
    beyond its alert limits (history is rarely clean: start-up transients, unnoticed faults), keeping at least
    ``1 - settings.max_trim`` of the rows."""
    tables = _fit_tables(history, channels, lags, settings, seasonal)
    if settings.max_trim <= 0 or len(history.times) < 4:
        return tables
    detector = _detector(channels, lags, 1, settings)
    with torch.no_grad():
        for name, buffer in detector.named_buffers():
            if name != "weights":
                buffer[0] = tables[name]
        evidence = detector(torch.from_numpy(history.lagged.astype(np.float32)),
                            torch.from_numpy(history.times.astype(np.float64)),
                            torch.zeros(len(history.times), dtype=torch.long)).amax(dim=1).numpy()
    keep = evidence < max(TRIM_AT, float(np.quantile(evidence, 1.0 - settings.max_trim)))
    if keep.all():
        return tables
    # the kept rows have gaps, which an autocorrelation cannot read: the refit keeps the periods found on them all
    return _fit_tables(History(history.lagged[keep], history.times[keep]), channels, lags, settings, seasonal,
                       tables["period"].numpy())


def _fit_tables(history: History, channels: int, lags: int, settings: DetectorSettings, seasonal: bool,
                periods: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    detector = _detector(channels, lags, 1, settings)
    n = len(history.times)
    x = history.lagged.reshape(n, channels, lags).astype(np.float64)
    newest = x[:, :, 0]
    interval = float(np.median(np.diff(history.times))) if n > 1 else 1.0
    interval = interval if interval > 0 else 1.0
    detector.interval[0] = interval
    if seasonal:
        periods, coefficients = (seasonal_fit(newest, history.times, interval, settings) if periods is None
                                 else (periods, harmonic_coefficients(newest, history.times, periods, settings)))
        detector.period[0] = torch.from_numpy(periods)
        detector.seasonal[0] = torch.from_numpy(coefficients).float()
    lagged = torch.from_numpy(history.lagged.astype(np.float32))
    times = torch.from_numpy(history.times.astype(np.float64))
    devices = torch.zeros(n, dtype=torch.long)
    detector.scale[0] = 1.0
    with torch.no_grad():
        deseasoned = detector.standardised(lagged, times, devices)[:, :, 0].double().numpy()
        location, scale = _spread(deseasoned)
        detector.location[0] = torch.from_numpy(location).float()
        detector.scale[0] = torch.from_numpy(scale).float()
        standard = detector.standardised(lagged, times, devices)
        detector.coupling[0] = torch.from_numpy(_coupling(standard[:, :, 0].double().numpy(), settings.ridge)).float()
        residual = detector.residuals(standard, devices)[:, :, 0].double()
        detector.residual_mean[0] = residual.mean(dim=0).float()
        detector.residual_std[0] = torch.from_numpy(_floor(residual.std(dim=0).numpy(), 1e-3)).float()
        typical = (standard[..., :-1] - standard[..., 1:]).abs().transpose(0, 1).reshape(channels, -1)
        median, mean = typical.median(dim=1).values, typical.mean(dim=1)
        detector.step_scale[0] = torch.where(median > 0, median, mean).clamp_min(1e-6)
        steps = detector.log_steps(standard, devices)
        detector.step_mean[0] = steps.mean(dim=(0, 2))
        detector.step_std[0] = torch.from_numpy(_floor(steps.std(dim=(0, 2)).numpy(), 1e-3)).float()
        _, spike, level, spread = detector.raw_evidence(lagged, times, devices)
        spike_std = torch.from_numpy(_floor(spike.std(dim=0).numpy(), 1e-3)).float()
        detector.spike_limit[0] = torch.maximum(SPIKE_MARGIN * spike.abs().amax(dim=0), settings.limits[0] * spike_std)
        white = float(detector.weights.square().sum().sqrt())
        detector.level_mean[0] = level.mean(dim=0)
        detector.level_std[0] = torch.from_numpy(_floor(level.std(dim=0).numpy(), 0.5 * white)).float()
        detector.range_limit[0] = (RANGE_MARGIN * (residual - residual.mean(dim=0)).abs().amax(dim=0)).float(
        ).clamp_min(1e-6)
        detector.spread_mean[0] = spread.mean(dim=0)
        detector.spread_std[0] = torch.from_numpy(_floor(spread.std(dim=0).numpy(), 0.5 * white)).float()
    return {name: buffer[0].clone() for name, buffer in detector.named_buffers() if name != "weights"}


def _coupling(z: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge coefficients predicting each channel from the others (zero diagonal), penalty ``ridge`` per row."""
    n, channels = z.shape
    coupling = np.zeros((channels, channels))
    if channels < 2 or n < 2:
        return coupling
    centred = z - z.mean(axis=0)
    gram = centred.T @ centred
    for j in range(channels):
        others = [i for i in range(channels) if i != j]
        a = gram[np.ix_(others, others)] + ridge * n * np.eye(channels - 1)
        coupling[j, others] = np.linalg.solve(a, gram[others, j])
    return coupling


def _detector(channels: int, lags: int, devices: int, settings: DetectorSettings) -> ResidualDetector:
    return ResidualDetector(channels, lags, devices, settings.harmonics, settings.smoothing, settings.clip,
                            settings.limits)


def fit_detector(histories: Mapping[str, History], channels: int, lags: int,
                 settings: DetectorSettings) -> tuple[ResidualDetector, list[str]]:
    """A detector holding the fleet's model (device 0, fitted on every history pooled, without seasons) and one
    per device with at least ``MIN_ROWS`` rows once settled (the others get the fleet's); returns it with its device
    index (``FLEET`` first). A history's first ``settle_rows`` are left out when it is longer than twice that."""
    settle = lags if settings.settle_rows is None else settings.settle_rows
    histories = {name: History(h.lagged[settle:], h.times[settle:]) if len(h.times) > 2 * settle else h
                 for name, h in histories.items()}
    names = sorted(name for name, h in histories.items() if len(h.times) >= MIN_ROWS)
    if not names:
        raise ValueError(f"no device history of at least {MIN_ROWS} rows to fit the detector on")
    pooled = History(np.concatenate([histories[name].lagged for name in names]),
                     np.concatenate([histories[name].times for name in names]))
    tables = [fit_device(pooled, channels, lags, settings, seasonal=False)]
    tables += [fit_device(histories[name], channels, lags, settings) for name in names]
    detector = _detector(channels, lags, len(tables), settings)
    with torch.no_grad():
        for name, buffer in detector.named_buffers():
            if name != "weights":
                buffer.copy_(torch.stack([table[name] for table in tables]))
    return detector.eval(), [FLEET, *names]


def architecture(detector: ResidualDetector, device_index: list[str]) -> dict:
    """What a version records to rebuild the detector (``ARCHITECTURES`` kind ``detector``)."""
    return {"kind": KIND, "channels": detector.channels, "lags": detector.lags, "devices": len(device_index),
            "harmonics": detector.harmonics, "smoothing": detector.smoothing, "clip": detector.clip,
            "limits": list(detector.limits), "device_index": device_index}


def check_detector_spec(spec: FeatureSpec) -> None:
    """The detector reads each channel's lagged readings only: ``features.stats: []`` and ``features.lags >= 2``."""
    if spec.stats or spec.lags < 2:
        raise ValueError(f"training.model 'detector' reads each channel's lagged readings: set features.stats to [] "
                         f"and features.lags to 2 or more (at most the window); got stats {list(spec.stats)}, "
                         f"lags {spec.lags}")


def shard_history(shard: "DeviceFeatures", spec: FeatureSpec) -> History:
    """A device's full-window rows (the detector's input columns) and times."""
    rows = shard.full_windows(spec.window)
    return History(shard.features[rows, :len(spec.window_feature_names)], shard.ts[rows])


def fit_detector_version(shards: "list[DeviceFeatures]", spec: FeatureSpec,
                         training: TrainingSettings) -> tuple[FitResult, dict]:
    """The detector fitted on each device's training features: the fit (threshold 1.0: the evidence is calibrated;
    ``holdout_errors``: the raw scores of the rows it was fitted on) and the architecture a version records."""
    histories = {shard.device_id: shard_history(shard, spec) for shard in shards}
    detector, index = fit_detector(histories, len(spec.channels), spec.lags, training.detector)
    record = architecture(detector, index)
    fitted = shard_errors(detector, record, shards, spec)
    return FitResult(detector, 1.0, [], fitted), record


def shard_errors(network: nn.Module, record: dict, shards: "list[DeviceFeatures]", spec: FeatureSpec) -> np.ndarray:
    """The raw scores of the shards' full-window rows: the detector's evidence for each row's device, or the
    network's reconstruction error."""
    if record.get("kind") != KIND:
        return errors_of(network, np.concatenate([s.features[s.full_windows(spec.window)] for s in shards]), "cpu")
    position = {name: i for i, name in enumerate(record["device_index"])}
    out = []
    with torch.no_grad():
        for shard in shards:
            history = shard_history(shard, spec)
            devices = torch.full((len(history.times),), position.get(shard.device_id, 0), dtype=torch.long)
            evidence = network(torch.from_numpy(history.lagged.astype(np.float32)),
                               torch.from_numpy(history.times.astype(np.float64)), devices)
            out.append(detector_scores(evidence)[0].numpy())
    return np.concatenate(out) if out else np.empty(0)


def follow_drift(detector: ResidualDetector, lagged: np.ndarray, times: np.ndarray, quiet: np.ndarray,
                 rate: float, device: int = 1) -> None:
    """Move ``device``'s location, and its seasonal profile's phase and amplitude, towards what each channel's
    ``quiet`` rows (n, S: normal-looking) show, ``rate`` of the way per quiet row: a slow drift, or a season whose
    period was estimated a little off, becomes the new normal as it happens."""
    if not len(times) or rate <= 0:
        return
    with torch.no_grad():
        devices = torch.full((len(times),), device, dtype=torch.long)
        z = detector.standardised(torch.from_numpy(np.ascontiguousarray(lagged, dtype=np.float32)),
                                  torch.from_numpy(times.astype(np.float64)), devices)[:, :, 0].double().numpy()
        scale = detector.scale[device].double().numpy()
        periods = detector.period[device].numpy()
        for j in range(z.shape[1]):
            rows = quiet[:, j]
            step = min(1.0, rate * rows.sum())
            if step <= 0:
                continue
            values = z[rows, j]
            if periods[j] > 0 and rows.sum() > 2 * detector.harmonics:
                basis = harmonic_basis(times[rows], float(periods[j]), detector.harmonics)
                gram = basis.T @ basis + rows.sum() * 1e-3 * np.eye(basis.shape[1])
                correction = np.linalg.solve(gram, basis.T @ (values - values.mean()))
                detector.seasonal[device, j] += torch.from_numpy(step * scale[j] * correction).float()
            detector.location[device, j] += float(step * scale[j] * values.mean())
