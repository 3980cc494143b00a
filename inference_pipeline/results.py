"""The pipeline's results: their value types and the one schema every sink derives its format from.

Three result streams leave the pipeline: ``predictions`` (one row per event scored), ``alerts`` (one row per
incident, upserted as it opens and closes) and ``dead_letters`` (one row per rejected event); with ``model.shadow``, a
fourth, ``shadow_predictions``, holds a challenger's predictions of the same events; ``device_minutes`` (opt in
through a sink's ``results``) holds per-device per-minute summaries, upserted as each minute fills. Predictions
and alerts travel together, per device batch, as ``DeviceResults`` with the device's state after the batch
(``DeviceSnapshot``), so a sink can record all three in one transaction and a restarted stream resume from it
(``device_state``). Each is a ``Table`` of
typed ``Column``s; the SQLite DDL, the JSON topic messages and the row tuples all come from it, so a new sink (a
warehouse, say) maps column types once instead of copying column lists.
"""
from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from features.schema import DeadLetter, DeviceNotice
from features.window import WindowState

ColumnType = Literal["text", "real", "integer", "json"]


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    """One result stream: its columns, its upsert key (if rows are replaced by key) and how a value becomes rows."""

    name: str
    columns: tuple[Column, ...]
    to_records: Callable[[Any], Mapping[str, Sequence[Any]]]
    key: str | tuple[str, ...] | None = None  # one column, or several (a composite key)
    index: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The upsert key's columns (empty: rows are only ever added)."""
        if self.key is None:
            return ()
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    def rows(self, value: Any) -> list[tuple]:
        """The value's rows as tuples in column order (JSON columns serialised)."""
        records = self.to_records(value)
        columns = [_json_column(records[c.name]) if c.type == "json" else records[c.name] for c in self.columns]
        return list(zip(*columns))

    def messages(self, value: Any) -> list[str]:
        """The value's rows as JSON objects, one message per row (a JSON column's value nested as JSON, not as its
        text)."""
        records = self.to_records(value)
        names = self.column_names
        return [json.dumps(dict(zip(names, row)), separators=(",", ":"), default=str)
                for row in zip(*(records[name] for name in names))]


def table_messages(value: Any, tables: Sequence[Table]) -> list[str]:
    """A result value's rows of each of ``tables``, as JSON messages (what message sinks publish)."""
    return [message for table in tables for message in table.messages(value)]


def _json_column(values: Sequence[Any]) -> list[str | None]:
    return [None if value is None else json.dumps(value, separators=(",", ":")) for value in values]


