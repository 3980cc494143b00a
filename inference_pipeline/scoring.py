"""Turn model outputs into predictions: score in [0, 1], decision at the threshold, provenance attached."""
from __future__ import annotations

import dataclasses
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from features.schema import FeatureBatch

PREDICTION_COLUMNS = (
    "event_id", "device_id", "event_time", "received_at", "processing_time", "anomaly_score", "raw_score",
    "threshold", "is_anomaly", "window_fill", "model_name", "model_version",
)


@dataclasses.dataclass
class PredictionBatch:
    """Predictions for one device batch, as columns."""

    device_id: str
    event_ids: np.ndarray
    event_time: np.ndarray
    received_at: np.ndarray
    processing_time: float
    raw_score: np.ndarray
    anomaly_score: np.ndarray
    threshold: float
    window_fill: np.ndarray
    window: int
    model_name: str
    model_version: str

    @property
    def is_anomaly(self) -> np.ndarray:
        """Above the threshold with a full window: a device still warming up never raises an anomaly."""
        return ((self.anomaly_score >= self.threshold) & (self.window_fill >= self.window)).astype(np.int8)

    def __len__(self) -> int:
        return len(self.event_ids)

    def rows(self) -> list[tuple]:
        """One tuple per prediction in PREDICTION_COLUMNS order (the sink row format)."""
        n = len(self)
        return list(zip(
            self.event_ids.tolist(), [self.device_id] * n, self.event_time.tolist(), self.received_at.tolist(),
            [self.processing_time] * n, self.anomaly_score.tolist(), self.raw_score.tolist(), [self.threshold] * n,
            self.is_anomaly.tolist(), self.window_fill.tolist(), [self.model_name] * n, [self.model_version] * n,
        ))


def to_predictions(element: tuple[str, PredictionResult], threshold: float, window: int) -> tuple[str, PredictionBatch]:
    device_id, result = element
    batch: FeatureBatch = result.example
    raw, score = result.inference
    name, _, version = (result.model_id or "unknown/unknown").rpartition("/")
    events = batch.events
    return device_id, PredictionBatch(
        device_id=device_id, event_ids=events.event_ids, event_time=events.ts, received_at=events.received_at,
        processing_time=time.time(), raw_score=np.asarray(raw, dtype=np.float64),
        anomaly_score=np.asarray(score, dtype=np.float64), threshold=threshold, window_fill=batch.filled,
        window=window, model_name=name, model_version=version,
    )


@beam.ptransform_fn
def ScorePredictions(results: beam.PCollection, threshold: float, window: int) -> beam.PCollection:
    """(device_id, PredictionResult) -> (device_id, PredictionBatch)."""
    return results | "ToPredictions" >> beam.Map(to_predictions, threshold, window)
