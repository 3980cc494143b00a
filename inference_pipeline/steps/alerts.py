"""Incidents per device: debounced anomaly alerts (opened and closed by hysteresis), ``sensor_missing`` alerts (a
sensor whose readings have been missing, hence imputed, for ``sensor_missing_after`` events in a row; it closes when
the sensor reports again) and ``device_silent`` alerts (the stream's roster noticed the device sent nothing for
``devices.silent_after_s``; it closes with the device's next event). A roster expiry drops the device's state.

The step is the last per-device one: it emits ``DeviceResults``, the batch's predictions and incident updates with the
device's whole state after the batch, which a sink records in one transaction. On a runner whose state dies with the
process, ``restore`` seeds a device's alerting state the first time the device is seen, and the incident updates of
its last recorded batch are emitted again (a topic may have missed them; the database upserts them in place).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from pydantic import BaseModel, ConfigDict, Field

from features.schema import DeviceNotice
from inference_pipeline.results import DeviceResults, DeviceSnapshot, Incident, PredictionBatch

SENSOR_MISSING = "sensor_missing"
DEVICE_SILENT = "device_silent"

# device_id -> the snapshot persisted with its last predictions (None: none).
RestoreSnapshot = Callable[[str], "DeviceSnapshot | None"]


class AlertSettings(BaseModel):
    """``threshold``: the anomaly score at or above which a prediction is anomalous (0.5 is the model version's
    calibrated threshold). Debounce: an incident opens after ``open_after`` anomalous predictions in a row and closes
    after ``close_after`` normal ones. ``sensor_missing_after``: events in a row without a sensor's reading before a
    ``sensor_missing`` incident opens."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0, lt=1)
    open_after: int = Field(3, ge=1)
    close_after: int = Field(30, ge=1)
    sensor_missing_after: int = Field(10, ge=1)


@dataclasses.dataclass
class SensorGap:
    """One sensor's current run of missing readings and its open incident."""

    run: int = 0
    start: float = 0.0
    last: float = 0.0
    open: Incident | None = None


@dataclasses.dataclass
class DebounceState:
    """Per device: consecutive anomalous/normal counts, the pending run start, the open incident, and the sensors
    currently missing."""

    anomalous_run: int = 0
    normal_run: int = 0
    run_start: float = 0.0
    run_peak: float = 0.0
    last_anomaly_time: float = 0.0
    open: Incident | None = None
    missing: dict[str, SensorGap] = dataclasses.field(default_factory=dict)
    last_event_time: float = float("-inf")
    silent: Incident | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DebounceState":
        def incident(value: dict | None) -> Incident | None:
            return None if value is None else Incident(**value)

        missing = {sensor: SensorGap(**{**gap, "open": incident(gap["open"])})
                   for sensor, gap in data.get("missing", {}).items()}
        return cls(**{**data, "open": incident(data["open"]), "missing": missing,
                      "silent": incident(data.get("silent"))})


def debounce(state: DebounceState, batch: PredictionBatch, open_after: int, close_after: int) -> Iterator[Incident]:
    """Advance the anomaly state over a batch, yielding incidents as they open and close."""
    return debounce_flags(state, batch.device_id, batch.model_name, batch.model_version, batch.is_anomaly.tolist(),
                          batch.event_time.tolist(), batch.anomaly_score.tolist(), open_after, close_after)


def debounce_flags(state: DebounceState, device_id: str, model_name: str, model_version: str, flags: list,
                   times: list[float], scores: list[float], open_after: int, close_after: int) -> Iterator[Incident]:
    """``debounce`` over one device's decisions, times and scores in event order (what a results table holds)."""
    for flag, ts, score in zip(flags, times, scores):
        if flag:
            if state.anomalous_run == 0:
                state.run_start, state.run_peak = ts, score
            state.anomalous_run += 1
            state.normal_run = 0
            state.run_peak = max(state.run_peak, score)
            state.last_anomaly_time = ts
            if state.open is not None:
                state.open.n_events += 1
                state.open.peak_score = max(state.open.peak_score, score)
            elif state.anomalous_run >= open_after:
                state.open = Incident(
                    f"{device_id}:{state.run_start:.3f}", device_id, state.run_start, None, state.run_peak,
                    state.anomalous_run, "open", model_name, model_version,
                )
                yield dataclasses.replace(state.open)
        else:
            state.anomalous_run = 0
            state.normal_run += 1
            if state.open is not None and state.normal_run >= close_after:
                closed = dataclasses.replace(state.open, end_time=state.last_anomaly_time, status="closed")
                state.open = None
                yield closed


