"""Drop redelivered events: a per-device stateful step that lets each event id through once.

At-least-once sources (MQTT QoS 1, Pub/Sub) resend what they could not confirm as processed, so an event can arrive
twice. Each device keeps the ids it has let through, bounded two ways: ids older than the device's newest event time
minus ``horizon_s`` are forgotten, and at most ``max_ids`` of the newest are kept (memory per device is bounded by
1.25 * ``max_ids``). A copy arriving later than that is let through (it cannot be told apart from a new event).
The state is pruned as the device's events arrive; a device that falls silent keeps its bounded state until the
parse step's roster (``steps.roster``) notices its expiry, which clears it; a notice that a newer event of the device
overtook is dropped here, so the steps after see only notices that hold.

On a runner whose state dies with the process (the local FnApiRunner), ``restore`` seeds a device's state the first
time the device is seen: ids already predicted (a sink's ``Restore.seen_ids``), so copies redelivered after a crash
never give a second prediction. On Dataflow the state itself survives failures.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from pydantic import BaseModel, ConfigDict, Field

from features.schema import DeviceNotice, EventBatch
from inference_pipeline.results import Restore

DUPLICATES = "duplicates"
METRICS_NAMESPACE = "iotml"


class DedupSettings(BaseModel):
    """Per device, ids within ``horizon_s`` of its newest event time, at most ``max_ids_per_device``.
    ``restore_from_sink``: a live stream restarted after a crash first reads the ids already predicted from the
    first sink that can tell (SQLite), so a redelivered event never gets a second prediction."""

    model_config = ConfigDict(extra="forbid")

    horizon_s: float = Field(300.0, gt=0)
    max_ids_per_device: int = Field(2000, ge=1)
    restore_from_sink: bool = True


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """A dropped copy of an event that was already let through."""

    device_id: str
    event_id: str
    event_time: float
    received_at: float


def id_hashes(event_ids: Sequence[str]) -> np.ndarray:
    """Stable 64-bit digests of event ids (blake2b): compact state and vectorised lookups; two distinct ids of one
    device collide with odds of about n^2 / 2^64."""
    digests = b"".join(hashlib.blake2b(event_id.encode(), digest_size=8).digest() for event_id in event_ids)
    return np.frombuffer(digests, dtype=np.uint64)


@dataclasses.dataclass
class SeenIds:
    """One device's recently let-through event ids (as ``id_hashes``, in arrival order) with their event times."""

    hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    times: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.float64))
    max_time: float = float("-inf")
    last_received: float = float("-inf")  # wall clock of the device's newest event, to judge roster notices

    def add(self, hashes: np.ndarray, times: np.ndarray) -> None:
        self.hashes = np.concatenate([self.hashes, hashes])
        self.times = np.concatenate([self.times, times])
        if len(times):
            self.max_time = max(self.max_time, float(times.max()))

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Which of ``hashes`` are remembered (a binary search: ``np.isin`` is ten times slower on these sizes)."""
        if not len(self.hashes):
            return np.zeros(len(hashes), dtype=bool)
        known = np.sort(self.hashes)
        return known[np.minimum(np.searchsorted(known, hashes), len(known) - 1)] == hashes

    def forget_old(self, horizon_s: float, max_ids: int) -> None:
        """Keep ids newer than ``max_time - horizon_s``, at most the ``max_ids`` newest.

        Pruning waits until a quarter more ids or a quarter horizon more of event time have piled up, so it runs
        once per many batches, not on every one.
        """
        cutoff = self.max_time - horizon_s
        if len(self.hashes) <= max_ids * 1.25 and (not len(self.times) or self.times[0] >= cutoff - horizon_s / 4):
            return
        recent = slice(max(0, len(self.hashes) - max_ids), None)
        keep = self.times[recent] >= cutoff
        self.hashes, self.times = self.hashes[recent][keep], self.times[recent][keep]


def drop_seen(seen: SeenIds, batch: EventBatch, horizon_s: float, max_ids: int) -> tuple[EventBatch, list[Duplicate]]:
    """Split a batch into first sightings (returned as a batch, remembered in ``seen``) and duplicates."""
    hashes = id_hashes(batch.event_ids.tolist())
    first = np.zeros(len(batch), dtype=bool)
    first[np.unique(hashes, return_index=True)[1]] = True
    keep = first & ~seen.contains(hashes)
    seen.add(hashes[keep], batch.ts[keep])
    seen.last_received = max(seen.last_received, float(batch.received_at.max()))
    seen.forget_old(horizon_s, max_ids)
    if keep.all():
        return batch, []
    duplicates = [Duplicate(batch.device_id, event_id, ts, received) for event_id, ts, received in zip(
        batch.event_ids[~keep].tolist(), batch.ts[~keep].tolist(), batch.received_at[~keep].tolist())]
    return batch.take(keep), duplicates


class _DropDuplicatesFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())

    def __init__(self, horizon_s: float, max_ids: int, restore: Restore | None):
        self._horizon_s = horizon_s
        self._max_ids = max_ids
        self._restore = restore
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")
        self._states = Metrics.distribution(METRICS_NAMESPACE, "dedup_states")
        self._live = 0

    def process(self, element: tuple[str, EventBatch], state=beam.DoFn.StateParam(SEEN)) -> Iterator:
        device_id, batch = element
        seen = state.read()
        if batch.notice is not None:
            yield from self._on_notice(device_id, batch, seen, state)
            return
        if seen is None:
            self._live += 1
            self._states.update(self._live)
            seen = SeenIds()
            if self._restore is not None:
                restored = self._restore.seen_ids(device_id, float(batch.ts.min()) - self._horizon_s)
                seen.add(id_hashes([event_id for event_id, _ in restored]),
                         np.asarray([ts for _, ts in restored], dtype=np.float64))
        fresh, duplicates = drop_seen(seen, batch, self._horizon_s, self._max_ids)
        state.write(seen)
        if duplicates:
            self._duplicates.inc(len(duplicates))
        if len(fresh):
            yield device_id, fresh
        for duplicate in duplicates:
            yield pvalue.TaggedOutput(DUPLICATES, duplicate)

    def _on_notice(self, device_id: str, batch: EventBatch, seen: SeenIds | None, state) -> Iterator:
        """Pass a roster notice on unless a newer event overtook it; an expiry drops this device's ids."""
        if seen is None or seen.last_received > batch.notice.last_seen:
            return
        if batch.notice.kind == DeviceNotice.EXPIRE:
            state.clear()
            self._live -= 1
        yield device_id, batch


class DropDuplicates(beam.PTransform):
    """(device_id, EventBatch) -> main: first sightings as (device_id, EventBatch); ``duplicates``: Duplicate."""

    def __init__(self, horizon_s: float, max_ids: int, restore: Restore | None = None):
        super().__init__()
        self._fn = _DropDuplicatesFn(horizon_s, max_ids, restore)

    def expand(self, events: beam.PCollection) -> pvalue.DoOutputsTuple:
        return events | "FirstSightings" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, EventBatch]).with_outputs(DUPLICATES, main="events")
