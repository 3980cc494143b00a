"""Live stream metrics: Beam counters for every outcome and, every few seconds, a log line with throughput, dead
letters, duplicates and latency percentiles (event time -> prediction, and arrival -> prediction).

Each outcome stream gets its own reporting step (no Flatten: the local runner would hold a flattened stream back
until the end); the steps of one worker process add to one tally, so the log line covers that worker, which on the
local runner is the whole stream.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from features.schema import DeadLetter
from inference_pipeline.results import DeviceResults, PredictionBatch
from inference_pipeline.steps.dedup import METRICS_NAMESPACE, Duplicate

LOG = logging.getLogger(__name__)
LOG_EVERY_S = 5.0


@dataclasses.dataclass
class Interval:
    """What one reporting interval saw."""

    started: float
    predictions: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    event_latency_s: list[np.ndarray] = dataclasses.field(default_factory=list)
    arrival_latency_s: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, outcome: PredictionBatch | DeadLetter | Duplicate) -> None:
        if isinstance(outcome, PredictionBatch):
            if not len(outcome):  # a roster notice passing through: nothing predicted
                return
            self.predictions += len(outcome)
            self.event_latency_s.append(outcome.processing_time - outcome.event_time)
            self.arrival_latency_s.append(outcome.processing_time - outcome.received_at)
        elif isinstance(outcome, DeadLetter):
            self.dead_letters += 1
        else:
            self.duplicates += 1

    def summary(self, now: float) -> str:
        seconds = max(now - self.started, 1e-9)
        line = (f"{self.predictions / seconds:.0f} predictions/s, {self.dead_letters} dead letters, "
                f"{self.duplicates} duplicates in {seconds:.1f} s")
        if self.event_latency_s:
            line += (f"; latency ms p50/p95/p99 event->prediction {_percentiles(self.event_latency_s)}, "
                     f"arrival->prediction {_percentiles(self.arrival_latency_s)}")
        return line


def _percentiles(parts: list[np.ndarray]) -> str:
    p50, p95, p99 = np.percentile(np.concatenate(parts) * 1e3, [50, 95, 99])
    return f"{p50:.0f}/{p95:.0f}/{p99:.0f}"


class Tally:
    """The current interval of this process; whoever adds past its end logs it and starts the next."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self._every_s = every_s
        self._lock = threading.Lock()
        self._interval: Interval | None = None

    def add(self, outcome: PredictionBatch | DeadLetter | Duplicate) -> str | None:
        """Count an outcome; returns the finished interval's summary when one ends."""
        now = time.time()
        with self._lock:
            if self._interval is None:
                self._interval = Interval(now)
            self._interval.add(outcome)
            if now - self._interval.started < self._every_s:
                return None
            finished, self._interval = self._interval, Interval(now)
        return finished.summary(now)


_TALLY = Tally()


class _ReportFn(beam.DoFn):
    def __init__(self):
        self._counters = {kind: Metrics.counter(METRICS_NAMESPACE, name) for kind, name in (
            (PredictionBatch, "predictions"), (DeadLetter, "dead_letters"))}

    def process(self, element: Any) -> None:
        outcome = element[1] if isinstance(element, tuple) else element
        if isinstance(outcome, DeviceResults):
            outcome = outcome.predictions
        counter = self._counters.get(type(outcome))
        if counter is not None:
            counter.inc(len(outcome) if isinstance(outcome, PredictionBatch) else 1)
        summary = _TALLY.add(outcome)
        if summary:
            LOG.info("stream: %s", summary)


@beam.ptransform_fn
def ReportLiveMetrics(outcomes: beam.PCollection) -> beam.PCollection:
    """DeviceResults | (device_id, PredictionBatch) | DeadLetter | Duplicate -> counters, and a log line every ``LOG_EVERY_S``."""
    return outcomes | "Report" >> beam.ParDo(_ReportFn())