@dataclasses.dataclass
class PredictionBatch:
    """Predictions for one device batch, as columns (optional model outputs are None or per-row lists)."""

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
    label: list[str | None] | None = None
    class_probabilities: list[dict[str, float] | None] | None = None
    sensor_contributions: list[dict[str, float] | None] | None = None
    imputed: list[list[str] | None] | None = None  # per row, the sensors whose missing reading was imputed
    state: WindowState | None = None  # the device's window state after this batch
    notice: DeviceNotice | None = None  # a roster notice passing through (a batch without rows)
    late: np.ndarray | None = None  # (n,) bool: scored against the device's window without entering it
    enrichment: str | None = None  # how the device's metadata was joined (``steps.enrich``); None: not enriched

    @property
    def is_anomaly(self) -> np.ndarray:
        """At or above the threshold with a full window: a device still warming up never raises an anomaly."""
        return ((self.anomaly_score >= self.threshold) & (self.window_fill >= self.window)).astype(np.int8)

    def __len__(self) -> int:
        return len(self.event_ids)

    def contribution_matrix(self, rows: np.ndarray | None = None
                            ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
        """``sensor_contributions`` of the ``rows`` selected (a boolean mask; default all) that have them, as arrays:
        the sensor names, the rows' indices (ascending) and their (rows, sensors) shares; None when none has any."""
        contributions = self.sensor_contributions
        if contributions is None:
            return None
        selected = range(len(self)) if rows is None else np.flatnonzero(rows).tolist()
        index = [i for i in selected if contributions[i] is not None]
        if not index:
            return None
        names = tuple(contributions[index[0]])
        shares = operator.itemgetter(*names)
        matrix = np.array([shares(contributions[i]) for i in index], dtype=np.float64).reshape(len(index), len(names))
        return names, np.asarray(index, dtype=np.int64), matrix

    def records(self) -> dict[str, Sequence[Any]]:
        n = len(self)
        missing = [None] * n
        return {
            "event_id": self.event_ids.tolist(), "device_id": [self.device_id] * n,
            "event_time": self.event_time.tolist(), "received_at": self.received_at.tolist(),
            "processing_time": [self.processing_time] * n, "anomaly_score": self.anomaly_score.tolist(),
            "raw_score": self.raw_score.tolist(), "threshold": [self.threshold] * n,
            "is_anomaly": self.is_anomaly.tolist(), "window_fill": self.window_fill.tolist(),
            "model_name": [self.model_name] * n, "model_version": [self.model_version] * n,
            "label": self.label or missing, "class_probabilities": self.class_probabilities or missing,
            "sensor_contributions": self.sensor_contributions or missing, "imputed": self.imputed or missing,
            "late": [0] * n if self.late is None else self.late.astype(np.int8).tolist(),
            "enrichment": [self.enrichment] * n,
        }


@dataclasses.dataclass
class Incident:
    """An alert: emitted when it opens (end_time None) and again when it closes. ``kind``: ``anomaly`` (the model's
    scores), ``sensor_missing`` (``sensor`` stopped reporting) or ``device_silent`` (the device stopped sending).

    ``top_sensors``: why, so far: an anomaly's three sensors of largest mean share of the model's error over its
    anomalous rows, largest first, as ``[{"sensor": name, "share": mean share}]`` (None for a model without
    contributions); a missing sensor with share 1; None for a silent device."""

    incident_id: str
    device_id: str
    start_time: float
    end_time: float | None
    peak_score: float
    n_events: int
    status: str
    model_name: str
    model_version: str
    kind: str = "anomaly"
    sensor: str | None = None
    top_sensors: list[dict[str, Any]] | None = None

    def records(self) -> dict[str, Sequence[Any]]:
        return {field.name: [getattr(self, field.name)] for field in dataclasses.fields(self)}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DeviceSnapshot:
    """A device's state after a batch: its window, its alerting state (``steps.alerts``, as JSON) and the incident
    updates the batch produced (sent again at restore, so a topic hears them at least once)."""

    device_id: str
    window: WindowState
    alerting: dict[str, Any]
    pending: list[Incident]
    updated_at: float

    def to_json(self) -> str:
        tail = self.window.tail
        return json.dumps({"tail": tail.tolist(), "width": tail.shape[1], "newest": self.window.newest,
                           "alerting": self.alerting, "pending": [i.to_json() for i in self.pending]})

    @classmethod
    def from_json(cls, device_id: str, text: str, updated_at: float) -> "DeviceSnapshot":
        data = json.loads(text)
        tail = np.asarray(data["tail"], dtype=np.float64).reshape(-1, data["width"])
        window = WindowState(tail, float(data["newest"]))
        return cls(device_id, window, data["alerting"], [Incident(**i) for i in data["pending"]], updated_at)


@dataclasses.dataclass
class MinuteSummary:
    """One device's per-minute summaries that a batch touched (``steps.summaries``), as columns: each row holds the
    running totals of its minute of event time so far, so rows written again by key converge on the final one."""

    device_id: str
    minute_start: np.ndarray  # (k,) epoch seconds, floored to the minute
    count: np.ndarray  # (k,) predictions in the minute
    mean_score: np.ndarray  # (k,) mean anomaly score
    max_score: np.ndarray  # (k,) max anomaly score
    anomalies: np.ndarray  # (k,) predictions flagged is_anomaly
    model_version: list[str]  # per row: the versions that scored in the minute, in scoring order, joined by ","
    updated_at: float  # processing time the rows were computed

    def __len__(self) -> int:
        return len(self.minute_start)

    def records(self) -> dict[str, Sequence[Any]]:
        n = len(self)
        return {"device_id": [self.device_id] * n, "minute_start": self.minute_start.tolist(),
                "count": self.count.tolist(), "mean_score": self.mean_score.tolist(),
                "max_score": self.max_score.tolist(), "anomalies": self.anomalies.tolist(),
                "model_version": list(self.model_version), "updated_at": [self.updated_at] * n}


@dataclasses.dataclass
class DeviceResults:
    """What one device batch produced: its predictions, incident updates, and the device's state after it."""

    predictions: PredictionBatch
    incidents: list[Incident]
    snapshot: DeviceSnapshot | None


class Restore(Protocol):
    """What a sink recorded that a restarted stream resumes from (on runners whose state dies with the process)."""

    def seen_ids(self, device_id: str, since: float) -> list[tuple[str, float]]:
        """(event_id, event_time) already predicted for the device since a time, at most the newest ``max_ids``,
        oldest first."""

    def snapshot(self, device_id: str) -> DeviceSnapshot | None:
        """The device's state persisted with its last predictions (None: none)."""


def _dead_letter_records(letter: DeadLetter) -> dict[str, Sequence[Any]]:
    return {field.name: [getattr(letter, field.name)] for field in dataclasses.fields(letter)}


def _prediction_records(element: DeviceResults | tuple[str, PredictionBatch] | PredictionBatch
                        ) -> dict[str, Sequence[Any]]:
    if isinstance(element, DeviceResults):
        return element.predictions.records()
    batch = element[1] if isinstance(element, tuple) else element
    return batch.records()


def _alert_records(element: DeviceResults | Incident) -> dict[str, Sequence[Any]]:
    incidents = element.incidents if isinstance(element, DeviceResults) else [element]
    names = [field.name for field in dataclasses.fields(Incident)]
    return {name: [getattr(incident, name) for incident in incidents] for name in names}


def _minute_records(element: MinuteSummary | tuple[str, MinuteSummary]) -> dict[str, Sequence[Any]]:
    return (element[1] if isinstance(element, tuple) else element).records()


def _state_records(element: Any) -> dict[str, Sequence[Any]]:
    snapshot = element.snapshot if isinstance(element, DeviceResults) else None
    snapshots = [snapshot] if snapshot is not None else []
    return {"device_id": [s.device_id for s in snapshots], "state": [s.to_json() for s in snapshots],
            "updated_at": [s.updated_at for s in snapshots]}


PREDICTIONS = Table("predictions", (
    Column("event_id", "text"), Column("device_id", "text"), Column("event_time", "real"),
    Column("received_at", "real"), Column("processing_time", "real"), Column("anomaly_score", "real"),
    Column("raw_score", "real"), Column("threshold", "real"), Column("is_anomaly", "integer"),
    Column("window_fill", "integer"), Column("model_name", "text"), Column("model_version", "text"),
    Column("label", "text", nullable=True), Column("class_probabilities", "json", nullable=True),
    Column("sensor_contributions", "json", nullable=True), Column("imputed", "json", nullable=True),
    Column("late", "integer"), Column("enrichment", "text", nullable=True),
), _prediction_records, index=("device_id", "event_time"))

ALERTS = Table("alerts", (
    Column("incident_id", "text"), Column("device_id", "text"), Column("start_time", "real"),
    Column("end_time", "real", nullable=True), Column("peak_score", "real"), Column("n_events", "integer"),
    Column("status", "text"), Column("model_name", "text"), Column("model_version", "text"), Column("kind", "text"),
    Column("sensor", "text", nullable=True), Column("top_sensors", "json", nullable=True),
), _alert_records, key="incident_id")

DEAD_LETTERS = Table("dead_letters", (
    Column("reason", "text"), Column("detail", "text"), Column("payload", "text"), Column("received_at", "real"),
    Column("device_id", "text", nullable=True),
), _dead_letter_records)

# Not a result stream: what a sink that writes predictions records beside them for a restart (``state`` is
# ``DeviceSnapshot.to_json``).
DEVICE_STATE = Table("device_state", (
    Column("device_id", "text"), Column("state", "text"), Column("updated_at", "real"),
), _state_records, key="device_id")

# A challenger's predictions (``model.shadow``): the same columns, in a table of their own, counted nowhere else.
SHADOW_PREDICTIONS = dataclasses.replace(PREDICTIONS, name="shadow_predictions")

# Per device per minute of event time (``steps.summaries``): upserted by (device_id, minute_start) as the minute
# fills, so a row is final once the device's events have moved past its minute (or the device went silent).
DEVICE_MINUTES = Table("device_minutes", (
    Column("device_id", "text"), Column("minute_start", "real"), Column("count", "integer"),
    Column("mean_score", "real"), Column("max_score", "real"), Column("anomalies", "integer"),
    Column("model_version", "text"), Column("updated_at", "real"),
), _minute_records, key=("device_id", "minute_start"))

TABLES: dict[str, Table] = {table.name: table for table in (PREDICTIONS, ALERTS, DEAD_LETTERS, SHADOW_PREDICTIONS,
                                                            DEVICE_MINUTES)}
ResultStream = Literal["predictions", "alerts", "dead_letters", "shadow_predictions", "device_minutes"]

