"""Results as JSON messages on a message topic: MQTT (QoS 1, via ``PublishToMqtt``) or Google Cloud Pub/Sub.

Message formats (one JSON object per message): an alert is an ``ALERT_COLUMNS`` object (sent when the incident opens
and again when it closes), a dead letter a ``DEAD_LETTER_COLUMNS`` object, a prediction a ``PREDICTION_COLUMNS``
object.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import apache_beam as beam

from features.schema import DeadLetter
from inference_pipeline.alerts import ALERT_COLUMNS, Incident
from inference_pipeline.scoring import PREDICTION_COLUMNS, PredictionBatch
from inference_pipeline.sinks.sqlite import DEAD_LETTER_COLUMNS


def _dumps(fields: dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), default=str)


def alert_messages(incident: Incident) -> list[str]:
    return [_dumps(dict(zip(ALERT_COLUMNS, incident.row())))]


def dead_letter_messages(letter: DeadLetter) -> list[str]:
    return [_dumps({column: getattr(letter, column) for column in DEAD_LETTER_COLUMNS})]


def prediction_messages(element: tuple[str, PredictionBatch]) -> list[str]:
    return [_dumps(dict(zip(PREDICTION_COLUMNS, row))) for row in element[1].rows()]


class PublishMessages(beam.PTransform):
    """Elements -> JSON messages (``to_messages``) -> ``topic`` on MQTT or Pub/Sub.

    ``kind`` is ``mqtt`` (``mqtt`` holds the broker settings: a mapping or URL) or ``pubsub`` (``topic`` is
    ``projects/<project>/topics/<name>``).
    """

    def __init__(self, kind: str, topic: str, to_messages: Callable[[Any], Iterable[str]],
                 mqtt: Mapping[str, Any] | str | None = None, qos: int = 1):
        super().__init__()
        if kind == "mqtt" and mqtt is None:
            raise ValueError(f"an MQTT sink for {topic!r} needs broker settings")
        if kind not in ("mqtt", "pubsub"):
            raise ValueError(f"unknown topic sink kind {kind!r}")
        self._kind = kind
        self._topic = topic
        self._to_messages = to_messages
        self._mqtt = mqtt
        self._qos = qos

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        messages = pcoll | "ToJson" >> beam.FlatMap(self._to_messages)
        if self._kind == "mqtt":
            from inference_pipeline.sinks.mqtt import PublishToMqtt

            return messages | "Mqtt" >> PublishToMqtt(self._mqtt, self._topic, qos=self._qos)
        return (messages | "Encode" >> beam.Map(str.encode).with_output_types(bytes)
                | "PubSub" >> beam.io.WriteToPubSub(self._topic))
