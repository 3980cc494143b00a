"""Drop redelivered events: a per-device stateful step that lets each event id through once.

At-least-once sources (MQTT QoS 1, Pub/Sub) resend what they could not confirm as processed, so an event can arrive
twice. Each device keeps the ids it has let through, bounded two ways: ids older than the device's newest event time
minus ``horizon_s`` are forgotten, and at most ``max_ids`` of the newest are kept. A copy arriving later than that is
let through (it cannot be told apart from a new event).

On a runner whose state dies with the process (the local FnApiRunner), ``restore`` seeds a device's state the first
time the device is seen: ids already predicted (read from the prediction sink), so copies redelivered after a crash
never give a second prediction. On Dataflow the state itself survives failures.
"""
from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from features.schema import EventBatch

DUPLICATES = "duplicates"
METRICS_NAMESPACE = "iotml"

# (device_id, oldest event time of interest) -> (event_id, event_time) pairs already processed.
Restore = Callable[[str, float], Iterable[tuple[str, float]]]


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """A dropped copy of an event that was already let through."""

    device_id: str
    event_id: str
    event_time: float
    received_at: float


@dataclasses.dataclass
class SeenIds:
    """One device's recently let-through event ids (insertion order) with their event times."""

    ids: dict[str, float] = dataclasses.field(default_factory=dict)
    max_time: float = float("-inf")

    def forget_old(self, horizon_s: float, max_ids: int) -> None:
        """Keep ids newer than ``max_time - horizon_s``, at most the ``max_ids`` newest."""
        cutoff = self.max_time - horizon_s
        oldest = next(iter(self.ids.values()), cutoff)
        if len(self.ids) <= max_ids and oldest >= cutoff:
            return
        recent = itertools.islice(self.ids.items(), max(0, len(self.ids) - max_ids), None)
        self.ids = {event_id: ts for event_id, ts in recent if ts >= cutoff}


def select(batch: EventBatch, keep: np.ndarray) -> EventBatch:
    """The rows of ``batch`` where ``keep`` is true, in order."""
    return EventBatch(batch.device_id, batch.event_ids[keep], batch.ts[keep], batch.values[keep],
                      batch.received_at[keep])


def drop_seen(seen: SeenIds, batch: EventBatch, horizon_s: float, max_ids: int) -> tuple[EventBatch, list[Duplicate]]:
    """Split a batch into first sightings (returned as a batch, remembered in ``seen``) and duplicates."""
    keep = np.ones(len(batch), dtype=bool)
    duplicates = []
    for i, (event_id, ts) in enumerate(zip(batch.event_ids.tolist(), batch.ts.tolist())):
        if event_id in seen.ids:
            keep[i] = False
            duplicates.append(Duplicate(batch.device_id, event_id, ts, float(batch.received_at[i])))
        else:
            seen.ids[event_id] = ts
            seen.max_time = max(seen.max_time, ts)
    seen.forget_old(horizon_s, max_ids)
    return (batch if keep.all() else select(batch, keep)), duplicates


class PredictedIds:
    """``Restore`` from the SQLite prediction sink: a device's predicted ids since a time, newest first."""

    def __init__(self, sink_path: str | Path, max_ids: int):
        self._path = str(sink_path)
        self._max_ids = max_ids

    def __call__(self, device_id: str, since: float) -> list[tuple[str, float]]:
        if not Path(self._path).exists():
            return []
        with sqlite3.connect(self._path, timeout=30.0) as connection:
            try:
                rows = connection.execute(
                    "SELECT event_id, event_time FROM predictions WHERE device_id = ? AND event_time >= ? "
                    "ORDER BY event_time DESC LIMIT ?", (device_id, since, self._max_ids)).fetchall()
            except sqlite3.OperationalError:
                return []
        return rows[::-1]


class _DropDuplicatesFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())

    def __init__(self, horizon_s: float, max_ids: int, restore: Restore | None):
        self._horizon_s = horizon_s
        self._max_ids = max_ids
        self._restore = restore
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")

    def process(self, element: tuple[str, EventBatch], state=beam.DoFn.StateParam(SEEN)) -> Iterator:
        device_id, batch = element
        seen = state.read()
        if seen is None:
            seen = SeenIds()
            if self._restore is not None:
                seen.ids.update(self._restore(device_id, float(batch.ts.min()) - self._horizon_s))
                seen.max_time = max(seen.ids.values(), default=seen.max_time)
        fresh, duplicates = drop_seen(seen, batch, self._horizon_s, self._max_ids)
        state.write(seen)
        if duplicates:
            self._duplicates.inc(len(duplicates))
        if len(fresh):
            yield device_id, fresh
        for duplicate in duplicates:
            yield pvalue.TaggedOutput(DUPLICATES, duplicate)


class DropDuplicates(beam.PTransform):
    """(device_id, EventBatch) -> main: first sightings as (device_id, EventBatch); ``duplicates``: Duplicate."""

    def __init__(self, horizon_s: float, max_ids: int, restore: Restore | None = None):
        super().__init__()
        self._fn = _DropDuplicatesFn(horizon_s, max_ids, restore)

    def expand(self, events: beam.PCollection) -> pvalue.DoOutputsTuple:
        return events | "FirstSightings" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, EventBatch]).with_outputs(DUPLICATES, main="events")
