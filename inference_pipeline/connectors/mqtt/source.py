"""MQTT source: a persistent MQTT session read as a Beam ``UnboundedSource``, acknowledged when Beam finalizes a bundle.

Delivery is at least once. Messages are PUBACKed only in ``CheckpointMark.finalize_checkpoint()``, which the runner
calls after the bundle that read them has committed; a message read by a process that dies before that is resent by
the broker when the session resumes (same client id, clean start off, QoS 1). Downstream must tolerate duplicates
(the pipeline drops them by event id, see ``inference_pipeline.steps.dedup``).

The MQTT connection lives in a receiver child process (``mqtt_receiver``); this process gathers its deliveries into
batches, one list of RawEvents per pipeline element, so per-element costs are paid per batch.

The broker bounds what survives: Mosquitto keeps at most ``max_queued_messages`` (default 1000) messages per
session beyond those in flight and drops the rest silently, also while the pipeline is down. Size it (and
``persistent_client_expiration``) for the longest outage to ride out.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
from apache_beam import coders, typehints
from apache_beam.io.unbounded_source import (
    CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource)
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from features.schema import EventRules, RawEvent
from inference_pipeline.connectors.base import Source
from inference_pipeline.connectors.mqtt.settings import MqttSettings, MqttSourceSettings, ReadLimits
from inference_pipeline.connectors.mqtt.receiver import read_frame, start_receiver, write_frame

_LOGGER = logging.getLogger(__name__)

# One ack: (connection epoch, packet id) of a QoS 1 delivery.
Ack = tuple[int, int]

_stop_requested = threading.Event()


def request_stop(stop: bool = True) -> None:
    """End (or, with ``stop=False``, allow again) every MQTT stream read in this process: readers report their
    final watermark, the pipeline finishes the bundles in flight, acknowledges them and ends (a drain)."""
    if stop:
        _stop_requested.set()
    else:
        _stop_requested.clear()


@dataclasses.dataclass(frozen=True)
class _Delivery:
    """One message as the receiver forwarded it (see ``mqtt_receiver.Delivery``)."""

    payload: bytes
    received_at: float
    mid: int
    qos: int
    epoch: int


class _Session:
    """The one connection of a client id in this process, shared by successive readers.

    The connection itself lives in a receiver process (``mqtt_receiver``); a collector thread here queues what it
    forwards. Acks go back to it, and it drops those of an older connection epoch.
    """

    _registry: dict[str, "_Session"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, settings: MqttSettings):
        self.settings = settings
        self.token = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._queue: collections.deque[_Delivery] = collections.deque()
        self._returned: list[_Delivery] = []
        self._refs = 0
        self._unacked = 0
        self._closing = False
        self._closed = False
        self._receiver_gone = False
        self._receiver = start_receiver(settings)
        self._write_lock = threading.Lock()
        threading.Thread(target=self._collect, name=f"mqtt-collect-{settings.client_id}", daemon=True).start()

    @classmethod
    def acquire(cls, settings: MqttSettings) -> "_Session":
        """The live session for ``settings.client_id``, opened if needed (two clients of one id evict each other)."""
        with cls._registry_lock:
            session = cls._registry.get(settings.client_id)
            if session is None or session._closed:
                session = cls(settings)
                cls._registry[settings.client_id] = session
            elif session.settings != settings:
                _LOGGER.warning("MQTT client id %s is already open with other settings; reusing it", settings.client_id)
            with session._cond:
                session._refs += 1
                session._closing = False
            return session

    @classmethod
    def lookup(cls, client_id: str, token: str) -> "_Session | None":
        with cls._registry_lock:
            session = cls._registry.get(client_id)
        return session if session is not None and session.token == token else None

    def _collect(self) -> None:
        while True:
            try:
                batch = read_frame(self._receiver.stdout)
            except (EOFError, OSError, ValueError):
                break
            with self._cond:
                self._queue.extend(_Delivery(*delivery) for delivery in batch)
                self._cond.notify_all()
        with self._cond:
            self._receiver_gone = True
            self._cond.notify_all()
        if not self._closed:
            _LOGGER.error("MQTT receiver of %s exited (code %s)", self.settings.client_id, self._receiver.wait())

    def _wait_for_delivery(self, until: float) -> bool:
        """With the lock held: whether a delivery is queued by ``until`` (monotonic seconds)."""
        while not self._queue:
            if self._receiver_gone:
                raise ConnectionError(f"MQTT receiver of {self.settings.client_id} is gone")
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    def take(self, timeout: float, limit: int, window_s: float, gap_s: float) -> list[_Delivery]:
        """Up to ``limit`` deliveries (redeliveries of failed readers first): waits ``timeout`` seconds for the
        first, then gathers for up to ``window_s`` more, stopping early after ``gap_s`` without a message."""
        with self._cond:
            taken, self._returned = self._returned[:limit], self._returned[limit:]
            if not taken and not self._wait_for_delivery(time.monotonic() + timeout):
                return []
            window_end = time.monotonic() + window_s
            fresh: list[_Delivery] = []
            while True:
                while self._queue and len(taken) + len(fresh) < limit:
                    fresh.append(self._queue.popleft())
                if len(taken) + len(fresh) >= limit:
                    break
                if not self._wait_for_delivery(min(time.monotonic() + gap_s, window_end)):
                    break
            self._unacked += sum(1 for delivery in fresh if delivery.qos)
        return taken + fresh

    def give_back(self, deliveries: Sequence[_Delivery]) -> None:
        """Re-offer deliveries that a reader read but never checkpointed (its bundle failed)."""
        with self._cond:
            self._returned[:0] = deliveries

    def ack(self, acks: Sequence[Ack]) -> None:
        """PUBACK these messages (the receiver skips those of an earlier connection: the broker resent them)."""
        try:
            with self._write_lock:
                write_frame(self._receiver.stdin, list(acks))
        except (BrokenPipeError, ValueError):
            _LOGGER.warning("MQTT receiver of %s is gone; %d messages will be redelivered", self.settings.client_id,
                            len(acks))
        with self._cond:
            self._unacked = max(0, self._unacked - len(acks))
            done = self._closing and self._refs == 0 and self._unacked == 0
        if done:
            self._close()

    def release(self, linger_s: float) -> None:
        """Drop a reader's reference; disconnect once pending acks are in, or after ``linger_s``."""
        with self._cond:
            self._refs -= 1
            if self._refs > 0:
                return
            self._closing = True
            pending = self._unacked
        if pending == 0:
            self._close()
            return
        timer = threading.Timer(linger_s, self._close_if_unused)
        timer.daemon = True
        timer.start()

    def _close_if_unused(self) -> None:
        with self._cond:
            unused = self._closing and self._refs == 0
        if unused:
            self._close()

    def _close(self) -> None:
        with self._registry_lock:
            if self._closed:
                return
            self._closed = True
            if self._registry.get(self.settings.client_id) is self:
                del self._registry[self.settings.client_id]
        try:
            with self._write_lock:
                write_frame(self._receiver.stdin, None)
                self._receiver.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self._receiver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._receiver.kill()


