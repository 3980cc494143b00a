"""Causal, unsupervised backfill scoring of arbitrary time-series CSVs (``iotml score``) with the streaming
pipeline's detector (``model_handlers.detector``, fitted by ``training.detector``), adapting as it goes.

Per file: the first ``warmup_rows`` rows fit the detector (they are reported with score 0: nothing before them can
judge them); every later row is scored from its own trailing lags by a detector fitted only on earlier rows. The
detector adapts every ``refit_every`` rows:

- drift: it is refitted on the last ``warmup_rows`` rows it did not flag, so a change slow enough never to be
  flagged becomes the new normal as it happens;
- new regimes: when at least ``regime_share`` of the last ``adaptation_rows`` rows were flagged (a change that has
  lasted that long), it is refitted on the last ``warmup_rows`` rows, flagged or not. The adaptation horizon is
  therefore ``adaptation_rows`` (1,000 by default): a fault lasting less stays anomalous for its whole duration (SKAB's
  last up to about 600 rows), a level or operating-point change that lasts longer becomes normal.

Scores are the detector's calibrated ``v / (1 + v)`` (0.5 = its alert limit on every series, whatever its units);
``is_anomaly`` marks the rows inside debounced incidents (the streaming alert logic).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.tables import timestamps_to_epoch
from features.window import forward_fill, lag_names, series_features, window_fill
from inference_pipeline.results import PredictionBatch
from inference_pipeline.steps.alerts import DebounceState, debounce
from model_handlers.contract import error_to_score
from model_handlers.detector import ResidualDetector, detector_scores
from training.datasets import read_time_series
from training.detector import History, fit_detector, follow_drift
from training.settings import DetectorSettings

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackfillSettings:
    """Defaults chosen once for any series; nothing is tuned per file or from labels."""

    warmup_rows: int = 400
    min_warmup_rows: int = 40
    lags: int = 30
    refit_every: int = 100
    adaptation_rows: int = 1000
    regime_share: float = 0.9
    drift_rows: int = 500
    open_after: int = 3
    close_after: int = 10
    open_gap: int = 10
    detector: DetectorSettings = dataclasses.field(default_factory=DetectorSettings)


def _fit(lagged: np.ndarray, times: np.ndarray, lags: int, settings: DetectorSettings) -> ResidualDetector:
    return fit_detector({"series": History(lagged, times)}, lagged.shape[1] // lags, lags, settings)[0]


def _evidence(detector: ResidualDetector, lagged: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Each row's evidence per channel (n, S): 1.0 is the limit."""
    with torch.no_grad():
        evidence = detector(torch.from_numpy(np.ascontiguousarray(lagged, dtype=np.float32)),
                            torch.from_numpy(times.astype(np.float64)), torch.ones(len(times), dtype=torch.long))
    return evidence.numpy().astype(np.float64)


def score_series(values: np.ndarray, settings: BackfillSettings = BackfillSettings(),
                 times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly_score in [0, 1), is_anomaly 0/1) for each row of one series (n, S) at ``times`` (seconds; default:
    the row number)."""
    n = len(values)
    times = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    scores, flags = np.zeros(n), np.zeros(n, dtype=np.int8)
    warmup = min(settings.warmup_rows, n // 2)
    if warmup < settings.min_warmup_rows:
        LOG.warning("series of %d rows is too short to warm up (needs %d); all rows scored 0",
                    n, 2 * settings.min_warmup_rows)
        return scores, flags
    lags = max(2, min(settings.lags, warmup // 4))
    lagged = series_features(forward_fill(np.zeros(values.shape[1]), values), lags, lag_names(lags)).astype(np.float64)
    start = lags - 1
    detector = _fit(lagged[start:warmup], times[start:warmup], lags, settings.detector)
    raw = np.zeros(n)
    flagged = np.zeros(n, dtype=bool)
    for begin in range(warmup, n, settings.refit_every):
        end = min(n, begin + settings.refit_every)
        evidence = _evidence(detector, lagged[begin:end], times[begin:end])
        raw[begin:end] = detector_scores(torch.from_numpy(evidence))[0].numpy()
        flagged[begin:end] = raw[begin:end] >= 1.0
        recent = slice(max(start, end - settings.adaptation_rows), end)
        if end - warmup >= settings.adaptation_rows and flagged[recent].mean() >= settings.regime_share:
            rows = np.arange(max(start, end - warmup), end)
            detector = _fit(lagged[rows], times[rows], lags, settings.detector)
            continue
        quiet = np.repeat(~flagged[begin:end, None], evidence.shape[1], axis=1)  # a fault's rows move no channel
        follow_drift(detector, lagged[begin:end], times[begin:end], quiet, 1.0 / settings.drift_rows)
    scores[warmup:] = error_to_score(raw[warmup:], 1.0)
    flags[warmup:] = incident_flags(scores[warmup:], times[warmup:], settings)
    return scores, flags


def incident_flags(scores: np.ndarray, times: np.ndarray, settings: BackfillSettings) -> np.ndarray:
    """Rows inside a debounced incident (the streaming alert logic), as 0/1."""
    batch = PredictionBatch(
        device_id="series", event_ids=np.arange(len(scores)), event_time=times, received_at=times,
        processing_time=0.0, raw_score=scores, anomaly_score=scores, threshold=0.5,
        window_fill=window_fill(len(scores), len(scores), 1), window=1, model_name="backfill", model_version="0",
    )
    state = DebounceState()
    flags = np.zeros(len(scores), dtype=np.int8)
    for incident in debounce(state, batch, settings.open_after, settings.close_after, settings.open_gap):
        if incident.end_time is not None:
            flags[(times >= incident.start_time) & (times <= incident.end_time)] = 1
    if state.open is not None:
        flags[times >= state.open.start_time] = 1
    return flags


def score_file(source: Path, target: Path, timestamp_column: str | None, value_columns: list[str] | None,
               settings: BackfillSettings) -> Path:
    """Score one CSV into ``target``: the input columns plus anomaly_score and is_anomaly."""
    frame, ts_column, columns = read_time_series(source, timestamp_column, value_columns)
    epoch = timestamps_to_epoch(frame[ts_column])
    order = np.argsort(epoch, kind="stable")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)[order]
    scores, flags = score_series(values, settings, epoch[order])
    out = frame.copy()
    out["anomaly_score"] = np.empty(len(frame))
    out["is_anomaly"] = np.empty(len(frame), dtype=np.int8)
    out.iloc[order, out.columns.get_loc("anomaly_score")] = scores
    out.iloc[order, out.columns.get_loc("is_anomaly")] = flags
    target.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(target, index=False)
    return target


def score_path(source: Path, target: Path, timestamp_column: str | None = None,
               value_columns: list[str] | None = None, warmup_rows: int | None = None) -> list[Path]:
    """Score a CSV file, or every CSV under a folder into a folder mirroring its layout."""
    settings = BackfillSettings(warmup_rows=warmup_rows) if warmup_rows else BackfillSettings()
    if source.resolve() == target.resolve():
        raise ValueError(f"--output {target} is the input: scoring would overwrite the data it reads")
    if source.is_file():
        return [score_file(source, target, timestamp_column, value_columns, settings)]
    if not source.is_dir():
        raise FileNotFoundError(f"--input: no such file or folder: {source}")
    files = sorted(source.rglob("*.csv"))
    if not files:
        raise FileNotFoundError(f"--input: no CSV files under {source}")
    return [score_file(file, target / file.relative_to(source), timestamp_column, value_columns, settings)
            for file in files]