def track_missing(state: DebounceState, batch: PredictionBatch, after: int) -> Iterator[Incident]:
    """Advance each sensor's run of missing readings over a batch, yielding ``sensor_missing`` incidents as they open
    and close."""
    if batch.imputed is None and not state.missing:
        return
    rows = batch.imputed or [None] * len(batch)
    for ts, absent in zip(batch.event_time.tolist(), rows):
        absent = absent or ()
        for sensor in absent:
            gap = state.missing.setdefault(sensor, SensorGap(start=ts))
            gap.run += 1
            gap.last = ts
            if gap.open is not None:
                gap.open.n_events += 1
            elif gap.run >= after:
                gap.open = Incident(f"{batch.device_id}:{SENSOR_MISSING}:{sensor}:{gap.start:.3f}", batch.device_id,
                                    gap.start, None, 0.0, gap.run, "open", batch.model_name, batch.model_version,
                                    SENSOR_MISSING, sensor)
                yield dataclasses.replace(gap.open)
        for sensor in [sensor for sensor in state.missing if sensor not in absent]:
            gap = state.missing.pop(sensor)
            if gap.open is not None:
                yield dataclasses.replace(gap.open, end_time=gap.last, status="closed")


def track_silence(state: DebounceState, batch: PredictionBatch) -> Iterator[Incident]:
    """Open ``device_silent`` on a silence notice; close it with the device's next event."""
    if batch.notice is not None:
        if batch.notice.kind == DeviceNotice.SILENT and state.silent is None:
            start = state.last_event_time
            state.silent = Incident(f"{batch.device_id}:{DEVICE_SILENT}:{start:.3f}", batch.device_id, start, None, 0.0,
                                    0, "open", batch.model_name, batch.model_version, DEVICE_SILENT)
            yield dataclasses.replace(state.silent)
        return
    if len(batch):
        if state.silent is not None:
            yield dataclasses.replace(state.silent, end_time=float(batch.event_time.min()), status="closed")
            state.silent = None
        state.last_event_time = max(state.last_event_time, float(batch.event_time.max()))


class _TrackIncidentsFn(beam.DoFn):
    STATE = ReadModifyWriteStateSpec("alerting", PickleCoder())

    def __init__(self, settings: AlertSettings, restore: RestoreSnapshot | None):
        self._settings = settings
        self._restore = restore
        self._states = Metrics.distribution("iotml", "alert_states")
        self._live = 0

    def _initial(self, device_id: str) -> tuple[DebounceState, list[Incident]]:
        snapshot = self._restore(device_id) if self._restore is not None else None
        if snapshot is None:
            return DebounceState(), []
        return DebounceState.from_json(snapshot.alerting), snapshot.pending

    def process(self, element: tuple[str, PredictionBatch], state=beam.DoFn.StateParam(STATE)
                ) -> Iterator[DeviceResults]:
        device_id, batch = element
        current, again = state.read(), []
        if batch.notice is not None and (current is None or batch.notice.kind == DeviceNotice.EXPIRE):
            if current is not None:
                state.clear()
                self._live -= 1
            return
        if current is None:
            self._live += 1
            self._states.update(self._live)
            current, again = self._initial(device_id)
        settings = self._settings
        incidents = [*again, *track_silence(current, batch),
                     *debounce(current, batch, settings.open_after, settings.close_after),
                     *track_missing(current, batch, settings.sensor_missing_after)]
        state.write(current)
        snapshot = None if batch.state is None else DeviceSnapshot(
            device_id, batch.state, current.to_json(), incidents, time.time())
        yield DeviceResults(batch, incidents, snapshot)


class TrackIncidents(beam.PTransform):
    """(device_id, PredictionBatch) -> DeviceResults: predictions, incident updates (open, then closed) and the
    device's state after each batch."""

    def __init__(self, settings: AlertSettings, restore: RestoreSnapshot | None = None):
        super().__init__()
        self._fn = _TrackIncidentsFn(settings, restore)

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        return predictions | "Incidents" >> beam.ParDo(self._fn).with_input_types(tuple[str, PredictionBatch])