class MqttCheckpointMark(CheckpointMark):
    """What a bundle read: the acks to send when it commits, plus the reader's counters and watermark."""

    def __init__(
        self,
        client_id: str,
        token: str,
        acks: Sequence[Ack],
        records_read: int,
        max_event_time: float | None,
        watermark: float | None,
    ):
        self.client_id = client_id
        self.token = token
        self.acks = tuple(tuple(ack) for ack in acks)
        self.records_read = records_read
        self.max_event_time = max_event_time
        self.watermark = watermark

    def finalize_checkpoint(self) -> None:
        """PUBACK this bundle's messages (idempotent: acks are dropped once the session reconnected or closed)."""
        if not self.acks:
            return
        session = _Session.lookup(self.client_id, self.token)
        if session is None:
            _LOGGER.warning("MQTT session %s is gone; %d messages will be redelivered", self.client_id, len(self.acks))
            return
        session.ack(self.acks)
        self.acks = ()

    def to_json(self) -> bytes:
        acks = [list(ack) for ack in self.acks]
        fields = [self.client_id, self.token, acks, self.records_read, self.max_event_time, self.watermark]
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, encoded: bytes) -> "MqttCheckpointMark":
        client_id, token, acks, records_read, max_event_time, watermark = json.loads(encoded)
        return cls(client_id, token, [tuple(a) for a in acks], records_read, max_event_time, watermark)


