"""Split a bounded stream into device shards, so several local workers run the stateful steps side by side.

Beam 2.77's local runner runs a stage that holds user state on one worker only (a key must never be processed by
two workers at once, and it does not partition its input by key). After ``ShardByDevice`` each device's events are
the values of one key of a ``GroupByKey``, in the order the source read them (each source batch cut into one list
per device); the runner fix in ``runtime.local_runner`` lets such a stage run on all workers, which the runner deals
whole keys in turn (so each gets about as many devices). A device's state is then only ever touched by one worker.

Only for bounded sources: a ``GroupByKey`` in the global window emits when its input ends, which a live stream
never does. The key of an event is the device id ``parse_events`` would read from it
(``features.schema.payload_device``, exact without decoding the JSON where it can be); a payload with no device id
cannot be a valid event and is keyed ``""``: it becomes a dead letter there as anywhere else.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam import typehints

from features.coders import RawEventBatch
from features.schema import RawEvent, payload_device


def device_key(raw: RawEvent, max_payload_bytes: int) -> str:
    """The device id the parser will read from the event, or "" for an event that can have none (a payload kept
    only as its head because it is over the limit never is decoded)."""
    device_id = payload_device(raw.payload, max_payload_bytes) if raw.size is None else None
    return "" if device_id is None else device_id


class _SplitByDeviceFn(beam.DoFn):
    def __init__(self, max_payload_bytes: int):
        self._max_payload_bytes = max_payload_bytes

    def process(self, raws: list[RawEvent]) -> Iterator[tuple[str, RawEventBatch]]:
        parts: dict[str, RawEventBatch] = {}
        for raw in raws:
            key = device_key(raw, self._max_payload_bytes)
            part = parts.get(key)
            if part is None:
                part = parts[key] = RawEventBatch()
            part.append(raw)
        yield from parts.items()


def _in_order(element: tuple[str, Iterable[RawEventBatch]]) -> Iterable[RawEventBatch]:
    return element[1]


class ShardByDevice(beam.PTransform):
    """list[RawEvent] (bounded) -> list[RawEvent], grouped by device for several workers: each list holds one
    device's events of one source batch, a device's lists in source order."""

    def __init__(self, max_payload_bytes: int):
        super().__init__()
        self._max_payload_bytes = max_payload_bytes

    def expand(self, raws: beam.PCollection) -> beam.PCollection:
        return (raws
                | "SplitByDevice" >> beam.ParDo(_SplitByDeviceFn(self._max_payload_bytes)).with_output_types(
                    typehints.Tuple[str, RawEventBatch])
                | "GroupByDevice" >> beam.GroupByKey()
                | "InReadOrder" >> beam.FlatMap(_in_order).with_output_types(RawEventBatch))
