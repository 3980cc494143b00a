import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to

from inference_pipeline.results import PredictionBatch
from inference_pipeline.steps.alerts import DebounceAlerts, DebounceState, debounce


def batch(scores, start=0.0, device="pump-1", fill=30):
    scores = np.asarray(scores, dtype=float)
    times = start + np.arange(len(scores), dtype=float)
    return PredictionBatch(device, times.astype(str), times, times, 0.0, scores, scores, 0.5,
                           np.full(len(scores), fill), 30, "m", "1")


def test_an_incident_opens_after_consecutive_anomalies_and_closes_after_normal_rows():
    state = DebounceState()
    incidents = list(debounce(state, batch([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.95, 0.2, 0.2, 0.2, 0.9]), 3, 3))
    assert [(i.status, i.start_time, i.end_time) for i in incidents] == [("open", 3.0, None), ("closed", 3.0, 6.0)]
    assert incidents[1].peak_score == 0.95 and incidents[1].n_events == 4
    assert state.open is None and state.anomalous_run == 1


def test_an_incident_spans_batches_and_reports_once():
    state = DebounceState()
    first = list(debounce(state, batch([0.9] * 5), 2, 2))
    second = list(debounce(state, batch([0.9] * 5 + [0.1] * 2, start=5), 2, 2))
    assert [i.status for i in first + second] == ["open", "closed"]
    assert second[0].start_time == 0.0 and second[0].end_time == 9.0 and second[0].n_events == 10


def test_a_device_warming_up_never_alerts():
    state = DebounceState()
    assert list(debounce(state, batch([0.99] * 10, fill=5), 1, 1)) == []


def test_debounce_keeps_state_per_device_on_a_stream():
    stream = (EventStream()
              .add_elements([("a", batch([0.9, 0.9], device="a")), ("b", batch([0.9], device="b"))])
              .advance_watermark_to(10)
              .add_elements([("a", batch([0.1, 0.1], start=2, device="a")), ("b", batch([0.9], start=1, device="b"))])
              .advance_watermark_to_infinity())
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as pipeline:
        incidents = pipeline | stream | DebounceAlerts(open_after=2, close_after=2)
        rows = incidents | beam.Map(lambda i: (i.device_id, i.status, i.start_time, i.end_time))
        assert_that(rows, equal_to([("a", "open", 0.0, None), ("a", "closed", 0.0, 1.0), ("b", "open", 0.0, None)]))
