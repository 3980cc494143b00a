"""Turn model outputs into predictions: the decision at the threshold, provenance and explanations attached.

Every handler returns the same ``ModelOutput`` (``model_handlers.contract``). A batch whose features were scaled by
other MLTransform artifacts than the model version's own is never scored: each of its events becomes a dead letter
(``inference_error``), so a model swap cannot silently pair new weights with old scaling. A score the model could
not compute (a NaN or infinity from extreme inputs) counts as certainly anomalous (anomaly score 1, raw score the
largest float): never normal, and never a non-finite value in a sink.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.ml.inference.base import PredictionResult

from features.schema import DeadLetter, DeadLetterReason, FeatureBatch, event_dead_letters
from features.spec import FeatureSpec
from inference_pipeline.results import PredictionBatch
from model_handlers.contract import ModelOutput

DEAD_LETTERS = "dead_letters"


def batch_dead_letters(batch: FeatureBatch, detail: str, sensors: tuple[str, ...]) -> list[DeadLetter]:
    """Every event of a batch that could not be scored, as an ``inference_error`` dead letter whose payload is the
    event as validated, in the wire format."""
    return event_dead_letters(batch.events, DeadLetterReason.INFERENCE_ERROR, detail, sensors)


def imputed_sensors(imputed: np.ndarray | None, sensors: tuple[str, ...]) -> list[list[str] | None] | None:
    """Per row, the names of the sensors imputed (None for a complete row; None overall when none was). The mask
    has a column per window channel; derived readings (after the sensors) are imputed only with an input."""
    if imputed is None or not imputed.any():
        return None
    imputed = imputed[:, :len(sensors)]
    return [[sensors[j] for j in np.flatnonzero(row)] if row.any() else None for row in imputed]


def finite_scores(raw: np.ndarray, anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 with non-finite ones made certainly anomalous."""
    raw, anomaly = np.asarray(raw, dtype=np.float64), np.asarray(anomaly, dtype=np.float64)
    broken = ~(np.isfinite(raw) & np.isfinite(anomaly))
    if broken.any():
        raw, anomaly = np.where(broken, np.finfo(np.float64).max, raw), np.where(broken, 1.0, anomaly)
    return raw, anomaly


def _per_row(names: tuple[str, ...], values: np.ndarray, rows: np.ndarray) -> list[dict[str, float] | None]:
    """``{name: value}`` for the rows selected, None elsewhere (explanations are kept for anomalies only)."""
    out: list[dict[str, float] | None] = [None] * len(values)
    for i in np.flatnonzero(rows).tolist():
        out[i] = {name: round(float(v), 4) for name, v in zip(names, values[i])}
    return out


def to_predictions(batch: FeatureBatch, output: ModelOutput, threshold: float, window: int,
                   device_id: str, sensors: tuple[str, ...] = ()) -> PredictionBatch:
    events = batch.events
    raw, anomaly = finite_scores(output.raw_score, output.anomaly_score)
    predictions = PredictionBatch(
        device_id=device_id, event_ids=events.event_ids, event_time=events.ts, received_at=events.received_at,
        processing_time=time.time(), raw_score=raw, anomaly_score=anomaly, threshold=threshold,
        window_fill=batch.filled, window=window, model_name=output.model.name, model_version=output.model.version,
        imputed=imputed_sensors(batch.imputed, sensors), state=batch.state, notice=events.notice, late=batch.late,
        enrichment=events.enrichment)
    if output.class_probabilities is not None:
        predictions.label = output.label.tolist()
        predictions.class_probabilities = _per_row(output.class_names, output.class_probabilities,
                                                   np.ones(len(batch), dtype=bool))
    if output.sensor_contributions is not None:
        predictions.sensor_contributions = _per_row(output.sensor_names, output.sensor_contributions,
                                                    predictions.is_anomaly.astype(bool))
    return predictions


class _ScoreFn(beam.DoFn):
    def __init__(self, threshold: float, window: int, sensors: tuple[str, ...]):
        self._threshold = threshold
        self._window = window
        self._sensors = sensors

    def process(self, element: tuple[str, PredictionResult]) -> Iterator:
        result = element[1]
        batch: FeatureBatch = result.example
        device_id = batch.events.device_id
        output: ModelOutput = result.inference
        if batch.scaled_by != output.model.transform_id:
            detail = (f"model {output.model} expects features scaled by its transform {output.model.transform_id}, "
                      f"got {batch.scaled_by}")
            for letter in batch_dead_letters(batch, detail, self._sensors):
                yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
            return
        yield device_id, to_predictions(batch, output, self._threshold, self._window, device_id, self._sensors)


class ScorePredictions(beam.PTransform):
    """(key, PredictionResult[FeatureBatch, ModelOutput]) -> main: (device_id, PredictionBatch), whatever the key
    inference was routed by (a device or its model group);
    ``dead_letters``: DeadLetter for batches scaled by another version's transform.

    ``threshold``: the anomaly score at or above which a prediction is anomalous (0.5: the version's calibrated
    threshold); ``spec``: the feature spec (its window, below which a device is warming up and never anomalous, and
    its sensors, to write refused events back in the wire format).
    """

    def __init__(self, threshold: float, spec: FeatureSpec):
        super().__init__()
        self._fn = _ScoreFn(threshold, spec.window, spec.sensors)

    def expand(self, results: beam.PCollection) -> pvalue.DoOutputsTuple:
        return results | "ToPredictions" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTERS, main="predictions")
