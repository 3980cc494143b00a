"""Pub/Sub source: a subscription read through Beam's Pub/Sub IO (Dataflow), as list[RawEvent] batches.

The element timestamp is Pub/Sub's publish time; the payload's ``ts`` stays the event time used for features.
Pub/Sub delivers at least once: the pipeline's dedup step drops redelivered copies by event id.
"""
from __future__ import annotations

import time

import apache_beam as beam

from features.schema import RawEvent


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
