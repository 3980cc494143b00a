"""Causal, unsupervised backfill scoring of arbitrary time-series CSVs (``iotml score``).

Per file: the first ``warmup`` rows fit the scaler, the autoencoder and its threshold (rows in the warm-up are
reported with score 0: nothing before them can judge them); every later row is scored from its own trailing window
with a model that saw only earlier rows. Features, network, score mapping and alert debouncing are the streaming
pipeline's own code.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from features.tables import timestamps_to_epoch
from features.window import forward_fill, series_features, window_fill
from inference_pipeline.results import PredictionBatch
from inference_pipeline.steps.alerts import DebounceState, debounce
from model_handlers.contract import error_to_score
from training.datasets import read_time_series
from training.train import errors_of, fit_autoencoder

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackfillSettings:
    """Defaults chosen once for any series; nothing is tuned per file or from labels."""

    warmup_rows: int = 400
    min_warmup_rows: int = 40
    window: int = 20
    hidden: tuple[int, ...] = (16, 4)
    epochs: int = 60
    threshold_quantile: float = 0.99
    threshold_margin: float = 3.0
    open_after: int = 3
    close_after: int = 10
    seed: int = 0


def score_series(values: np.ndarray, settings: BackfillSettings = BackfillSettings()) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly_score in [0, 1], is_anomaly 0/1) for each row of one series (n, S)."""
    n = len(values)
    scores, flags = np.zeros(n), np.zeros(n, dtype=np.int8)
    warmup = min(settings.warmup_rows, n // 2)
    window = max(3, min(settings.window, warmup // 8))
    if warmup < settings.min_warmup_rows:
        LOG.warning("series of %d rows is too short to warm up (needs %d); all rows scored 0",
                    n, 2 * settings.min_warmup_rows)
        return scores, flags
    features = series_features(forward_fill(np.zeros(values.shape[1]), values), window).astype(np.float64)
    fitted = features[window - 1:warmup]
    mean = fitted.mean(axis=0)
    std = fitted.std(axis=0)
    std = np.where(std > 1e-9 * (1.0 + np.abs(mean)), std, 1.0)
    scaled = ((features - mean) / std).astype(np.float32)
    train_rows = scaled[window - 1:warmup]
    cut = int(len(train_rows) * 0.75)
    fit = fit_autoencoder(train_rows[:cut], train_rows[cut:], settings.hidden, settings.epochs, 32, 3e-3,
                          settings.threshold_quantile, settings.threshold_margin, settings.seed, "cpu",
                          progress=False)
    errors = errors_of(fit.network, scaled[warmup:], "cpu")
    scores[warmup:] = error_to_score(errors, fit.threshold)
    flags[warmup:] = incident_flags(scores[warmup:], np.arange(warmup, n, dtype=np.float64), settings)
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
    for incident in debounce(state, batch, settings.open_after, settings.close_after):
        if incident.end_time is not None:
            flags[(times >= incident.start_time) & (times <= incident.end_time)] = 1
    if state.open is not None:
        flags[times >= state.open.start_time] = 1
    return flags


def score_file(source: Path, target: Path, timestamp_column: str | None, value_columns: list[str] | None,
               settings: BackfillSettings) -> Path:
    """Score one CSV into ``target``: the input columns plus anomaly_score and is_anomaly."""
    frame, ts_column, columns = read_time_series(source, timestamp_column, value_columns)
    order = np.argsort(timestamps_to_epoch(frame[ts_column]), kind="stable")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)[order]
    scores, flags = score_series(values, settings)
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
