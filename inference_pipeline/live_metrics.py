"""Live stream metrics: Beam counters for every outcome and, every few seconds, a log line with throughput, dead
letters, duplicates and latency percentiles (event time -> prediction, and arrival -> prediction).

The log line is per worker: on the local runner that is the whole stream.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from features.schema import DeadLetter
from inference_pipeline.dedup import METRICS_NAMESPACE, Duplicate
from inference_pipeline.scoring import PredictionBatch

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

    def add(self, outcome: Any) -> None:
        if isinstance(outcome, PredictionBatch):
            self.predictions += len(outcome)
            self.event_latency_s.append(outcome.processing_time - outcome.event_time)
            self.arrival_latency_s.append(outcome.processing_time - outcome.received_at)
        elif isinstance(outcome, DeadLetter):
            self.dead_letters += 1
        elif isinstance(outcome, Duplicate):
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


class _ReportFn(beam.DoFn):
    def __init__(self, every_s: float):
        self._every_s = every_s
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions")
        self._dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._interval = Interval(time.time())

    def process(self, outcome: Any) -> None:
        self._interval.add(outcome)
        if isinstance(outcome, PredictionBatch):
            self._predictions.inc(len(outcome))
        elif isinstance(outcome, DeadLetter):
            self._dead_letters.inc()
        now = time.time()
        if now - self._interval.started >= self._every_s:
            LOG.info("stream: %s", self._interval.summary(now))
            self._interval = Interval(now)


@beam.ptransform_fn
def ReportLiveMetrics(outcomes: beam.PCollection, every_s: float = LOG_EVERY_S) -> beam.PCollection:
    """PredictionBatch | DeadLetter | Duplicate -> counters, and a log line every ``every_s`` seconds."""
    return outcomes | "Report" >> beam.ParDo(_ReportFn(every_s))
