"""MQTT source: a persistent MQTT session read as a Beam ``UnboundedSource``, acknowledged when Beam finalizes a bundle.

Delivery is at least once. Messages are PUBACKed only in ``CheckpointMark.finalize_checkpoint()``, which the runner
calls after the bundle that read them has committed; a message read by a process that dies before that is resent by
the broker when the session resumes (same client id, clean start off, QoS 1). Downstream must tolerate duplicates.

The broker bounds what survives: Mosquitto keeps at most ``max_queued_messages`` (default 1000) messages per
session beyond those in flight and drops the rest silently, also while the pipeline is down. Size it (and
``persistent_client_expiration``) for the longest outage to ride out.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import paho.mqtt.client as mqtt
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource)
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from features.schema import RawEvent
from inference_pipeline.sources.mqtt_settings import MqttSettings, ReadLimits

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


def create_client(settings: MqttSettings, *, client_id: str, clean_start: bool, manual_ack: bool) -> mqtt.Client:
    """A paho 2.x client configured from ``settings`` (auth, TLS, backoff); not yet connected."""
    v5 = settings.protocol == "5"
    kwargs: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        "manual_ack": manual_ack,
    }
    if not v5:
        kwargs["clean_session"] = clean_start
    client = mqtt.Client(**kwargs)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.resolved_password())
    if settings.tls is not None:
        client.tls_set(ca_certs=settings.tls.ca_certs, certfile=settings.tls.certfile, keyfile=settings.tls.keyfile)
        client.tls_insecure_set(settings.tls.insecure)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    client.max_inflight_messages_set(settings.max_inflight)
    client.max_queued_messages_set(0)
    return client


def connect_in_background(client: mqtt.Client, settings: MqttSettings, *, clean_start: bool, persistent: bool) -> None:
    """Start connecting in paho's network thread, which also reconnects with exponential backoff.

    ``persistent``: the broker keeps the session ``settings.session_expiry_s`` after a disconnect (MQTT v5; with
    v3.1.1 that follows from ``clean_start`` off). With v5, ``clean_start`` applies to the first connect only, so a
    reconnect never discards the session's unacknowledged messages.
    """
    if settings.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s if persistent else 0
        props.ReceiveMaximum = settings.max_inflight
        start = mqtt.MQTT_CLEAN_START_FIRST_ONLY if clean_start else False
        client.connect_async(settings.host, settings.port, settings.keepalive, clean_start=start, properties=props)
    else:
        client.connect_async(settings.host, settings.port, settings.keepalive)
    client.loop_start()


@dataclasses.dataclass(frozen=True)
class _Delivery:
    payload: bytes
    received_at: float
    mid: int
    qos: int
    epoch: int


class _Session:
    """The one connection of a client id in this process, shared by successive readers.

    The network thread queues deliveries; ``epoch`` counts CONNACKs. After a reconnect the broker resends every
    unacknowledged message under a new epoch, so acks of an older epoch are dropped (their resent copies get acked).
    """

    _registry: dict[str, "_Session"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, settings: MqttSettings):
        self.settings = settings
        self.token = uuid.uuid4().hex
        self.epoch = 0
        self._deliveries: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self._returned: list[_Delivery] = []
        self._lock = threading.Lock()
        self._refs = 0
        self._unacked = 0
        self._closing = False
        self._closed = False
        self._client = create_client(
            settings, client_id=settings.client_id, clean_start=settings.clean_start, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        connect_in_background(self._client, settings, clean_start=settings.clean_start, persistent=True)

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
            with session._lock:
                session._refs += 1
                session._closing = False
            return session

    @classmethod
    def lookup(cls, client_id: str, token: str) -> "_Session | None":
        with cls._registry_lock:
            session = cls._registry.get(client_id)
        return session if session is not None and session.token == token else None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("MQTT connect refused for %s: %s", self.settings.client_id, reason_code)
            return
        self.epoch += 1
        _LOGGER.info(
            "MQTT %s connected (session present: %s, epoch %d)", self.settings.client_id, flags.session_present, self.epoch)
        if self.settings.topics:
            client.subscribe([(topic, self.settings.qos) for topic in self.settings.topics])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._closed:
            return
        if reason_code == "Session taken over":
            _LOGGER.error("MQTT client id %s was taken over: two consumers share it", self.settings.client_id)
        else:
            _LOGGER.warning("MQTT %s disconnected (%s); reconnecting", self.settings.client_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._deliveries.put(_Delivery(message.payload, time.time(), message.mid, message.qos, self.epoch))

    def get(self, timeout: float) -> _Delivery | None:
        """The next delivery (redeliveries of failed readers first), or None after ``timeout`` seconds."""
        with self._lock:
            if self._returned:
                return self._returned.pop(0)
        try:
            delivery = self._deliveries.get(timeout=timeout) if timeout > 0 else self._deliveries.get_nowait()
        except queue.Empty:
            return None
        if delivery.qos:
            with self._lock:
                self._unacked += 1
        return delivery

    def give_back(self, deliveries: Sequence[_Delivery]) -> None:
        """Re-offer deliveries that a reader read but never checkpointed (its bundle failed)."""
        with self._lock:
            self._returned[:0] = deliveries

    def ack(self, acks: Sequence[Ack]) -> int:
        """PUBACK the acks of the current epoch in order; returns how many were sent."""
        sent = 0
        epoch = self.epoch
        for ack_epoch, mid in acks:
            if ack_epoch == epoch and not self._closed:
                self._client.ack(mid, 1)
                sent += 1
        with self._lock:
            self._unacked = max(0, self._unacked - len(acks))
            done = self._closing and self._refs == 0 and self._unacked == 0
        if done:
            self._close()
        return sent

    def release(self, linger_s: float) -> None:
        """Drop a reader's reference; disconnect once pending acks are in, or after ``linger_s``."""
        with self._lock:
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
        with self._lock:
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
        self._client.disconnect()
        self._client.loop_stop()


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
    """Reads one session's deliveries; keeps the acks of the current bundle until its checkpoint is cut."""

    def __init__(self, source: "MqttSource", mark: MqttCheckpointMark | None):
        self._settings = source.settings
        self._limits = source.limits
        self._session = _Session.acquire(source.settings)
        self._read: list[_Delivery] = []
        self._current: RawEvent | None = None
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
        wait = self._limits.poll_wait_s if self._bundle_start else self._limits.batch_wait_s
        self._bundle_start = False
        delivery = self._session.get(wait)
        if delivery is None:
            self._on_idle()
            return False
        self._idle_since = time.monotonic()
        if delivery.qos:
            self._read.append(delivery)
        if len(delivery.payload) > self._settings.max_payload_bytes:
            ts = delivery.received_at
        else:
            ts = event_time(delivery.payload, delivery.received_at, self._limits.max_clock_skew_s)
        self._current = RawEvent(delivery.payload, delivery.received_at)
        self._current_ts = Timestamp.of(ts)
        self._records += 1
        if self._max_event is None or ts > self._max_event:
            self._max_event = ts
            self._raise_watermark(ts - self._limits.max_lateness_s)
        if self._limits.max_records is not None and self._records >= self._limits.max_records:
            self._finished = True
        return True

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

    def get_current(self) -> RawEvent:
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
    """An MQTT subscription as an unbounded source of :class:`RawEvent` (not split: one client id, one session)."""

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
        return coders.registry.get_coder(RawEvent)


class ReadFromMqtt(beam.PTransform):
    """Read an MQTT subscription as a PCollection of :class:`RawEvent`, timestamped with the events' ``ts``.

    A bundle ends after ``max_read_time_s`` or ``max_records_per_bundle`` records (default: the in-flight window,
    which the broker will not exceed without acks) or when no message arrives for ``limits.batch_wait_s``;
    its messages are acknowledged when it commits.
    """

    def __init__(
        self,
        settings: MqttSettings | Mapping[str, Any] | str,
        limits: ReadLimits = ReadLimits(),
        *,
        max_read_time_s: float = 1.0,
        max_records_per_bundle: int | None = None,
        poll_interval_s: float = 0.0,
    ):
        super().__init__()
        self._source = MqttSource(MqttSettings.coerce(settings), limits)
        self._max_read_time_s = max_read_time_s
        self._max_records_per_bundle = max_records_per_bundle or self._source.settings.max_inflight
        self._poll_interval_s = poll_interval_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        events = pbegin | ReadFromUnboundedSource(
            self._source,
            poll_interval=self._poll_interval_s,
            max_records_per_bundle=self._max_records_per_bundle,
            max_read_time_seconds=self._max_read_time_s,
        )
        events.element_type = RawEvent
        return events