class MqttCheckpointMarkCoder(coders.Coder):
    """Deterministic JSON coder for :class:`MqttCheckpointMark` (its bytes key Beam's reader cache)."""

    def encode(self, value: MqttCheckpointMark) -> bytes:
        return value.to_json()

    def decode(self, encoded: bytes) -> MqttCheckpointMark:
        return MqttCheckpointMark.from_json(encoded)

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class RawEventsCoder(coders.Coder):
    """list[RawEvent] as (arrival time, length, payload) records; its size estimate is arithmetic.

    The runner samples the byte size of a source's output on every bundle; with a pickling coder that meant
    pickling every message of every batch again.
    """

    _HEAD = struct.Struct("<dI")

    def encode(self, value: list[RawEvent]) -> bytes:
        parts = [struct.pack("<I", len(value))]
        for event in value:
            payload = event.payload.encode() if isinstance(event.payload, str) else event.payload
            parts += [self._HEAD.pack(event.received_at, len(payload)), payload]
        return b"".join(parts)

    def decode(self, encoded: bytes) -> list[RawEvent]:
        (count,), offset, events = struct.unpack_from("<I", encoded), 4, []
        for _ in range(count):
            received_at, size = self._HEAD.unpack_from(encoded, offset)
            offset += self._HEAD.size
            events.append(RawEvent(encoded[offset:offset + size], received_at))
            offset += size
        return events

    def estimate_size(self, value: list[RawEvent]) -> int:
        return 4 + sum(self._HEAD.size + len(event.payload) for event in value)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return typehints.List[RawEvent]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


_TS_NUMBER = re.compile(rb'"ts"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')
_TS_STRING = re.compile(rb'"ts"\s*:\s*"([^"]{1,64})"')


def event_time(payload: bytes, received_at: float, max_clock_skew_s: float) -> float:
    """The payload's ``ts`` (epoch seconds or ISO-8601, found without a JSON parse), else ``received_at``.

    A time more than ``max_clock_skew_s`` ahead of ``received_at`` is capped there, so one bad clock cannot
    push the watermark into the future.
    """
    head = payload[:4096]
    ts: float | None = None
    match = _TS_NUMBER.search(head)
    if match:
        ts = float(match.group(1))
    else:
        match = _TS_STRING.search(head)
        if match:
            try:
                parsed = datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00"))
            except (ValueError, UnicodeDecodeError):
                parsed = None
            if parsed is not None:
                ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    if ts is None or not math.isfinite(ts) or ts < 0:
        return received_at
    return min(ts, received_at + max_clock_skew_s)


class MqttReader(UnboundedReader):
    """Reads one session's deliveries; keeps the acks of the current bundle until its checkpoint is cut.

    A record is a list of RawEvents: the messages that arrive within ``batch_window_s`` of its first one (fewer
    after a ``batch_wait_s`` lull, at most ``max_batch``), so the runner's per-element cost is paid per batch, not
    per message. Its timestamp is the batch's earliest event time; the watermark follows the newest event time
    seen, minus ``max_lateness_s``.
    """

    def __init__(self, source: "MqttSource", mark: MqttCheckpointMark | None):
        self._settings = source.settings
        self._limits = source.limits
        self._session = _Session.acquire(source.settings)
        self._read: list[_Delivery] = []
        self._current: list[RawEvent] | None = None
        self._current_ts = MIN_TIMESTAMP
        self._records = mark.records_read if mark else 0
        self._max_event = mark.max_event_time if mark else None
        self._watermark = mark.watermark if mark else None
        self._idle_since = time.monotonic()
        self._bundle_start = True
        self._finished = False

    def start(self) -> bool:
        return self._next()

    def advance(self) -> bool:
        return self._next()

    def _next(self) -> bool:
        if _stop_requested.is_set():
            self._finished = True
        if self._finished:
            return False
        limits = self._limits
        wait = limits.poll_wait_s if self._bundle_start else limits.batch_wait_s
        self._bundle_start = False
        deliveries = self._session.take(wait, self._batch_limit(), limits.batch_window_s, limits.batch_wait_s)
        if not deliveries:
            self._on_idle()
            return False
        self._idle_since = time.monotonic()
        self._read.extend(delivery for delivery in deliveries if delivery.qos)
        times = [self._event_time(delivery) for delivery in deliveries]
        self._current = [RawEvent(delivery.payload, delivery.received_at) for delivery in deliveries]
        self._current_ts = Timestamp.of(min(times))
        self._records += len(deliveries)
        newest = max(times)
        if self._max_event is None or newest > self._max_event:
            self._max_event = newest
            self._raise_watermark(newest - self._limits.max_lateness_s)
        if self._limits.max_records is not None and self._records >= self._limits.max_records:
            self._finished = True
        return True

    def _batch_limit(self) -> int:
        if self._limits.max_records is None:
            return self._limits.max_batch
        return max(1, min(self._limits.max_batch, self._limits.max_records - self._records))

    def _event_time(self, delivery: _Delivery) -> float:
        """The payload's event time; an oversize payload (dead-lettered downstream) counts as received now."""
        if len(delivery.payload) > self._settings.max_payload_bytes:
            return delivery.received_at
        return event_time(delivery.payload, delivery.received_at, self._limits.max_clock_skew_s)

    def _on_idle(self) -> None:
        idle = time.monotonic() - self._idle_since
        stop = self._limits.stop_after_idle_s
        if stop is not None and idle >= stop:
            self._finished = True
        after = self._limits.idle_watermark_after_s
        if after is not None and idle >= after:
            self._raise_watermark(time.time() - self._limits.max_lateness_s)

    def _raise_watermark(self, value: float) -> None:
        if self._watermark is None or value > self._watermark:
            self._watermark = value

    def get_current(self) -> list[RawEvent]:
        if self._current is None:
            raise ValueError("no current record")
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return self._current_ts

    def get_watermark(self) -> Timestamp:
        if self._finished:
            return MAX_TIMESTAMP
        return MIN_TIMESTAMP if self._watermark is None else Timestamp.of(self._watermark)

    def get_checkpoint_mark(self) -> MqttCheckpointMark:
        acks = [(d.epoch, d.mid) for d in self._read]
        self._read = []
        self._bundle_start = True
        return MqttCheckpointMark(
            self._settings.client_id, self._session.token, acks, self._records, self._max_event, self._watermark)

    def close(self) -> None:
        if self._session is None:
            return
        if self._read:
            self._session.give_back(self._read)
            self._read = []
        self._session.release(self._limits.close_linger_s)
        self._session = None


