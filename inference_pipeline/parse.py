"""Parse and validate raw payloads in batches; every rejected event goes to the dead-letter output with its reason."""
from __future__ import annotations

import time
from collections.abc import Iterator

import apache_beam as beam
from apache_beam import pvalue

from features.schema import EventRules, RawEvent, parse_events

DEAD_LETTERS = "dead_letters"


class _ParseFn(beam.DoFn):
    def __init__(self, rules: EventRules):
        self._rules = rules

    def process(self, raws: list[RawEvent]) -> Iterator:
        batches, dead = parse_events(raws, self._rules, now=time.time())
        for batch in batches:
            yield batch.device_id, batch
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)


class ParseEvents(beam.PTransform):
    """list[RawEvent] -> main: (device_id, EventBatch); ``dead_letters``: DeadLetter."""

    def __init__(self, rules: EventRules):
        super().__init__()
        self._rules = rules

    def expand(self, raws: beam.PCollection) -> pvalue.DoOutputsTuple:
        return raws | "Validate" >> beam.ParDo(_ParseFn(self._rules)).with_outputs(DEAD_LETTERS, main="events")
