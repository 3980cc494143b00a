"""Batch Beam feature pipeline: a labelled table (+ device metadata) -> per-device window features -> MLTransform
(fit or apply).

Uses the same featurisation (``FeatureSpec.featurise``: window and device metadata) and the same ScaleFeatures
transform as the streaming pipeline.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd

from features.scaling import ScaleFeatures
from features.schema import EventBatch, FeatureBatch
from features.spec import FeatureSpec
from training.simulate import read_frame


@dataclasses.dataclass
class DeviceFeatures:
    """Scaled features of one device's series, in event-time order, with the rows' event ids and times."""

    device_id: str
    event_ids: np.ndarray
    ts: np.ndarray
    features: np.ndarray
    filled: np.ndarray

    def full_windows(self, window: int) -> np.ndarray:
        """The rows whose window is full (what the model is trained and judged on)."""
        return self.filled >= window


GAP_INTERVALS = 10


def clean_rows(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The rules the streaming parser applies: readings finite or missing (NaN, imputed later), at least one
    present."""
    absent = [sensor for sensor in spec.sensors if sensor not in frame.columns]
    if absent:
        raise ValueError(f"training data lacks sensor columns {absent}")
    values = frame[list(spec.sensors)].to_numpy(dtype=np.float64)
    present = np.isfinite(values)
    return frame[(present | np.isnan(values)).all(axis=1) & present.any(axis=1)]


def fitted_spec(frame: pd.DataFrame, spec: FeatureSpec) -> FeatureSpec:
    """The spec with what training data decides when the config leaves it open: each sensor's median as its fill
    value, and ``GAP_INTERVALS`` times the median sampling interval as the gap that restarts a window."""
    frame = clean_rows(frame, spec)
    update = {}
    if spec.fill_values is None:
        medians = np.nan_to_num(np.nanmedian(frame[list(spec.sensors)].to_numpy(dtype=np.float64), axis=0))
        update["fill_values"] = tuple(float(value) for value in medians)
    if spec.max_gap_s is None:
        steps = frame.sort_values(["device_id", "ts"]).groupby("device_id")["ts"].diff().to_numpy()
        steps = steps[np.isfinite(steps) & (steps > 0)]
        update["max_gap_s"] = max(1.0, GAP_INTERVALS * float(np.median(steps))) if len(steps) else None
    return spec.model_copy(update=update)


def device_batches(frame: pd.DataFrame, spec: FeatureSpec,
                   metadata: Mapping[str, dict[str, Any]] | None = None) -> Iterator[tuple[str, EventBatch]]:
    """One EventBatch per device, sorted by event time, with the device's metadata record (``metadata``: by device
    id; a device without one takes the fields' defaults, as the stream does for a key its store lacks)."""
    frame = frame.sort_values(["device_id", "ts"], kind="stable")
    for device_id, rows in frame.groupby("device_id", sort=True):
        ids = rows["event_id"].astype(str).to_numpy(dtype=object) if "event_id" in rows else \
            np.asarray([f"{device_id}@{t:.6f}" for t in rows["ts"]], dtype=object)
        yield str(device_id), EventBatch(
            device_id=str(device_id), event_ids=ids, ts=rows["ts"].to_numpy(dtype=np.float64),
            values=rows[list(spec.sensors)].to_numpy(dtype=np.float64), received_at=np.zeros(len(rows)),
            metadata=(metadata or {}).get(str(device_id)),
        )


def batch_features(element: tuple[str, EventBatch], spec: FeatureSpec) -> tuple[str, FeatureBatch]:
    """The batch path: a device's whole series at once, from its first reading, by the streaming rule."""
    device_id, events = element
    out = spec.featurise(spec.empty_state(), events.ts, events.values, events.metadata)
    return device_id, FeatureBatch(events, out.features, out.filled, imputed=out.imputed)


class _ReadDeviceSeries(beam.DoFn):
    def __init__(self, spec: FeatureSpec, metadata: Mapping[str, dict[str, Any]] | None):
        self._spec = spec
        self._metadata = metadata

    def process(self, path: str) -> Iterator[tuple[str, EventBatch]]:
        yield from device_batches(clean_rows(read_frame(path), self._spec), self._spec, self._metadata)


def _save(element: tuple[str, FeatureBatch], out_dir: str) -> None:
    device_id, batch = element
    np.savez(Path(out_dir) / f"{device_id}.npz", event_ids=batch.events.event_ids.astype(str), ts=batch.events.ts,
             features=batch.features, filled=batch.filled)


def run_feature_pipeline(table: Path, spec: FeatureSpec, transform_dir: Path, out_dir: Path, fit: bool,
                         options: beam.options.pipeline_options.PipelineOptions,
                         metadata: Mapping[str, dict[str, Any]] | None = None) -> list[DeviceFeatures]:
    """Compute scaled features for every device of ``table`` (joined to its ``metadata`` record, see
    ``device_batches``); ``fit`` also writes the MLTransform artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Table" >> beam.Create([str(table)])
            | "ReadDeviceSeries" >> beam.ParDo(_ReadDeviceSeries(spec, metadata))
            | "DeviceFeatures" >> beam.Map(batch_features, spec)
            | "ScaleFeatures" >> ScaleFeatures(spec, transform_dir, fit=fit)
            | "Save" >> beam.Map(_save, str(out_dir))
        )
    shards = []
    for file in sorted(out_dir.glob("*.npz")):
        with np.load(file, allow_pickle=False) as data:
            shards.append(DeviceFeatures(file.stem, data["event_ids"], data["ts"], data["features"], data["filled"]))
    return shards
