"""A sink of ``kind: mqtt``: each result row as a JSON message at QoS 1; a bundle completes only once the broker has
acknowledged all of it."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import paho.mqtt.client as mqtt

from inference_pipeline.connectors.base import Sink, SinkContext
from inference_pipeline.connectors.mqtt.client import connect_and_wait, create_client
from inference_pipeline.connectors.mqtt.settings import MqttSettings, MqttSinkSettings, MqttSourceSettings
from inference_pipeline.results import Table, table_messages

_FLUSH_EVERY = 10_000


class _PublishDoFn(beam.DoFn):
    """One connection per DoFn instance (its own client id, clean session); waits for PUBACKs in ``finish_bundle``."""

    def __init__(self, settings: MqttSettings, topic: str, qos: int, timeout_s: float):
        self._settings = settings
        self._topic = topic
        self._qos = qos
        self._timeout_s = timeout_s
        self._client: mqtt.Client | None = None

    def setup(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._confirmed: set[int] = set()
        self._refused: list[str] = []
        client_id = f"{self._settings.client_id}-pub-{uuid.uuid4().hex[:8]}"
        self._client = create_client(self._settings, client_id=client_id, clean_start=True, manual_ack=False)
        self._client.on_publish = self._on_publish
        connect_and_wait(self._client, self._settings)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if not self._qos:
            return
        with self._cond:
            self._confirmed.add(mid)
            if reason_code.is_failure:
                self._refused.append(str(reason_code))
            self._cond.notify_all()

    def process(self, element: str | bytes | Mapping[str, Any]) -> None:
        payload = element if isinstance(element, (str, bytes)) else json.dumps(element, separators=(",", ":"))
        info = self._client.publish(self._topic, payload, qos=self._qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError("MQTT publish queue is full")
        if self._qos:
            with self._cond:
                self._pending.add(info.mid)
            if len(self._pending) >= _FLUSH_EVERY:
                self._wait_for_acks()

    def finish_bundle(self) -> None:
        self._wait_for_acks()

    def _wait_for_acks(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        with self._cond:
            while not self._pending <= self._confirmed:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = len(self._pending - self._confirmed)
                    raise TimeoutError(f"{missing} MQTT publishes not acknowledged within {self._timeout_s} s")
                self._cond.wait(left)
            self._confirmed -= self._pending
            self._pending.clear()
            refused, self._refused = self._refused, []
        if refused:
            raise RuntimeError(f"broker refused {len(refused)} MQTT publishes: {refused[0]}")

    def teardown(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


class PublishToMqtt(beam.PTransform):
    """Publish each element (a JSON string, bytes, or a mapping dumped to JSON) to ``topic``.

    ``settings_like`` is :class:`MqttSettings`, a mapping or an ``mqtt://`` URL; the publisher connects as
    ``<client_id>-pub-<random>`` so it never takes over the source's persistent session.
    """

    def __init__(
        self,
        settings_like: MqttSettings | Mapping[str, Any] | str,
        topic: str,
        *,
        qos: int = 1,
        timeout_s: float = 60.0,
    ):
        super().__init__()
        self._settings = MqttSettings.coerce(settings_like)
        self._topic = topic
        self._qos = qos
        self._timeout_s = timeout_s

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | beam.ParDo(_PublishDoFn(self._settings, self._topic, self._qos, self._timeout_s))


class MqttSink(Sink):
    """Publishes with its own broker settings, else the MQTT source's."""

    def __init__(self, settings: MqttSinkSettings, context: SinkContext):
        broker = settings.mqtt or (context.source.mqtt if isinstance(context.source, MqttSourceSettings) else None)
        if broker is None:
            raise ValueError("mqtt: broker settings are required (there is no MQTT source to share)")
        self.broker = broker
        self._settings = settings

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        return PublishRows(tuple(tables), self.broker, self._settings.topic, self._settings.qos)


@beam.ptransform_fn
def PublishRows(values: beam.PCollection, tables: Sequence[Table], broker: MqttSettings, topic: str, qos: int):
    """Result values -> one JSON message per row of each table -> ``topic``."""
    return values | "ToJson" >> beam.FlatMap(table_messages, tables) | "Publish" >> PublishToMqtt(broker, topic, qos=qos)
