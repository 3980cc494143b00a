"""Incidents per device: debounced anomaly alerts (opened and closed by hysteresis), ``sensor_missing`` alerts (a
sensor whose readings have been missing, hence imputed, for ``sensor_missing_after`` events in a row; it closes when
the sensor reports again) and ``device_silent`` alerts (the stream's roster noticed the device sent nothing for
``devices.silent_after_s``; it closes with the device's next event). A roster expiry drops the device's state.

Every anomaly incident says why: the mean share of the model's error per sensor over its anomalous rows (from the
first row of the run that opened it, to its close), its top ``TOP_SENSORS`` on each update emitted
(``Incident.top_sensors``); the running sums are part of the device's state, so a restored incident's explanation
continues. A ``sensor_missing`` incident names its sensor (share 1).

The step is the last per-device one: it emits ``DeviceResults``, the batch's predictions and incident updates with the
device's whole state after the batch, which a sink records in one transaction. On a runner whose state dies with the
process, ``restore`` seeds a device's alerting state the first time the device is seen, and the incident updates of
its last recorded batch are emitted again (a topic may have missed them; the database upserts them in place).
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from pydantic import BaseModel, ConfigDict, Field

from features.schema import DeviceNotice
from inference_pipeline.results import DeviceResults, DeviceSnapshot, Incident, PredictionBatch

SENSOR_MISSING = "sensor_missing"
DEVICE_SILENT = "device_silent"
TOP_SENSORS = 3  # sensors named per anomaly incident

# A batch's contributions as arrays (``PredictionBatch.contribution_matrix``): sensor names, the indices of the rows
# that have them (ascending) and their (rows, sensors) shares.
Contributions = tuple[tuple[str, ...], np.ndarray, np.ndarray]

# device_id -> the snapshot persisted with its last predictions (None: none).
RestoreSnapshot = Callable[[str], "DeviceSnapshot | None"]


class AlertSettings(BaseModel):
    """``threshold``: the anomaly score at or above which a prediction is anomalous (0.5 is the model version's
    calibrated threshold). Debounce: an incident opens after ``open_after`` anomalous predictions, with at most
    ``open_gap`` normal ones between any two of them (0: in a row; a burst of isolated spikes is a fault too),
    and closes after ``close_after`` normal ones. ``sensor_missing_after``: events in a row without a sensor's
    reading before a ``sensor_missing`` incident opens."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0, lt=1)
    open_after: int = Field(3, ge=1)
    close_after: int = Field(30, ge=1)
    open_gap: int = Field(0, ge=0)
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
    """Per device: consecutive anomalous/normal counts, the pending run start, the open incident, the sums of the
    sensors' shares over the anomalous rows of the pending run and open incident (and how many rows had them), and
    the sensors currently missing."""

    anomalous_run: int = 0
    normal_run: int = 0
    run_start: float = 0.0
    run_peak: float = 0.0
    last_anomaly_time: float = 0.0
    open: Incident | None = None
    share_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    share_rows: int = 0
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


def top_sensors(sums: dict[str, float], rows: int, top: int = TOP_SENSORS) -> list[dict[str, Any]] | None:
    """The ``top`` sensors of largest mean share (``sums / rows``), largest first (ties by name), shares rounded to
    4 decimals; None without rows."""
    if rows <= 0 or not sums:
        return None
    ranked = sorted(sums.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"sensor": name, "share": round(total / rows, 4)} for name, total in ranked]


class _Explanation:
    """The running share sums of the anomalous rows a device's incident accumulates, over one batch: the sums the
    state carries in, plus those of the batch's explained rows since the last reset, read from their cumulative sums
    (no work per row)."""

    def __init__(self, state: DebounceState, contributions: Contributions | None, flags: list):
        self._state = state
        self._base = 0  # cumulative position (explained rows before it) where accumulating started in the batch
        self._names: tuple[str, ...] = ()
        self._rows: list[int] = []
        self._cumulative = np.zeros((1, 0))
        if contributions is not None:
            self._names, rows, matrix = contributions
            anomalous = np.asarray(flags, dtype=bool)[rows]  # only the anomalous rows explain an incident
            self._rows = rows[anomalous].tolist()
            self._cumulative = np.zeros((len(self._rows) + 1, len(self._names)))
            np.cumsum(matrix[anomalous], axis=0, out=self._cumulative[1:])

    def _position(self, row: int) -> int:
        """Explained rows before ``row``."""
        return bisect.bisect_left(self._rows, row)

    def sums(self, end: int) -> tuple[dict[str, float], int]:
        """Sums and rows up to (not including) row ``end``."""
        sums, rows = dict(self._state.share_sums), self._state.share_rows
        position = self._position(end)
        if position > self._base:
            delta = (self._cumulative[position] - self._cumulative[self._base]).tolist()
            for name, value in zip(self._names, delta):
                sums[name] = sums.get(name, 0.0) + value
            rows += position - self._base
        return sums, rows

    def top(self, end: int) -> list[dict[str, Any]] | None:
        return top_sensors(*self.sums(end))

    def reset(self, start: int) -> None:
        """Nothing accumulated before row ``start``."""
        self._state.share_sums, self._state.share_rows, self._base = {}, 0, self._position(start)

    def store(self, end: int) -> None:
        """Carry the sums up to row ``end`` in the state."""
        self._state.share_sums, self._state.share_rows = self.sums(end)
        self._base = self._position(end)


def debounce(state: DebounceState, batch: PredictionBatch, open_after: int, close_after: int,
             open_gap: int = 0) -> Iterator[Incident]:
    """Advance the anomaly state over a batch, yielding incidents as they open and close."""
    flags = batch.is_anomaly
    return debounce_flags(state, batch.device_id, batch.model_name, batch.model_version, flags.tolist(),
                          batch.event_time.tolist(), batch.anomaly_score.tolist(), open_after, close_after,
                          batch.contribution_matrix(flags) if flags.any() else None, open_gap)


def debounce_flags(state: DebounceState, device_id: str, model_name: str, model_version: str, flags: list,
                   times: list[float], scores: list[float], open_after: int, close_after: int,
                   contributions: Contributions | None = None, open_gap: int = 0) -> Iterator[Incident]:
    """``debounce`` over one device's decisions, times and scores in event order (what a results table holds), with
    the rows' sensor contributions (``PredictionBatch.contribution_matrix``) to explain its incidents. A pending run
    (anomalous predictions not yet opening an incident) survives up to ``open_gap`` normal ones."""
    explanation = _Explanation(state, contributions, flags)
    for end, flag, ts, score in zip(itertools.count(1), flags, times, scores):  # end: the rows up to this one
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
                    state.anomalous_run, "open", model_name, model_version, top_sensors=explanation.top(end),
                )
                yield dataclasses.replace(state.open)
        else:
            state.normal_run += 1
            if state.anomalous_run and (state.open is not None or state.normal_run > open_gap):
                if state.open is None:  # a pending run that did not open: the next starts afresh
                    explanation.reset(end)
                state.anomalous_run = 0
            if state.open is not None and state.normal_run >= close_after:
                closed = dataclasses.replace(state.open, end_time=state.last_anomaly_time, status="closed",
                                             top_sensors=explanation.top(end))
                state.open = None
                explanation.reset(end)
                yield closed
    explanation.store(len(flags))


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
                                    SENSOR_MISSING, sensor, [{"sensor": sensor, "share": 1.0}])
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
                     *debounce(current, batch, settings.open_after, settings.close_after, settings.open_gap),
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
