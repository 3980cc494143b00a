"""Parse and validate raw payloads in batches; every rejected event goes to the dead-letter output with its reason."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pandas as pd
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from pydantic import BaseModel, ConfigDict, Field

from features.schema import EventBatch, EventRules, RawEvent, parse_events
from inference_pipeline.steps.roster import DeviceRoster, FleetSettings

DEAD_LETTERS = "dead_letters"
METRICS_NAMESPACE = "iotml"


class EventSettings(BaseModel):
    """Validation limits applied before features; rejected events go to the dead letters. ``known_devices`` and the
    ``device_id`` column of ``known_devices_file`` (CSV) form the device registry (none: any device). Event times
    before ``min_timestamp`` (epoch seconds; default 2000-01-01) or more than ``max_future_s`` ahead of the clock, and
    readings beyond +/-``max_abs_reading`` (no sensor reads that; the float32 features would overflow) are
    rejected."""

    model_config = ConfigDict(extra="forbid")

    known_devices: list[str] | None = None
    known_devices_file: str | None = None
    max_future_s: float = Field(300.0, gt=0)
    max_payload_bytes: int = Field(65536, ge=64)
    min_timestamp: float = 946684800.0
    max_abs_reading: float = Field(1e9, gt=0, le=1e15)

    def rules(self, sensors: tuple[str, ...], devices_file: Path | None = None) -> EventRules:
        """What a valid event is for a model's sensors (``devices_file``: another device registry CSV)."""
        known = set(self.known_devices or [])
        for path in filter(None, (self.known_devices_file, devices_file)):
            known |= set(pd.read_csv(path)["device_id"].astype(str))
        return EventRules(sensors, frozenset(known) if known else None, self.max_future_s, self.max_payload_bytes,
                          self.min_timestamp, self.max_abs_reading)


class _ParseFn(beam.DoFn):
    def __init__(self, rules: EventRules, fleet: FleetSettings):
        self._rules = rules
        self._fleet = fleet
        self._tracked = Metrics.distribution(METRICS_NAMESPACE, "tracked_devices")

    def setup(self) -> None:
        self._roster = DeviceRoster(self._fleet)

    def process(self, raws: list[RawEvent]) -> Iterator:
        now = time.time()
        batches, dead = parse_events(raws, self._rules, now=now)
        for batch in batches:
            for device_id, notice in self._roster.seen(batch.device_id, float(batch.received_at.max())):
                yield device_id, EventBatch.of_notice(device_id, notice, len(self._rules.sensors))
            yield batch.device_id, batch
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
        for device_id, notice in self._roster.due(now):
            yield device_id, EventBatch.of_notice(device_id, notice, len(self._rules.sensors))
        self._tracked.update(len(self._roster))


class ParseEvents(beam.PTransform):
    """list[RawEvent] (an empty list: a source's idle tick) -> main: (device_id, EventBatch), including the
    roster's notices (``steps.roster``); ``dead_letters``: DeadLetter."""

    def __init__(self, rules: EventRules, fleet: FleetSettings = FleetSettings()):
        super().__init__()
        self._rules = rules
        self._fleet = fleet

    def expand(self, raws: beam.PCollection) -> pvalue.DoOutputsTuple:
        return raws | "Validate" >> beam.ParDo(_ParseFn(self._rules, self._fleet)).with_outputs(
            DEAD_LETTERS, main="events")
