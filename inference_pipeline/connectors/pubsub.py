"""Google Cloud Pub/Sub through Beam's Pub/Sub IO (Dataflow): ``source.kind: pubsub`` reads a subscription as
list[RawEvent] batches; a sink of ``kind: pubsub`` publishes each result row as a JSON message to a topic.

The source's element timestamp is Pub/Sub's publish time; the payload's ``ts`` stays the event time used for
features. Pub/Sub delivers at least once: the pipeline's dedup step drops redelivered copies by event id.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import apache_beam as beam
from pydantic import Field

from features.schema import EventRules, RawEvent
from inference_pipeline.connectors.base import ConnectorSettings, Sink, SinkContext, SinkSettings, Source
from inference_pipeline.results import Table, table_messages


class PubSubSourceSettings(ConnectorSettings):
    """``subscription``: ``projects/<project>/subscriptions/<name>``; ``batch_size``: most events per batch."""

    kind: Literal["pubsub"] = "pubsub"
    subscription: str = Field(pattern=r"^projects/[^/]+/subscriptions/[^/]+$")
    batch_size: int = Field(2000, ge=1)


class PubSubSinkSettings(SinkSettings):
    """``topic``: ``projects/<project>/topics/<name>``."""

    kind: Literal["pubsub"] = "pubsub"
    topic: str = Field(pattern=r"^projects/[^/]+/topics/[^/]+$")


def received(payload: bytes) -> RawEvent:
    """A payload stamped with the second it reached the worker."""
    return RawEvent(payload, time.time())


class ReadPubSubEvents(beam.PTransform):
    """``projects/<project>/subscriptions/<name>`` -> list[RawEvent] of at most ``batch_size`` (per bundle)."""

    def __init__(self, subscription: str, batch_size: int = 2000):
        super().__init__()
        self._subscription = subscription
        self._batch_size = batch_size

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "Subscription" >> beam.io.ReadFromPubSub(subscription=self._subscription)
                | "Received" >> beam.Map(received).with_output_types(RawEvent)
                | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size))


@beam.ptransform_fn
def PublishToPubSub(values: beam.PCollection, tables: Sequence[Table], topic: str) -> beam.PCollection:
    """Result values -> one JSON message per row of each table -> a Pub/Sub topic."""
    return (values
            | "ToJson" >> beam.FlatMap(table_messages, tuple(tables))
            | "Encode" >> beam.Map(str.encode).with_output_types(bytes)
            | "PubSub" >> beam.io.WriteToPubSub(topic))


def pubsub_source(settings: PubSubSourceSettings, rules: EventRules) -> Source:
    return Source(ReadPubSubEvents(settings.subscription, settings.batch_size), live=True)


class PubSubSink(Sink):
    def __init__(self, settings: PubSubSinkSettings, context: SinkContext):
        self._topic = settings.topic

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        return PublishToPubSub(tables, self._topic)
