"""Debounced alerts: one incident per run of anomalies, opened and closed by hysteresis, per device."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from pydantic import BaseModel, ConfigDict, Field

from inference_pipeline.results import Incident, PredictionBatch


class AlertSettings(BaseModel):
    """``threshold``: the anomaly score at or above which a prediction is anomalous (0.5 is the model version's
    calibrated threshold). Debounce: an incident opens after ``open_after`` anomalous predictions in a row and closes
    after ``close_after`` normal ones."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0, lt=1)
    open_after: int = Field(3, ge=1)
    close_after: int = Field(30, ge=1)


@dataclasses.dataclass
class DebounceState:
    """Per device: consecutive anomalous/normal counts, the pending run start and the open incident."""

    anomalous_run: int = 0
    normal_run: int = 0
    run_start: float = 0.0
    run_peak: float = 0.0
    last_anomaly_time: float = 0.0
    open: Incident | None = None


def debounce(state: DebounceState, batch: PredictionBatch, open_after: int, close_after: int) -> Iterator[Incident]:
    """Advance the state over a batch, yielding incidents as they open and close."""
    flags = batch.is_anomaly.tolist()
    times = batch.event_time.tolist()
    scores = batch.anomaly_score.tolist()
    for flag, ts, score in zip(flags, times, scores):
        if flag:
            if state.anomalous_run == 0:
                state.run_start, state.run_peak = ts, score
            state.anomalous_run += 1
            state.normal_run = 0
            state.run_peak = max(state.run_peak, score)
            state.last_anomaly_time = ts
            if state.open is not None:
                state.open.n_events += 1
                state.open.peak_score = max(state.open.peak_score, score)
            elif state.anomalous_run >= open_after:
                state.open = Incident(
                    f"{batch.device_id}:{state.run_start:.3f}", batch.device_id, state.run_start, None, state.run_peak,
                    state.anomalous_run, "open", batch.model_name, batch.model_version,
                )
                yield dataclasses.replace(state.open)
        else:
            state.anomalous_run = 0
            state.normal_run += 1
            if state.open is not None and state.normal_run >= close_after:
                closed = dataclasses.replace(state.open, end_time=state.last_anomaly_time, status="closed")
                state.open = None
                yield closed


class _DebounceFn(beam.DoFn):
    STATE = ReadModifyWriteStateSpec("debounce", PickleCoder())

    def __init__(self, open_after: int, close_after: int):
        self._open_after = open_after
        self._close_after = close_after

    def process(self, element: tuple[str, PredictionBatch], state=beam.DoFn.StateParam(STATE)) -> Iterator[Incident]:
        _, batch = element
        current = state.read() or DebounceState()
        yield from debounce(current, batch, self._open_after, self._close_after)
        state.write(current)


@beam.ptransform_fn
def DebounceAlerts(predictions: beam.PCollection, open_after: int, close_after: int) -> beam.PCollection:
    """(device_id, PredictionBatch) -> Incident updates (open, then closed)."""
    return predictions | "Debounce" >> beam.ParDo(_DebounceFn(open_after, close_after)).with_input_types(
        tuple[str, PredictionBatch])