class MqttSource(UnboundedSource):
    """An MQTT subscription as an unbounded source of list[RawEvent] (not split: one client id, one session)."""

    def __init__(self, settings: MqttSettings, limits: ReadLimits = ReadLimits()):
        if not settings.topics:
            raise ValueError("MqttSettings.topics is empty: nothing to subscribe to")
        self.settings = settings
        self.limits = limits

    def split(self, desired_num_splits: int, options: Any = None) -> list["MqttSource"]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: MqttCheckpointMark | None) -> MqttReader:
        return MqttReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return MqttCheckpointMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return RawEventsCoder()


class ReadFromMqtt(beam.PTransform):
    """Read an MQTT subscription as a PCollection of list[RawEvent] (what arrived together, in arrival order).

    A bundle holds ``max_records_per_bundle`` batches (default one: each batch is processed, committed and its
    messages acknowledged as soon as it is read), or fewer if ``max_read_time_s`` passes or the stream idles.
    """

    def __init__(
        self,
        settings: MqttSettings | Mapping[str, Any] | str,
        limits: ReadLimits = ReadLimits(),
        *,
        max_read_time_s: float = 1.0,
        max_records_per_bundle: int = 1,
        poll_interval_s: float = 0.0,
    ):
        super().__init__()
        self._source = MqttSource(MqttSettings.coerce(settings), limits)
        self._max_read_time_s = max_read_time_s
        self._max_records_per_bundle = max_records_per_bundle
        self._poll_interval_s = poll_interval_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        events = pbegin | ReadFromUnboundedSource(
            self._source,
            poll_interval=self._poll_interval_s,
            max_records_per_bundle=self._max_records_per_bundle,
            max_read_time_seconds=self._max_read_time_s,
        )
        events.element_type = typehints.List[RawEvent]
        return events


def mqtt_source(settings: MqttSourceSettings, rules: EventRules) -> Source:
    """The subscription, with the deployment's one payload limit (``events.max_payload_bytes``)."""
    mqtt = settings.mqtt
    if "max_payload_bytes" in mqtt.model_fields_set and mqtt.max_payload_bytes != rules.max_payload_bytes:
        raise ValueError("source.mqtt.max_payload_bytes: set the payload limit once, as events.max_payload_bytes")
    broker = mqtt.model_copy(update={"max_payload_bytes": rules.max_payload_bytes})
    return Source(ReadFromMqtt(broker, settings.read), live=True, stop=request_stop)
