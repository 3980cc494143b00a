"""MQTT source: a persistent MQTT session read as a Beam ``UnboundedSource``, acknowledged when Beam finalizes a bundle.

Delivery is at least once. Messages are PUBACKed only in ``CheckpointMark.finalize_checkpoint()``, which the runner
calls after the bundle that read them has committed; a message read by a process that dies before that is resent by
the broker when the session resumes (same client id, clean start off, QoS 1). Downstream must tolerate duplicates
(the pipeline drops them by event id, see ``inference_pipeline.steps.dedup``).

The MQTT connection lives in a receiver child process (``receiver``); this process gathers its deliveries into
batches, one list of RawEvents per pipeline element, so per-element costs are paid per batch. A payload over
``max_payload_bytes`` arrives as its head and true size (``RawEvent.size``) and is dead-lettered as oversize.

The broker bounds what survives: Mosquitto keeps at most ``max_queued_messages`` (default 1000) messages per
session beyond those in flight and drops the rest silently, also while the pipeline is down. Size it (and
``persistent_client_expiration``) for the longest outage to ride out.
"""
from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam import coders, typehints
from apache_beam.io.unbounded_source import ReadFromUnboundedSource, UnboundedReader, UnboundedSource
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from features.coders import RawEventsCoder
from features.schema import EventRules, RawEvent
from inference_pipeline.connectors.base import Source
from inference_pipeline.connectors.mqtt.checkpoint import MqttCheckpointMark, MqttCheckpointMarkCoder
from inference_pipeline.connectors.mqtt.client import connect_and_wait, create_client
from inference_pipeline.connectors.mqtt.event_time import event_time
from inference_pipeline.connectors.mqtt.session import _Delivery, _Session
from inference_pipeline.connectors.mqtt.settings import MqttSettings, MqttSourceSettings, ReadLimits

_stop_requested = threading.Event()


def request_stop(stop: bool = True) -> None:
    """End (or, with ``stop=False``, allow again) every MQTT stream read in this process: readers report their
    final watermark, the pipeline finishes the bundles in flight, acknowledges them and ends (a drain)."""
    if stop:
        _stop_requested.set()
    else:
        _stop_requested.clear()


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
        self._ticked_at = self._idle_since
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
        deliveries = self._session.take(wait, self._batch_limit(), limits.batch_window_s, limits.batch_wait_s,
                                        limits.max_batch_bytes)
        if not deliveries:
            self._on_idle()
            return self._tick()
        self._idle_since = self._ticked_at = time.monotonic()
        self._read.extend(delivery for delivery in deliveries if delivery.qos)
        times = [self._event_time(delivery) for delivery in deliveries]
        self._current = [RawEvent(d.payload, d.received_at, d.size if d.truncated else None) for d in deliveries]
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
        """The payload's event time; an oversize payload (dead-lettered downstream: never scanned, and here only
        its head) counts as received now."""
        if delivery.size > self._settings.max_payload_bytes:
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

    def _tick(self) -> bool:
        """An empty batch, once per ``idle_tick_s`` while idle: time passes downstream too."""
        every, now = self._limits.idle_tick_s, time.monotonic()
        if every is None or self._finished or now - self._ticked_at < every:
            return False
        self._ticked_at = now
        self._current = []
        self._current_ts = Timestamp.of(self._watermark if self._watermark is not None else time.time())
        return True

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
        self._read, self._current = [], None  # a parked reader holds no batch
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
    """An MQTT subscription as an unbounded source of list[RawEvent] (not split: one client id, one session).

    It pickles to the same bytes however often it is pickled and unpickled: Beam parks the live reader between
    bundles under the pickled source and finds it again by the pickle of the source it decoded for the next
    bundle. Pickled whole, pydantic settings carry their set of given fields, whose order can change in a round
    trip (with some hash seeds): then every bundle missed the parked reader, opened another, and each parked one
    kept its last batch (up to 100 of them) until it idled out.
    """

    def __init__(self, settings: MqttSettings, limits: ReadLimits = ReadLimits()):
        if not settings.topics:
            raise ValueError("MqttSettings.topics is empty: nothing to subscribe to")
        self.settings = MqttSettings.model_validate(settings.model_dump())
        self.limits = limits

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], ReadLimits]]:
        return _mqtt_source, (self.settings.model_dump(), self.limits)

    def split(self, desired_num_splits: int, options: Any = None) -> list["MqttSource"]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: MqttCheckpointMark | None) -> MqttReader:
        return MqttReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return MqttCheckpointMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return RawEventsCoder()


def _mqtt_source(settings: dict[str, Any], limits: ReadLimits) -> MqttSource:
    return MqttSource(MqttSettings.model_validate(settings), limits)


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


def check_broker(settings: MqttSettings) -> None:
    """Connect once with a throwaway client id (never the stream's own session) and disconnect; raises
    ConnectionError naming the broker's refusal, or saying it did not answer."""
    client = create_client(settings, client_id=f"{settings.client_id}-check-{uuid.uuid4().hex[:8]}", clean_start=True,
                           manual_ack=False)
    connect_and_wait(client, settings)
    client.disconnect()
    client.loop_stop()


def mqtt_source(settings: MqttSourceSettings, rules: EventRules) -> Source:
    """The subscription, with the deployment's one payload limit (``events.max_payload_bytes``)."""
    broker = settings.mqtt.model_copy(update={"max_payload_bytes": rules.max_payload_bytes})
    return Source(ReadFromMqtt(broker, settings.read), live=True, stop=request_stop,
                  check=functools.partial(check_broker, broker))
