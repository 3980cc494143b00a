"""Per-device per-minute summaries (the ``device_minutes`` result stream), written while the stream runs.

One row per device per minute of event time (``minute_start``: the event time floored to 60 s): predictions, mean
and max anomaly score, anomalies, the model version(s) that scored, keyed ``(device_id, minute_start)`` so sinks
upsert it. No event-time windows: on the local runner a window fires only when its source ends, so a summary of a
live stream would never appear. Instead a stateful step keyed by device, beside ``TrackIncidents`` (on the same
keyed predictions, roster notices included), folds each batch's predictions (numpy over the batch's columns) into
running totals per minute and emits, at every batch, the rows of every minute the batch touched with their totals
so far:

- The minute in progress is written at each batch, partial, and rewritten (by key) as it fills: the row converges
  on the minute's final totals.
- A minute is final once the device's event time passes its end (a later event of the device in a later minute):
  its last row, written by the last batch that touched it, already holds its final totals, so nothing is written
  again when the minute closes.
- That is also what flushes a device that falls silent: its last, partial minute was written with the batch of its
  last events and is final once nothing more arrives. No timer (the local runner fires no processing-time timers)
  and no roster notice is needed; a ``device_silent`` notice changes nothing here and an expiry drops the state.
- Late events (``PredictionBatch.late``) fold into the totals of their own minute, which is written again (upsert),
  as long as that minute is still held: the state keeps the minutes within ``keep_s`` of the device's newest one.
  An event of an older minute is left out of the summaries (counted, ``late_minute_dropped``) rather than
  overwriting its minute's row with a total of the late events alone.
- The state lives with the runner: a stream restarted on a runner whose state dies with the process starts each
  device's totals afresh, so the minute in progress at the crash is rewritten with the events after the restart.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from features.schema import DeviceNotice
from inference_pipeline.results import MinuteSummary, PredictionBatch

MINUTE_S = 60.0
KEEP_S = 600.0  # minutes held for late events, behind the device's newest minute


@dataclasses.dataclass
class MinuteTotals:
    """Per device: running totals of the minutes held, sorted by ``minutes`` (their starts)."""

    minutes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    total: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    peak: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    anomalies: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    versions: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    newest: float = float("-inf")  # the newest minute seen


def fold(totals: MinuteTotals, batch: PredictionBatch, keep_s: float = KEEP_S,
         now: float | None = None) -> tuple[MinuteSummary | None, int]:
    """Fold a batch into the device's totals: the rows of the minutes it touched (None: none) and how many of its
    events were left out (minutes older than ``keep_s`` behind the newest, no longer held)."""
    if not len(batch):
        return None, 0
    minute = np.floor(np.asarray(batch.event_time, dtype=np.float64) / MINUTE_S) * MINUTE_S
    touched, which = np.unique(minute, return_inverse=True)
    scores = np.asarray(batch.anomaly_score, dtype=np.float64)
    count = np.bincount(which, minlength=len(touched)).astype(np.int64)
    total = np.bincount(which, weights=scores, minlength=len(touched))
    peak = np.full(len(touched), -np.inf)
    np.maximum.at(peak, which, scores)
    anomalies = np.bincount(which, weights=batch.is_anomaly, minlength=len(touched)).astype(np.int64)

    newest = max(totals.newest, float(touched[-1]))
    cutoff = newest - keep_s
    held = touched >= cutoff
    dropped = int(count[~held].sum())
    touched, count, total, peak, anomalies = (a[held] for a in (touched, count, total, peak, anomalies))

    minutes = np.union1d(totals.minutes, touched)
    old, new = np.searchsorted(minutes, totals.minutes), np.searchsorted(minutes, touched)
    merged_count = np.zeros(len(minutes), dtype=np.int64)
    merged_total, merged_peak = np.zeros(len(minutes)), np.full(len(minutes), -np.inf)
    merged_anomalies = np.zeros(len(minutes), dtype=np.int64)
    merged_count[old], merged_total[old], merged_peak[old] = totals.count, totals.total, totals.peak
    merged_anomalies[old] = totals.anomalies
    merged_count[new] += count
    merged_total[new] += total
    merged_peak[new] = np.maximum(merged_peak[new], peak)
    merged_anomalies[new] += anomalies
    versions: list[tuple[str, ...]] = [()] * len(minutes)
    for position, held_versions in zip(old.tolist(), totals.versions):
        versions[position] = held_versions
    for position in new.tolist():
        if batch.model_version not in versions[position]:
            versions[position] = (*versions[position], batch.model_version)

    rows = None
    if len(new):
        rows = MinuteSummary(batch.device_id, minutes[new], merged_count[new],
                             merged_total[new] / merged_count[new], merged_peak[new], merged_anomalies[new],
                             [",".join(versions[position]) for position in new.tolist()],
                             time.time() if now is None else now)
    keep = minutes >= cutoff
    totals.minutes, totals.count, totals.total = minutes[keep], merged_count[keep], merged_total[keep]
    totals.peak, totals.anomalies = merged_peak[keep], merged_anomalies[keep]
    totals.versions = [v for v, kept in zip(versions, keep.tolist()) if kept]
    totals.newest = newest
    return rows, dropped


class _SummarizeMinutesFn(beam.DoFn):
    STATE = ReadModifyWriteStateSpec("minutes", PickleCoder())

    def __init__(self, keep_s: float):
        self._keep_s = keep_s
        self._dropped = Metrics.counter("iotml", "late_minute_dropped")

    def process(self, element: tuple[str, PredictionBatch], state=beam.DoFn.StateParam(STATE)
                ) -> Iterator[MinuteSummary]:
        _, batch = element
        if batch.notice is not None:
            if batch.notice.kind == DeviceNotice.EXPIRE:
                state.clear()
            return
        if not len(batch):
            return
        totals = state.read() or MinuteTotals()
        rows, dropped = fold(totals, batch, self._keep_s)
        state.write(totals)
        if dropped:
            self._dropped.inc(dropped)
        if rows is not None:
            yield rows


class SummarizeMinutes(beam.PTransform):
    """(device_id, PredictionBatch) -> MinuteSummary: per device, the rows of the minutes each batch touched, with
    their running totals (see the module: partial rows converge by key; a silent device's last row is already
    written). It reads what ``TrackIncidents`` reads, roster notices included, so a device's expiry drops its
    totals here too."""

    def __init__(self, keep_s: float = KEEP_S):
        super().__init__()
        self._fn = _SummarizeMinutesFn(keep_s)

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        return predictions | "Minutes" >> beam.ParDo(self._fn).with_input_types(tuple[str, PredictionBatch])
